"""The MIL reference evaluator without torch or coremltools: a package written byte by byte here (protobuf wire format
+ MIL weight blob file), decoded and evaluated with numpy only. Real coremltools packages: tests/test_coreml.py."""

import json
import struct

import numpy as np
import pytest
from nsr_edge.runtime.coreml_mil import (
    MilError,
    MilEvaluator,
    MilUnsupportedOpError,
    _conv_numpy,
    load_artifact,
    load_mlpackage,
    unflatten_directory,
)

# ----------------------------------------------------------------------------------------- a tiny protobuf writer


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _f(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _tensor_type(dtype: int, shape) -> bytes:
    dims = b"".join(_f(3, _f(1, _f(1, d)) if d is not None else _f(2, b"")) for d in shape)
    return _f(1, _f(1, dtype) + _f(2, len(shape)) + dims)  # ValueType{tensorType}


def _immediate(dtype: int, shape, values) -> bytes:
    values = np.asarray(values)
    if dtype == 11:
        payload = _f(1, _f(1, struct.pack(f"<{values.size}f", *values.ravel())))
    elif dtype == 2:
        payload = _f(4, _f(1, str(values.item())))
    elif dtype == 1:
        payload = _f(3, _f(1, bytes(int(v) for v in values.ravel())))
    else:
        payload = _f(2, _f(1, b"".join(_varint(int(v)) for v in values.ravel())))
    return _f(2, _tensor_type(dtype, shape)) + _f(3, _f(1, payload))  # Value{type, immediateValue{tensor}}


def _blob_value(dtype: int, shape, offset: int) -> bytes:
    return _f(2, _tensor_type(dtype, shape)) + _f(5, _f(1, "@model_path/weights/weight.bin") + _f(2, offset))


def _op(op_type: str, inputs: dict, outputs: list, attrs: dict | None = None) -> bytes:
    body = _f(1, op_type)
    for key, arg in inputs.items():  # arg: name (str) or inline Value bytes
        binding = _f(1, arg) if isinstance(arg, str) else _f(2, arg)
        body += _f(2, _f(1, key) + _f(2, _f(1, binding)))
    for name, dtype, shape in outputs:
        body += _f(3, _f(1, name) + _f(2, _tensor_type(dtype, shape)))
    for key, value in (attrs or {}).items():
        body += _f(5, _f(1, key) + _f(2, value))
    return body


def _i32(values) -> bytes:
    values = list(values)
    return _immediate(23, [len(values)], values)


def _weight_file(arrays: list[np.ndarray]) -> tuple[bytes, list[int]]:
    codes = {np.dtype(np.float32): 2, np.dtype(np.float16): 1, np.dtype(np.int8): 4, np.dtype(np.uint8): 3}
    data = bytearray(struct.pack("<II", len(arrays), 2) + bytes(56))
    offsets = []
    for a in arrays:
        raw = np.ascontiguousarray(a).tobytes()
        offsets.append(len(data))
        meta = struct.pack("<IIQQ", 0xDEADBEEF, codes[a.dtype], len(raw), len(data) + 64)
        data += meta + bytes(64 - len(meta)) + raw
        data += bytes(-len(data) % 64)
    return bytes(data), offsets


def _write_package(root, weight: np.ndarray, bias: np.ndarray, extra_op: bytes | None = None):
    """input (1,2,5,5) fp32 -> cast fp16 -> conv 3x3 (fp16 weights from the blob, pad 1) -> relu -> cast fp32 ->
    pixel_shuffle x2? (no: 4 channels -> 1 x 2x2) -> output."""
    blob, (w_off, b_off) = _weight_file([weight.astype(np.float16), bias.astype(np.float16)])
    ops = [
        _op("const", {}, [("w", 10, weight.shape)], {"name": _immediate(2, [], "w"), "val": _blob_value(10, weight.shape, w_off)}),
        _op("const", {}, [("b", 10, bias.shape)], {"name": _immediate(2, [], "b"), "val": _blob_value(10, bias.shape, b_off)}),
        _op("cast", {"x": "input", "dtype": _immediate(2, [], "fp16")}, [("x16", 10, [1, 2, 5, 5])]),
        _op("conv", {"x": "x16", "weight": "w", "bias": "b", "strides": _i32([1, 1]), "pad_type": _immediate(2, [], "custom"),
                     "pad": _i32([1, 1, 1, 1]), "dilations": _i32([1, 1]), "groups": _immediate(23, [], [1])},
            [("y", 10, [1, 4, 5, 5])]),
        _op("relu", {"x": "y"}, [("r", 10, [1, 4, 5, 5])]),
        _op("pixel_shuffle", {"x": "r", "upscale_factor": _immediate(23, [], [2])}, [("p", 10, [1, 1, 10, 10])]),
    ]
    last = "p"
    if extra_op is not None:
        ops.append(extra_op)
        last = "e"
    ops.append(_op("cast", {"x": last, "dtype": _immediate(2, [], "fp32")}, [("output", 11, [1, 1, 10, 10])]))
    block = b"".join(_f(3, o) for o in ops) + _f(2, "output")
    function = _f(1, _f(1, "input") + _f(2, _tensor_type(11, [1, 2, 5, 5]))) + _f(2, "CoreML7") + \
        _f(3, _f(1, "CoreML7") + _f(2, block))
    program = _f(1, 1) + _f(2, _f(1, "main") + _f(2, function))
    feature = lambda name, shape: _f(1, name) + _f(3, _f(5, _f(1, b"".join(_varint(d) for d in shape)) + _f(2, 65568)))
    description = _f(1, feature("input", [1, 2, 5, 5])) + _f(10, feature("output", [1, 1, 10, 10])) + \
        _f(100, _f(100, _f(1, "nsr_edge.recipe") + _f(2, "fp16")))
    model = _f(1, 8) + _f(2, description) + _f(502, program)
    data = root / "Data" / "com.apple.CoreML"
    (data / "weights").mkdir(parents=True)
    (data / "model.mlmodel").write_bytes(model)
    (data / "weights" / "weight.bin").write_bytes(blob)
    return root


def _reference(x, weight, bias):
    h = lambda a: a.astype(np.float16).astype(np.float32)
    y = h(_naive_conv(h(x), h(weight), h(bias), pad=1))
    y = np.maximum(y, 0)
    n, c, hh, ww = y.shape
    return y.reshape(n, 1, 2, 2, hh, ww).transpose(0, 1, 4, 2, 5, 3).reshape(n, 1, hh * 2, ww * 2)


def _naive_conv(x, w, b, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1), np.float64)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i : i + kh, j : j + kw], w)
    return out + b.reshape(1, -1, 1, 1)


