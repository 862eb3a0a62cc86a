"""The op kernels of the MIL reference evaluator, registered by MIL op name, and the backend that runs convolutions
and matmuls (numpy, or torch when the caller already has it loaded).

A kernel is ``fn(evaluator, op, args) -> [outputs]``: ``args`` are the op's resolved inputs (numpy arrays / python
scalars; variadic inputs as lists; attributes of iOS16 constexpr ops included), and the evaluator casts each output
to its declared dtype afterwards (fp16 storage, int8 activations). Adding an op is one function and its decorator::

    @kernel("relu6")
    def _k_relu6(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        return [np.clip(_as_float(a["x"]), 0.0, 6.0)]

Families that differ only in a numpy function (elementwise binary and unary ops, reductions) are registered from a
table of op name -> function. `KERNELS` is the registry (op name -> kernel), `SUPPORTED_OPS` the op names it serves
(plus ``const``). Numpy only at import: torch is used only if the caller already imported it or asks for it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import MilError, MilUnsupportedOpError
from .program import DTYPE_BY_NAME, Operation

if TYPE_CHECKING:
    from .evaluator import MilEvaluator

Kernel = Callable[["MilEvaluator", Operation, dict[str, Any]], list[Any]]

KERNELS: dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of each MIL op in ``op_types``; returns it unchanged."""

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            if op_type in KERNELS:
                raise ValueError(f"MIL op {op_type} has a kernel already ({KERNELS[op_type].__name__})")
            KERNELS[op_type] = fn
        return fn

    return register


def _register_family(make: Callable[[Callable[..., Any]], Kernel], table: Mapping[str, Callable[..., Any]]) -> None:
    """Register ``make(fn)`` for every op name -> numpy function of ``table``."""
    for op_type, fn in table.items():
        kernel(op_type)(make(fn))


# ------------------------------------------------------------------------------------------------------- backend


class Backend:
    """Where convolutions and matmuls run: numpy, or torch when the caller already has it loaded."""

    def __init__(self, name: str) -> None:
        self.torch = None
        if name == "torch" or (name == "auto" and "torch" in sys.modules):
            try:
                import torch

                self.torch = torch
            except ImportError:
                if name == "torch":
                    raise MilError("backend 'torch' asked for, but torch is not installed") from None
        elif name not in ("numpy", "auto"):
            raise MilError(f"unknown backend {name!r}: auto, numpy or torch")
        self.name = "torch" if self.torch is not None else "numpy"

    def conv(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: Sequence[int],
             pads: Sequence[int], dilations: Sequence[int], groups: int) -> np.ndarray:
        nd = w.ndim - 2
        if self.torch is not None and nd in (1, 2):
            t = self.torch
            xt = t.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            wt = t.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            bt = None if b is None else t.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
            pad_spec: list[int] = []
            for i in reversed(range(nd)):  # F.pad wants (last-dim before, after, ...)
                pad_spec += [int(pads[2 * i]), int(pads[2 * i + 1])]
            if any(pad_spec):
                xt = t.nn.functional.pad(xt, pad_spec)
            fn = t.nn.functional.conv2d if nd == 2 else t.nn.functional.conv1d
            with t.no_grad():
                y = fn(xt, wt, bt, stride=tuple(strides), dilation=tuple(dilations), groups=groups)
            return y.numpy()
        return _conv_numpy(x, w, b, strides, pads, dilations, groups)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.torch is not None:
            t = self.torch
            return t.matmul(t.from_numpy(np.ascontiguousarray(a, np.float32)),
                            t.from_numpy(np.ascontiguousarray(b, np.float32))).numpy()
        return np.matmul(a.astype(np.float32), b.astype(np.float32))


def _conv_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, strides: Sequence[int], pads: Sequence[int],
                dilations: Sequence[int], groups: int) -> np.ndarray:
    """N-d convolution (cross-correlation) by im2col + matmul, accumulated in float64 for fp32 exactness."""
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise MilUnsupportedOpError(f"conv with {nd} spatial dims is not supported")
    if nd == 1:
        y = _conv_numpy(x[:, :, None, :], w[:, :, None, :], b, (1, strides[0]), (0, 0, pads[0], pads[1]),
                        (1, dilations[0]), groups)
        return y[:, :, 0, :]
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    dh, dw = dilations
    sh, sw = strides
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    ho, wo = (h - eh) // sh + 1, (wd - ew) // sw + 1
    og = o // groups
    out = np.empty((n, o, ho, wo), dtype=np.float64)
    win = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    for g in range(groups):
        cols = win[:, g * cg : (g + 1) * cg]  # (n, cg, ho, wo, kh, kw)
        cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        wg = w[g * og : (g + 1) * og].reshape(og, cg * kh * kw).astype(np.float64)
        out[:, g * og : (g + 1) * og] = (cols @ wg.T).reshape(n, ho, wo, og).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.astype(np.float64).reshape(1, -1, 1, 1)
    return out


