"""The MIL evaluator: runs one function of a loaded ML program (`MilPackage`) on numpy inputs, op by op, with the
kernels of kernels.py; also gathers activation ranges for calibration (`MilEvaluator.activation_ranges`) and checks
that activation quantization keeps the graph's meaning (`MilEvaluator.lint_quantization`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import MilError, MilUnsupportedOpError
from .kernels import KERNELS, SUPPORTED_OPS, Backend
from .program import MIL_DTYPES, Binding, MilPackage, Operation


class MilEvaluator:
    """Runs one function of a loaded ML program on numpy inputs, op by op.

    Constants (``const`` and ``constexpr_*`` ops) are decoded once, at construction. ``run`` checks every input
    against the package's description and every result against its declared shape, and rounds every result to its
    declared dtype (this is how fp16 storage and int8 activations are emulated). The whole program is checked for
    unsupported ops when the evaluator is built, so an unsupported op fails before any work is done.
    """

    def __init__(self, package: MilPackage, function: str | None = None, backend: str = "auto") -> None:
        self.package = package
        self.function = package.function(function or package.default_function)
        self.block = self.function.block
        self.backend = Backend(backend)
        unsupported = sorted({op.type for op in self.block.operations if op.type not in KERNELS and op.type != "const"})
        if unsupported:
            raise MilUnsupportedOpError(
                f"unsupported MIL op{'s' if len(unsupported) > 1 else ''} {', '.join(unsupported)} "
                f"(the evaluator supports: {', '.join(SUPPORTED_OPS)})"
            )
        if any(op.has_blocks for op in self.block.operations):
            raise MilUnsupportedOpError("ops with nested blocks (control flow) are not supported")
        self._consts: dict[str, Any] = {}
        self._program: list[Operation] = []
        for op in self.block.operations:
            if op.type == "const":
                self._consts[op.outputs[0][0]] = package.const(op.attributes["val"])
            elif op.type.startswith("constexpr_"):
                out = self._execute(op, self._consts)
                for (name, _), value in zip(op.outputs, out):
                    self._consts[name] = value
            else:
                self._program.append(op)

    # -- public API
    @property
    def input_names(self) -> list[str]:
        return [name for name, _ in self.function.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.block.outputs)

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        observe: Callable[[Operation, str, np.ndarray], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Evaluate the function. ``observe(op, output_name, value)`` is called for every computed value."""
        env: dict[str, Any] = dict(self._consts)
        for name, ttype in self.function.inputs:
            if name not in feeds:
                raise MilError(f"missing input {name!r} (inputs: {', '.join(self.input_names)})")
            value = np.asarray(feeds[name])
            if ttype is not None:
                self._check_shape(f"input {name!r}", value.shape, ttype.shape)
                value = value.astype(ttype.np_dtype, copy=False)
            self._check_described_shape(name, value.shape)
            env[name] = value
            if observe is not None:
                observe(None, name, value)  # type: ignore[arg-type]
        extra = set(feeds) - set(self.input_names)
        if extra:
            raise MilError(f"unknown input(s) {', '.join(sorted(extra))} (inputs: {', '.join(self.input_names)})")
        exact_shapes = all(
            ttype is None or all(d is not None for d in ttype.shape) for _, ttype in self.function.inputs
        )
        for op in self._program:
            outs = self._execute(op, env)
            for (name, ttype), value in zip(op.outputs, outs):
                if ttype is not None and exact_shapes:
                    self._check_shape(f"op {op.name!r} ({op.type}) output", value.shape, ttype.shape)
                env[name] = value
                if observe is not None:
                    observe(op, name, value)
        return {name: np.asarray(env[name]) for name in self.block.outputs}

    predict = run  # the name MLModel uses

    def activation_ranges(
        self, samples: Iterable[Mapping[str, np.ndarray]]
    ) -> dict[str, dict[str, float]]:
        """Per-tensor ``{"rmin", "rmax"}`` over calibration samples, for every input and non-constant float value:
        the statistics coremltools' activation quantization gathers with ``MLModel.predict`` on macOS."""
        stats: dict[str, dict[str, float]] = {}

        def observe(_op: Operation | None, name: str, value: np.ndarray) -> None:
            if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                return
            lo, hi = float(value.min()), float(value.max())
            if name in stats:
                stats[name]["rmin"] = min(stats[name]["rmin"], lo)
                stats[name]["rmax"] = max(stats[name]["rmax"], hi)
            else:
                stats[name] = {"rmin": lo, "rmax": hi}

        for sample in samples:
            self.run(sample, observe)
        return stats

    def constant_input(self, op: Operation, key: str) -> Any:
        """The value of a constant argument of ``op`` (inline, a ``const`` op, a folded ``constexpr_*`` or an
        attribute); None when the argument is absent; `MilError` when it is computed at run time."""
        bindings = op.inputs.get(key)
        if not bindings:
            return self.package.const(op.attributes[key]) if key in op.attributes else None
        values = []
        for b in bindings:
            if b.name is None:
                values.append(self.package.const(b.const))  # type: ignore[arg-type]
            elif b.name in self._consts:
                values.append(self._consts[b.name])
            else:
                raise MilError(f"op {op.name!r}: input {key} is computed at run time, not a constant")
        return values if len(values) > 1 else values[0]

    # Ops through which a positive rescaling of the input passes unchanged to the output.
    _SCALE_EQUIVARIANT = frozenset({"relu", "reshape", "slice_by_index", "slice_by_size", "pixel_shuffle",
                                    "pixel_unshuffle", "transpose", "expand_dims", "squeeze", "identity", "concat",
                                    "split", "tile", "max_pool", "avg_pool", "reduce_mean", "reduce_max", "cast"})

    def lint_quantization(self, rel_tol: float = 1e-2) -> list[str]:
        """Check that activation quantization keeps the graph's meaning; one line per problem.

        Plain quantize -> dequantize pairs must agree on scale and zero point. coremltools'
        ``distributive_quantized_binary_op_scale_normalization`` legitimately breaks that: it rescales both inputs
        of an int8 ``add``/``sub`` by 1/s_y and the quantize after it by the same factor, so the integers are
        unchanged while the float values in between are off by that factor. So the check tracks, per value, the
        factor by which it differs from the true value: a dequantize multiplies it by (its scale / the true scale of
        its integers), an add/sub needs equal factors on both inputs, scale-equivariant ops (relu, reshape, slices,
        pixel shuffle, ...) pass it on, a quantize absorbs it, and every other op and every output must see 1."""
        factor: dict[str, float] = {}
        true_scale: dict[str, np.ndarray] = {}
        zero_point: dict[str, np.ndarray] = {}
        problems: list[str] = []

        def f(binding_list: list[Binding] | None) -> float:
            if not binding_list or binding_list[0].name is None:
                return 1.0
            return factor.get(binding_list[0].name, 1.0)

        for op in self._program:
            out_names = [n for n, _ in op.outputs]
            if op.type == "quantize":
                k = f(op.inputs.get("input"))
                scale = np.asarray(self.constant_input(op, "scale"), np.float64)
                zp = self.constant_input(op, "zero_point")
                true_scale[out_names[0]] = scale / k
                zero_point[out_names[0]] = np.zeros(1) if zp is None else np.asarray(zp, np.float64)
                continue
            if op.type == "dequantize":
                src = op.inputs["input"][0].name or ""
                scale = np.asarray(self.constant_input(op, "scale"), np.float64)
                zp = self.constant_input(op, "zero_point")
                zp = np.zeros(1) if zp is None else np.asarray(zp, np.float64)
                k = 1.0
                if src in true_scale:
                    if zp.shape != zero_point[src].shape or not np.array_equal(zp, zero_point[src]):
                        problems.append(f"{op.name}: zero point {zp.ravel()[:3]} differs from its quantize's")
                    ratio = scale / true_scale[src]
                    if ratio.size and not np.allclose(ratio, ratio.ravel()[0], rtol=rel_tol):
                        problems.append(f"{op.name}: per-channel scales do not match its quantize's")
                    k = float(ratio.ravel()[0])
                factor[out_names[0]] = k
                continue
            ins = {key: f(b) for key, b in op.inputs.items()
                   if b and b[0].name is not None and b[0].name not in self._consts}  # computed inputs only
            if op.type in ("add", "sub") and "x" in ins and "y" in ins:
                if not math.isclose(ins["x"], ins["y"], rel_tol=rel_tol):
                    problems.append(f"{op.name} ({op.type}): inputs off by different factors {ins['x']:.4g} vs "
                                    f"{ins['y']:.4g}")
                k = ins["x"]
            elif op.type in self._SCALE_EQUIVARIANT:
                ks = set(round(v, 6) for v in ins.values())
                k = ins.get("x", ins.get("values", 1.0)) if ks else 1.0
                if len(ks) > 1:
                    problems.append(f"{op.name} ({op.type}): inputs off by different factors")
            else:
                k = 1.0
                for key, v in ins.items():
                    if not math.isclose(v, 1.0, rel_tol=rel_tol):
                        problems.append(f"{op.name} ({op.type}): input {key} is off by a factor {v:.4g}")
            for name in out_names:
                factor[name] = k
        for name in self.block.outputs:
            if not math.isclose(factor.get(name, 1.0), 1.0, rel_tol=rel_tol):
                problems.append(f"output {name} is off by a factor {factor[name]:.4g}")
        return problems

    # -- internals
    def _resolve(self, op: Operation, env: Mapping[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for key, bindings in op.inputs.items():
            values = []
            for b in bindings:
                if b.name is not None:
                    if b.name not in env:
                        raise MilError(f"op {op.name!r} ({op.type}): input {key}={b.name!r} is not defined")
                    values.append(env[b.name])
                else:
                    values.append(self.package.const(b.const))  # type: ignore[arg-type]
            args[key] = values if key == "values" or len(values) > 1 else (values[0] if values else None)
        for key, value in op.attributes.items():  # iOS16 constexpr ops keep their parameters as attributes
            if key != "name" and key not in args:
                args[key] = self.package.const(value)
        return args

    def _execute(self, op: Operation, env: Mapping[str, Any]) -> list[Any]:
        kernel = KERNELS.get(op.type)
        if kernel is None:
            raise MilUnsupportedOpError(f"unsupported MIL op {op.type} (op {op.name!r})")
        args = self._resolve(op, env)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            outs = kernel(self, op, args)
        if len(outs) != len(op.outputs):
            raise MilError(f"op {op.name!r} ({op.type}): {len(outs)} results, {len(op.outputs)} declared")
        typed = []
        for (name, ttype), value in zip(op.outputs, outs):
            value = np.asarray(value)
            if ttype is not None and ttype.dtype in MIL_DTYPES and ttype.dtype != 2:
                value = value.astype(ttype.np_dtype, copy=False)  # fp16 storage / int8 activations
            typed.append(value)
        return typed

    @staticmethod
    def _check_shape(what: str, got: Sequence[int], declared: Sequence[int | None]) -> None:
        if len(got) != len(declared) or any(d is not None and d != g for g, d in zip(got, declared)):
            dims = ", ".join("?" if d is None else str(d) for d in declared)
            raise MilError(f"{what}: shape {tuple(got)} does not match the declared ({dims})")

    def _check_described_shape(self, name: str, shape: Sequence[int]) -> None:
        for feat in self.package.inputs_of(self.function.name):
            if feat.name != name or not feat.enumerated_shapes:
                continue
            if tuple(shape) not in feat.enumerated_shapes:
                allowed = ", ".join("x".join(map(str, s)) for s in feat.enumerated_shapes)
                raise MilError(f"input {name!r}: shape {'x'.join(map(str, shape))} is not one of the enumerated "
                               f"shapes ({allowed})")