@pytest.fixture
def package_dir(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    return _write_package(tmp_path / "tiny.mlpackage", w, b), w, b


def test_hand_written_package_runs_with_numpy_only(package_dir):
    root, w, b = package_dir
    package = load_mlpackage(root)
    assert package.spec.specification_version == 8
    assert package.metadata == {"nsr_edge.recipe": "fp16"}
    assert [f.to_dict() for f in package.inputs] == [{"name": "input", "kind": "multiArray", "shape": [1, 2, 5, 5],
                                                      "dtype": "float32"}]
    assert package.op_counts() == {"cast": 2, "const": 2, "conv": 1, "pixel_shuffle": 1, "relu": 1}
    x = np.random.default_rng(1).random((1, 2, 5, 5), dtype=np.float32)
    dtypes = {}
    out = MilEvaluator(package, backend="numpy").run({"input": x}, lambda op, n, v: dtypes.setdefault(n, v.dtype))
    assert dtypes["y"] == np.float16 and dtypes["output"] == np.float32  # fp16 storage emulated
    np.testing.assert_allclose(out["output"], _reference(x, w, b), atol=2e-3)
    assert np.abs(out["output"] - _reference(x, w, b)).max() < 1e-2


def test_input_checks(package_dir):
    ev = MilEvaluator(load_mlpackage(package_dir[0]), backend="numpy")
    with pytest.raises(MilError, match="missing input"):
        ev.run({})
    with pytest.raises(MilError, match="shape"):
        ev.run({"input": np.zeros((1, 2, 6, 6), np.float32)})
    with pytest.raises(MilError, match="unknown input"):
        ev.run({"input": np.zeros((1, 2, 5, 5), np.float32), "other": np.zeros(1)})


def test_unsupported_op_is_named_before_running(tmp_path):
    odd = _op("erf", {"x": "p"}, [("e", 10, [1, 1, 10, 10])])
    root = _write_package(tmp_path / "odd.mlpackage", np.ones((4, 2, 3, 3), np.float32), np.zeros(4, np.float32), odd)
    with pytest.raises(MilUnsupportedOpError, match="unsupported MIL op erf"):
        MilEvaluator(load_mlpackage(root))


def test_corrupt_blob_is_refused(package_dir):
    root = package_dir[0]
    blob = root / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    data[64:68] = b"\0\0\0\0"  # break the first blob's sentinel
    blob.write_bytes(bytes(data))
    with pytest.raises(MilError, match="sentinel"):
        MilEvaluator(load_mlpackage(root))


def test_not_a_package(tmp_path):
    with pytest.raises(MilError):
        load_mlpackage(tmp_path / "missing.mlpackage")
    (tmp_path / "junk.mlpackage").mkdir()
    with pytest.raises(MilError, match="no model.mlmodel"):
        load_mlpackage(tmp_path / "junk.mlpackage")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(MilError):
        load_artifact(tmp_path / "x.bin")


def test_unflatten_executorch_directory_layout(package_dir):
    """ExecuTorch's Core ML delegate stores its folder as file bytes + a byte-reversed JSON index; a .pte is found
    to hold one by that index, wherever the payload sits in the file."""
    root = package_dir[0]
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    nodes, data, order = [], b"", sorted(files)
    file_index = {}
    for name in order:
        file_index[name] = len(nodes)
        nodes.append({"children": {}, "dataRegion": {"offset": len(data), "size": len(files[name])}, "kind": 0,
                      "name": name.rsplit("/", 1)[-1]})
        data += files[name]

    def folder(name, children):
        nodes.append({"children": children, "dataRegion": {"offset": 0, "size": 0}, "kind": 1, "name": name})
        return len(nodes) - 1

    weights = folder("weights", {"weight.bin": file_index["Data/com.apple.CoreML/weights/weight.bin"]})
    coreml = folder("com.apple.CoreML", {"model.mlmodel": file_index["Data/com.apple.CoreML/model.mlmodel"],
                                         "weights": weights})
    data_dir = folder("Data", {"com.apple.CoreML": coreml})
    package = folder("model.mlpackage", {"Data": data_dir})
    meta_index = len(nodes)
    nodes.append({"children": {}, "dataRegion": {"offset": len(data), "size": 2}, "kind": 0, "name": "metadata.json"})
    data += b"{}"
    folder("lowered_module", {"model.mlpackage": package, "metadata.json": meta_index})
    flat = data + json.dumps({"nodes": nodes}, separators=(",", ":")).encode()[::-1]
    out = unflatten_directory(flat)
    assert out["model.mlpackage/Data/com.apple.CoreML/model.mlmodel"] == files["Data/com.apple.CoreML/model.mlmodel"]
    assert out["metadata.json"] == b"{}"
    pte = root.parent / "fake.pte"
    pte.write_bytes(b"\x00" * 24 + b"ET12" + b"\x00" * 100 + flat + b"\x00" * 37)
    x = np.random.default_rng(2).random((1, 2, 5, 5), dtype=np.float32)
    a = MilEvaluator(load_artifact(pte)).run({"input": x})["output"]
    b = MilEvaluator(load_mlpackage(root)).run({"input": x})["output"]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("groups,stride,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)])
def test_numpy_conv_matches_naive(groups, stride, dilation):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 9, 8)).astype(np.float32)
    w = rng.normal(size=(6, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    y = _conv_numpy(x, w, b, (stride, stride), (1, 1, 1, 1), (dilation, dilation), groups)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(y)
    og, cg = 6 // groups, 4 // groups
    for o in range(6):
        g = o // og
        for i in range(y.shape[2]):
            for j in range(y.shape[3]):
                patch = xp[:, g * cg : (g + 1) * cg, i * stride : i * stride + 2 * dilation + 1 : dilation,
                           j * stride : j * stride + 2 * dilation + 1 : dilation]
                ref[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_quantize_rounds_half_to_even_and_saturates():
    from nsr_edge.runtime.coreml_mil import _k_dequantize, _k_quantize

    x = np.array([0.5, 1.5, 2.5, -0.5, 300.0, -300.0], np.float32)
    q = _k_quantize(None, None, {"input": x, "scale": np.float32(1.0), "output_dtype": "int8"})[0]
    assert q.dtype == np.int8 and q.tolist() == [0, 2, 2, 0, 127, -128]
    u = _k_quantize(None, None, {"input": x, "scale": np.float32(1.0), "zero_point": np.uint8(128),
                                 "output_dtype": "uint8"})[0]
    assert u.tolist() == [128, 130, 130, 128, 255, 0]
    d = _k_dequantize(None, None, {"input": u, "scale": np.float32(0.5), "zero_point": np.uint8(128)})[0]
    assert d.tolist() == [0.0, 1.0, 1.0, 0.0, 63.5, -64.0]