# ------------------------------------------------------------------------------------------------------- kernels


def _as_float(a: Any) -> np.ndarray:
    """Compute dtype: fp16 values are widened to fp32 for the arithmetic, then rounded back by the evaluator."""
    arr = np.asarray(a)
    return arr.astype(np.float32) if arr.dtype == np.float16 else arr


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    return tuple(int(a) % rank if rank else 0 for a in np.atleast_1d(axes))


def _conv_pads(op_type: str, args: dict[str, Any], x_shape: Sequence[int], w_shape: Sequence[int]) -> list[int]:
    nd = len(w_shape) - 2
    pad_type = str(args.get("pad_type", "valid"))
    strides = [int(s) for s in np.atleast_1d(args.get("strides", [1] * nd))]
    dil = [int(d) for d in np.atleast_1d(args.get("dilations", [1] * nd))]
    if pad_type == "custom":
        return [int(p) for p in np.atleast_1d(args.get("pad", [0] * 2 * nd))]
    if pad_type == "valid":
        return [0] * 2 * nd
    if pad_type in ("same", "same_lower"):
        pads = []
        for i in range(nd):
            size = x_shape[2 + i]
            eff = (w_shape[2 + i] - 1) * dil[i] + 1
            total = max((math.ceil(size / strides[i]) - 1) * strides[i] + eff - size, 0)
            small, big = total // 2, total - total // 2
            pads += [big, small] if pad_type == "same_lower" else [small, big]
        return pads
    raise MilUnsupportedOpError(f"{op_type}: pad_type {pad_type!r} is not supported")


@kernel("conv")
def _k_conv(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, w = _as_float(a["x"]), _as_float(a["weight"])
    b = a.get("bias")
    nd = w.ndim - 2
    strides = [int(s) for s in np.atleast_1d(a.get("strides", [1] * nd))]
    dil = [int(d) for d in np.atleast_1d(a.get("dilations", [1] * nd))]
    groups = int(a.get("groups", 1))
    pads = _conv_pads(op.type, a, x.shape, w.shape)
    return [ev.backend.conv(x, w, None if b is None else _as_float(b), strides, pads, dil, groups)]


@kernel("linear")
def _k_linear(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, w = _as_float(a["x"]), _as_float(a["weight"])
    y = ev.backend.matmul(x, w.T)
    if a.get("bias") is not None:
        y = y + _as_float(a["bias"])
    return [y]


@kernel("matmul")
def _k_matmul(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x, y = _as_float(a["x"]), _as_float(a["y"])
    if bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return [ev.backend.matmul(x, y)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    """The kernel of a two-input elementwise op: ``fn(x, y)`` on the inputs widened from fp16."""

    def run(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        return [fn(_as_float(a["x"]), _as_float(a["y"]))]

    return run


def _unary(fn: Callable[..., np.ndarray]) -> Kernel:
    """The kernel of a one-input op: ``fn(x, args)`` on ``x`` widened from fp16."""

    def run(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        return [fn(_as_float(a["x"]), a)]

    return run


def _softmax(x: np.ndarray, a: dict[str, Any]) -> np.ndarray:
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    """The kernel of a ``reduce_*`` op over ``axes`` (all when absent), ``keep_dims`` honoured."""

    def run(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        x = _as_float(a["x"])
        keep = bool(a.get("keep_dims", False))
        axes = _axes(a.get("axes"), x.ndim)
        if fn is np.mean and x.dtype == np.float32:  # accumulate in float64 like a pairwise/compensated sum would
            return [np.mean(x.astype(np.float64), axis=axes, keepdims=keep)]
        return [fn(x, axis=axes, keepdims=keep)]

    return run


def _reduce_arg(fn: Callable[..., np.ndarray]) -> Kernel:
    """The kernel of ``reduce_argmax``/``reduce_argmin`` along one ``axis``."""

    def run(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
        x = _as_float(a["x"])
        axis = int(a.get("axis", -1))
        y = fn(x, axis=axis)
        return [np.expand_dims(y, axis) if bool(a.get("keep_dims", False)) else y]

    return run


@kernel("reshape")
def _k_reshape(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    shape = [int(s) for s in np.atleast_1d(a["shape"])]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]  # 0 copies the input dim (iOS17 reshape)
    return [x.reshape(shape)]


@kernel("slice_by_index")
def _k_slice_by_index(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = x.ndim
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    end = [int(v) for v in np.atleast_1d(a["end"])]
    stride = [int(v) for v in np.atleast_1d(a.get("stride", [1] * r))]
    bm = [bool(v) for v in np.atleast_1d(a.get("begin_mask", [False] * r))]
    em = [bool(v) for v in np.atleast_1d(a.get("end_mask", [False] * r))]
    sq = [bool(v) for v in np.atleast_1d(a.get("squeeze_mask", [False] * r))]
    index = []
    for i in range(r):
        if sq[i]:
            index.append(begin[i])
            continue
        lo = None if bm[i] else begin[i]
        hi = None if em[i] else end[i]
        index.append(slice(lo, hi, stride[i]))
    return [x[tuple(index)]]


@kernel("slice_by_size")
def _k_slice_by_size(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    begin = [int(v) for v in np.atleast_1d(a["begin"])]
    size = [int(v) for v in np.atleast_1d(a["size"])]
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))
    return [x[index]]


@kernel("pixel_shuffle")
def _k_pixel_shuffle(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = int(a["upscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (r * r), h * r, w * r)]


@kernel("pixel_unshuffle")
def _k_pixel_unshuffle(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    r = int(a["downscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * r * r, h // r, w // r)]


@kernel("cast")
def _k_cast(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    name = str(a["dtype"])
    if name not in DTYPE_BY_NAME:
        raise MilUnsupportedOpError(f"cast to {name!r} is not supported")
    return [np.asarray(a["x"]).astype(DTYPE_BY_NAME[name])]


def _broadcast_param(p: Any, ref: np.ndarray, axis: Any) -> np.ndarray:
    """A scale / zero point (scalar, vector along ``axis``, or same-rank) shaped to broadcast against ``ref``."""
    p = np.asarray(p)
    if p.ndim == 0 or p.ndim == ref.ndim:
        return p
    if p.ndim == 1:
        ax = int(axis if axis is not None else 0) % ref.ndim
        shape = [1] * ref.ndim
        shape[ax] = p.shape[0]
        return p.reshape(shape)
    raise MilError(f"cannot broadcast a parameter of shape {p.shape} to {ref.shape}")


@kernel("quantize")
def _k_quantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = _as_float(a["input"])
    dtype = np.dtype(DTYPE_BY_NAME[str(a["output_dtype"])])
    scale = _broadcast_param(_as_float(a["scale"]), x, a.get("axis"))
    q = np.around(x / scale)  # round half to even, as coremltools' value inference
    zp = a.get("zero_point")
    if zp is not None:
        q = q + _broadcast_param(zp, x, a.get("axis")).astype(np.float32)
    info = np.iinfo(dtype)
    return [np.clip(q, info.min, info.max).astype(dtype)]


@kernel("dequantize")
def _k_dequantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    q = np.asarray(a["input"]).astype(np.float32)
    scale = _broadcast_param(_as_float(a["scale"]), q, a.get("axis"))
    zp = a.get("zero_point")
    if zp is not None:
        q = q - _broadcast_param(zp, q, a.get("axis")).astype(np.float32)
    return [q * scale]


@kernel("constexpr_affine_dequantize")
def _k_affine_dequantize(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    q = np.asarray(a["quantized_data"]).astype(np.float32)
    axis = a.get("axis", 0)
    scale = _broadcast_param(_as_float(a["scale"]), q, axis)
    zp = _broadcast_param(a["zero_point"], q, axis).astype(np.float32)
    return [(q - zp) * scale]


def _repeat_blocks(p: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    for axis, (n, m) in enumerate(zip(shape, p.shape)):
        if n % m:
            raise MilError(f"block size: {p.shape} does not tile {tuple(shape)}")
        if n != m:
            p = np.repeat(p, n // m, axis=axis)
    return p


@kernel("constexpr_blockwise_shift_scale")
def _k_blockwise_shift_scale(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    data = np.asarray(a["data"])
    scale = np.asarray(a["scale"])
    values = data.astype(np.float32)
    if a.get("offset") is not None:
        values = values - _repeat_blocks(np.asarray(a["offset"]).astype(np.float32), data.shape)
    return [values * _repeat_blocks(scale.astype(np.float32), data.shape)]


@kernel("concat")
def _k_concat(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    values = [np.asarray(v) for v in a["values"]]
    axis = int(a["axis"])
    if bool(a.get("interleave", False)):
        raise MilUnsupportedOpError("concat with interleave=True is not supported")
    return [np.concatenate(values, axis=axis)]


@kernel("transpose")
def _k_transpose(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.transpose(np.asarray(a["x"]), [int(p) for p in np.atleast_1d(a["perm"])])]


@kernel("expand_dims")
def _k_expand_dims(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    out_rank = x.ndim + len(np.atleast_1d(a["axes"]))
    axes = sorted(int(v) % out_rank for v in np.atleast_1d(a["axes"]))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return [x]


@kernel("squeeze")
def _k_squeeze(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    axes = a.get("axes")
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=_axes(axes, x.ndim))]


@kernel("avg_pool")
def _k_avg_pool(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = _as_float(a["x"])
    k = [int(v) for v in np.atleast_1d(a["kernel_sizes"])]
    if len(k) != 2:
        raise MilUnsupportedOpError("avg_pool: only 2-D pooling is supported")
    strides = [int(v) for v in np.atleast_1d(a.get("strides", k))]
    if bool(a.get("ceil_mode", False)):
        raise MilUnsupportedOpError("avg_pool: ceil_mode=True is not supported")
    pads = _conv_pads(op.type, a, x.shape, (1, 1, *k))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, k, axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    total = win.sum(axis=(-1, -2))
    if any(pads) and bool(a.get("exclude_padding_from_average", False)):
        ones = np.pad(np.ones(x.shape[2:]), ((pads[0], pads[1]), (pads[2], pads[3])))
        cnt = np.lib.stride_tricks.sliding_window_view(ones, k)[:: strides[0], :: strides[1]].sum(axis=(-1, -2))
        return [total / cnt]
    return [total / (k[0] * k[1])]


@kernel("one_hot")
def _k_one_hot(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    idx = np.asarray(a["indices"]).astype(np.int64)
    size = int(a["one_hot_vector_size"])
    axis = int(a.get("axis", -1))
    on, off = a.get("on_value", 1), a.get("off_value", 0)
    hot = np.arange(size) == idx[..., None]
    out = np.where(hot, on, off)
    return [np.moveaxis(out, -1, axis % out.ndim)]


@kernel("gather")
def _k_gather(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    if int(a.get("batch_dims", 0)):
        raise MilUnsupportedOpError("gather with batch_dims > 0 is not supported")
    x = np.asarray(a["x"])
    return [np.take(x, np.asarray(a["indices"]).astype(np.int64), axis=int(a.get("axis", 0)))]


@kernel("select")
def _k_select(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.where(np.asarray(a["cond"]).astype(bool), _as_float(a["a"]), _as_float(a["b"]))]


@kernel("clip")
def _k_clip(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.clip(_as_float(a["x"]), float(a["alpha"]), float(a["beta"]))]


@kernel("identity")
def _k_identity(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.asarray(a["x"])]


@kernel("tile")
def _k_tile(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    return [np.tile(np.asarray(a["x"]), [int(r) for r in np.atleast_1d(a["reps"])])]


@kernel("split")
def _k_split(ev: MilEvaluator, op: Operation, a: dict[str, Any]) -> list[Any]:
    x = np.asarray(a["x"])
    axis = int(a["axis"]) % x.ndim
    if a.get("split_sizes") is not None:
        bounds = np.cumsum([int(s) for s in np.atleast_1d(a["split_sizes"])])[:-1]
        return list(np.split(x, bounds, axis=axis))
    return list(np.split(x, int(a["num_splits"]), axis=axis))


def _np_sigmoid(x: np.ndarray, _a: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_register_family(_binary, {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "equal": np.equal,
    "not_equal": np.not_equal,
})
_register_family(_unary, {
    "relu": lambda x, a: np.maximum(x, 0),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * float(a.get("alpha", 0.01))),
    "sigmoid": _np_sigmoid,
    "tanh": lambda x, a: np.tanh(x),
    "exp": lambda x, a: np.exp(x),
    "sqrt": lambda x, a: np.sqrt(x),
    "rsqrt": lambda x, a: 1.0 / np.sqrt(x + float(a.get("epsilon", 1e-12))),
    "inverse": lambda x, a: 1.0 / (x + float(a.get("epsilon", 1e-4))),
    "abs": lambda x, a: np.abs(x),
    "square": lambda x, a: x * x,
    "softmax": _softmax,
})
_register_family(_reduce, {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min})
_register_family(_reduce_arg, {"reduce_argmax": np.argmax, "reduce_argmin": np.argmin})

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(["const", *KERNELS]))
