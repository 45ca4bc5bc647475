"""Evaluate a saved Core ML ML Program (.mlpackage) with numpy, on any machine.

Core ML's own prediction needs macOS. What can be checked everywhere is the program the package
holds: `MilProgram(path)` reads the package's `Model.proto` (`Data/com.apple.CoreML/model.mlmodel`)
and its weight file (`weights/weight.bin`) directly, with no coremltools converter object in
between, and `run(feed)` walks the main function's operations in order with the numpy kernels
below. So an error of the conversion *or* of the serialisation (a wrong attribute, a weight at
the wrong offset, a transposed constant) shows in the outputs.

Rules the evaluator keeps:

- Every operation type needs a kernel in `KERNELS`; an operation without one raises
  `UnsupportedOp` naming it (nothing is skipped).
- dtypes: each value is stored in its declared MIL dtype. Float kernels compute in float32 and
  the result is rounded to float16 when the operation's declared output is fp16 (fp16 storage
  between operations, as on a device; the device's own arithmetic inside an op may round more
  often, which this does not emulate). Integer and bool operations stay exact.
- Every output is checked against the shape the program declares for it.
- `resample` (the warp, torch `grid_sample`) is written from the MIL definition: bilinear
  sampling with `coordinates_mode` and `align_corners` as the spec defines them and constant
  (`padding_value`) or border padding. Other combinations raise.

Weight file format (read by `_BlobFile`): a 64-byte file header, then for each blob a 64-byte
metadata record (uint32 sentinel 0xDEADBEEF, uint32 storage type, uint64 size in bytes, uint64
data offset) that `blobFileValue.offset` points at.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..reference.errors import BilayerError

SENTINEL = 0xDEADBEEF


class MilProgramError(BilayerError):
    """The package cannot be read or evaluated (bad file, unexpected structure)."""


class UnsupportedOp(MilProgramError):
    """An operation (or one of its modes) has no kernel here."""


# MIL DataType enum (MIL.proto) -> numpy dtype and the MIL short name
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("bool", np.dtype(np.bool_)),
    2: ("string", None),
    10: ("fp16", np.dtype(np.float16)),
    11: ("fp32", np.dtype(np.float32)),
    12: ("fp64", np.dtype(np.float64)),
    21: ("int8", np.dtype(np.int8)),
    22: ("int16", np.dtype(np.int16)),
    23: ("int32", np.dtype(np.int32)),
    24: ("int64", np.dtype(np.int64)),
    31: ("uint8", np.dtype(np.uint8)),
    32: ("uint16", np.dtype(np.uint16)),
    33: ("uint32", np.dtype(np.uint32)),
    34: ("uint64", np.dtype(np.uint64)),
}
_BY_NAME = {name: dt for name, dt in _DTYPES.values() if dt is not None}


def mil_dtype(code: int) -> np.dtype:
    if code not in _DTYPES or _DTYPES[code][1] is None:
        raise MilProgramError(f"MIL data type {code} is not supported by the host evaluator")
    return _DTYPES[code][1]


def mil_dtype_name(code: int) -> str:
    return _DTYPES.get(code, (f"type{code}", None))[0]


# ------------------------------------------------------------------------------------------------
# Reading the package
# ------------------------------------------------------------------------------------------------
class _BlobFile:
    """One weight.bin, read once into memory."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        if len(self.data) < 64:
            raise MilProgramError(f"{path} is too short for a weight file")

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        meta = self.data[offset:offset + 64]
        if len(meta) < 24:
            raise MilProgramError(f"{self.path.name}: no blob metadata at offset {offset}")
        sentinel = int(np.frombuffer(meta[:4], "<u4")[0])
        if sentinel != SENTINEL:
            raise MilProgramError(f"{self.path.name}: bad blob sentinel {sentinel:#x} at offset {offset}")
        size, start = (int(v) for v in np.frombuffer(meta[8:24], "<u8"))
        count = int(np.prod(shape)) if shape else 1
        if size != count * dtype.itemsize:
            raise MilProgramError(f"{self.path.name}: blob at {offset} holds {size} bytes, its type "
                                  f"{dtype.name}{list(shape)} needs {count * dtype.itemsize}")
        if start + size > len(self.data):
            raise MilProgramError(f"{self.path.name}: blob at {offset} runs past the end of the file")
        return np.frombuffer(self.data, dtype.newbyteorder("<"), count, start).reshape(shape).astype(dtype)


@dataclass
class TensorType:
    dtype: np.dtype | None
    shape: tuple[int, ...] | None  # None: unknown rank or a dynamic dimension
    mil_name: str


def _tensor_type(value_type) -> TensorType:
    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise MilProgramError(f"value type {kind!r} is not supported (tensors only)")
    t = value_type.tensorType
    dims = []
    for d in t.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return TensorType(None if t.dataType == 2 else mil_dtype(t.dataType), None, mil_dtype_name(t.dataType))
        dims.append(int(d.constant.size))
    dtype = None if t.dataType == 2 else mil_dtype(t.dataType)
    return TensorType(dtype, tuple(dims), mil_dtype_name(t.dataType))


def _immediate(value, ttype: TensorType):
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    if kind == "strings":
        vals = list(tensor.strings.values)
        return vals[0] if not ttype.shape else np.array(vals, dtype=object).reshape(ttype.shape)
    if kind == "bytes":
        raw = tensor.bytes.values
        arr = np.frombuffer(raw, ttype.dtype.newbyteorder("<")).astype(ttype.dtype)
    else:
        arr = np.array(list(getattr(tensor, kind).values), dtype=ttype.dtype)
    shape = ttype.shape if ttype.shape is not None else ()
    return arr.reshape(shape)


@dataclass
class Operation:
    type: str
    name: str
    inputs: dict[str, list]  # input name -> list of ("name", var) or ("value", array)
    outputs: list[tuple[str, TensorType]]
    attributes: dict[str, object]  # decoded attributes (const "val", constexpr data, ...)


@dataclass
class MilProgram:
    """The main function of a saved .mlpackage, ready to run with numpy kernels."""

    path: Path
    spec_version: int
    opset: str
    inputs: list[tuple[str, TensorType]]
    outputs: list[str]  # block output variable names
    output_names: list[str]  # the model description's output names (same order)
    operations: list[Operation]
    times: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str, function: str = "main") -> "MilProgram":
        path = Path(path)
        model_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
        if not model_file.is_file():
            raise MilProgramError(f"{path} is not an .mlpackage (no {model_file.relative_to(path)})")
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model()
        spec.ParseFromString(model_file.read_bytes())
        if spec.WhichOneof("Type") != "mlProgram":
            raise MilProgramError(f"{path} holds a {spec.WhichOneof('Type')} model, not an ML Program")
        functions = spec.mlProgram.functions
        if function not in functions:
            raise MilProgramError(f"{path} has no function {function!r} (has {sorted(functions)})")
        fn = functions[function]
        block = fn.block_specializations[fn.opset]
        blobs: dict[str, _BlobFile] = {}

        def blob(value, ttype: TensorType) -> np.ndarray:
            ref = value.blobFileValue
            name = ref.fileName.replace("@model_path/", "")
            if name not in blobs:
                blobs[name] = _BlobFile(path / "Data" / "com.apple.CoreML" / name)
            return blobs[name].read(int(ref.offset), ttype.dtype, ttype.shape)

        def decode(value):
            ttype = _tensor_type(value.type)
            which = value.WhichOneof("value")
            if which == "immediateValue":
                return _immediate(value, ttype)
            if which == "blobFileValue":
                return blob(value, ttype)
            raise MilProgramError(f"value form {which!r} is not supported")

        ops = []
        for op in block.operations:
            if len(op.blocks):
                raise UnsupportedOp(f"operation {op.type!r} has nested blocks (control flow): not supported")
            inputs = {}
            for key, arg in op.inputs.items():
                items = []
                for a in arg.arguments:
                    if a.WhichOneof("binding") == "name":
                        items.append(("name", a.name))
                    else:
                        items.append(("value", decode(a.value)))
                inputs[key] = items
            attrs = {k: decode(v) for k, v in op.attributes.items()}
            outputs = [(o.name, _tensor_type(o.type)) for o in op.outputs]
            ops.append(Operation(op.type, str(attrs.get("name", outputs[0][0] if outputs else op.type)),
                                 inputs, outputs, attrs))
        fn_inputs = [(i.name, _tensor_type(i.type)) for i in fn.inputs]
        return cls(path, int(spec.specificationVersion), str(fn.opset), fn_inputs, list(block.outputs),
                   [o.name for o in spec.description.output], ops)

    def op_histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
        return dict(sorted(counts.items()))

    def run(self, feed: dict[str, np.ndarray], profile: bool = False) -> dict[str, np.ndarray]:
        """Evaluate the program on `feed` (by function input name); outputs by the model's
        output names, in their declared dtype."""
        env: dict[str, object] = {}
        for name, ttype in self.inputs:
            if name not in feed:
                raise MilProgramError(f"feed lacks input {name!r}")
            value = np.asarray(feed[name])
            if ttype.shape is not None and tuple(value.shape) != ttype.shape:
                raise MilProgramError(f"input {name!r} has shape {value.shape}, the program declares {ttype.shape}")
            env[name] = value.astype(ttype.dtype)
        times: dict[str, float] = {}
        for op in self.operations:
            kernel = KERNELS.get(op.type)
            if kernel is None:
                raise UnsupportedOp(f"MIL operation {op.type!r} ({op.name}) has no host kernel; the host "
                                    f"evaluator implements {', '.join(sorted(KERNELS))}")
            args = {}
            for key, items in op.inputs.items():
                vals = [env[v] if kind == "name" else v for kind, v in items]
                args[key] = vals
            t0 = time.perf_counter() if profile else 0.0
            try:
                result = kernel(op, args)
            except MilProgramError:
                raise
            except Exception as exc:
                raise MilProgramError(f"operation {op.type!r} ({op.name}) failed: {type(exc).__name__}: {exc}") from exc
            if profile:
                times[op.type] = times.get(op.type, 0.0) + time.perf_counter() - t0
            if not isinstance(result, (list, tuple)):
                result = [result]
            if len(result) != len(op.outputs):
                raise MilProgramError(f"{op.type} ({op.name}) gave {len(result)} outputs, declares {len(op.outputs)}")
            for (name, ttype), value in zip(op.outputs, result):
                env[name] = _as_declared(op, name, ttype, value)
        self.times = times
        return {public: env[var] for public, var in zip(self.output_names, self.outputs)}


def _as_declared(op: Operation, name: str, ttype: TensorType, value):
    if ttype.dtype is None:  # string
        return value
    value = np.asarray(value)
    if ttype.shape is not None and tuple(value.shape) != ttype.shape:
        raise MilProgramError(f"{op.type} ({op.name}) computed {name} of shape {tuple(value.shape)}, "
                              f"the program declares {ttype.shape}")
    if value.dtype != ttype.dtype:
        if np.issubdtype(ttype.dtype, np.integer) and np.issubdtype(value.dtype, np.floating):
            raise MilProgramError(f"{op.type} ({op.name}) computed float values for int output {name}")
        value = value.astype(ttype.dtype)
    return value


# ------------------------------------------------------------------------------------------------
# Kernels: kernel(op, args) -> value or list of values; args[name] is a list (variadic inputs)
# ------------------------------------------------------------------------------------------------
Kernel = Callable[[Operation, dict], object]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str):
    def register(fn: Kernel) -> Kernel:
        for n in names:
            KERNELS[n] = fn
        return fn
    return register


def _f(x) -> np.ndarray:
    """A float operand in float32 math (fp16 values upcast; ints left alone)."""
    x = np.asarray(x)
    return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32 else x


def _one(args, key, default=None):
    if key not in args:
        return default
    return args[key][0]


def _scalar(args, key, default=None):
    v = _one(args, key, default)
    if isinstance(v, np.ndarray):
        return v.item() if v.size == 1 and v.ndim == 0 else v
    return v


@kernel("const")
def _const(op, args):
    if "val" not in op.attributes:
        raise MilProgramError(f"const {op.name} has no value")
    return op.attributes["val"]


@kernel("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(op, args):
    a = op.attributes
    data, zero, scale, axis = a["quantized_data"], a["zero_point"], a["scale"], int(a["axis"])
    shape = [1] * data.ndim
    if np.ndim(scale) == 1 and np.size(scale) > 1:
        shape[axis] = -1
    zero = np.asarray(zero, np.float32).reshape(shape if np.size(zero) > 1 else [])
    scale = np.asarray(scale, np.float32).reshape(shape if np.size(scale) > 1 else [])
    return (data.astype(np.float32) - zero) * scale


@kernel("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(op, args):
    # iOS18 form: data * scale (- offset) with scale/offset blocks broadcast over the data's shape
    data = np.asarray(_one(args, "data") if "data" in args else op.attributes["data"], np.float32)
    scale = np.asarray(_one(args, "scale") if "scale" in args else op.attributes["scale"], np.float32)
    offset = _one(args, "offset") if "offset" in args else op.attributes.get("offset")
    reps = [d // s for d, s in zip(data.shape, scale.shape)]
    s = scale
    for axis, r in enumerate(reps):
        s = np.repeat(s, r, axis=axis)
    if offset is not None:
        o = np.asarray(offset, np.float32)
        for axis, r in enumerate(reps):
            o = np.repeat(o, r, axis=axis)
        return (data - o) * s
    return data * s


@kernel("cast")
def _cast(op, args):
    x = np.asarray(_one(args, "x"))
    dtype = _scalar(args, "dtype")
    if dtype not in _BY_NAME:
        raise UnsupportedOp(f"cast to {dtype!r} is not supported")
    target = _BY_NAME[dtype]
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        return np.trunc(x.astype(np.float64)).astype(target)  # MIL casts float -> int by truncation
    return x.astype(target)


def _binary(fn):
    def run(op, args):
        x, y = _one(args, "x"), _one(args, "y")
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(y.dtype, np.floating):
            return fn(_f(x).astype(np.float32), _f(y).astype(np.float32))
        return fn(x, y)
    return run


# elementwise MIL ops of two operands -> their numpy function
KERNELS.update({name: _binary(fn) for name, fn in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
    "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide, "greater": np.greater,
    "greater_equal": np.greater_equal, "less": np.less, "less_equal": np.less_equal, "equal": np.equal,
    "not_equal": np.not_equal, "logical_and": np.logical_and, "logical_or": np.logical_or}.items()})


def _unary(fn):
    return lambda op, args: fn(_f(_one(args, "x")))


KERNELS.update({name: _unary(fn) for name, fn in {
    "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "floor": np.floor, "ceil": np.ceil, "abs": np.abs, "sqrt": np.sqrt, "exp": np.exp, "sign": np.sign}.items()})
KERNELS["rsqrt"] = lambda op, args: 1.0 / np.sqrt(_f(_one(args, "x")) + np.float32(_scalar(args, "epsilon", 1e-12)))
KERNELS["identity"] = lambda op, args: np.asarray(_one(args, "x"))
KERNELS["logical_not"] = lambda op, args: np.logical_not(_one(args, "x"))


@kernel("leaky_relu")
def _leaky_relu(op, args):
    x = _f(_one(args, "x"))
    alpha = np.float32(_scalar(args, "alpha", 0.01))
    return np.where(x >= 0, x, alpha * x)


@kernel("clip")
def _clip(op, args):
    return np.clip(_f(_one(args, "x")), np.float32(_scalar(args, "alpha")), np.float32(_scalar(args, "beta")))


@kernel("select")
def _select(op, args):
    return np.where(_one(args, "cond"), _one(args, "a"), _one(args, "b"))


@kernel("reshape")
def _reshape(op, args):
    # static programs: the declared output shape is the answer; the `shape` operand must agree
    x = np.asarray(_one(args, "x"))
    shape = [int(s) for s in np.asarray(_one(args, "shape")).reshape(-1)]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@kernel("expand_dims")
def _expand_dims(op, args):
    x = np.asarray(_one(args, "x"))
    axes = sorted(int(a) if a >= 0 else int(a) + x.ndim + len(np.ravel(_one(args, "axes")))
                  for a in np.ravel(_one(args, "axes")))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


@kernel("squeeze")
def _squeeze(op, args):
    x = np.asarray(_one(args, "x"))
    axes = _one(args, "axes")
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) for a in np.ravel(axes)))


@kernel("transpose")
def _transpose(op, args):
    return np.transpose(np.asarray(_one(args, "x")), [int(p) for p in np.ravel(_one(args, "perm"))])


@kernel("concat")
def _concat(op, args):
    values = [np.asarray(v) for v in args["values"]]
    if bool(_scalar(args, "interleave", False)):
        raise UnsupportedOp("concat with interleave=True is not supported")
    dtype = np.result_type(*values)
    return np.concatenate([v.astype(dtype) for v in values], axis=int(_scalar(args, "axis")))


@kernel("tile")
def _tile(op, args):
    return np.tile(np.asarray(_one(args, "x")), [int(r) for r in np.ravel(_one(args, "reps"))])


@kernel("slice_by_index")
def _slice_by_index(op, args):
    x = np.asarray(_one(args, "x"))
    n = x.ndim
    begin = [int(v) for v in np.ravel(_one(args, "begin"))]
    end = [int(v) for v in np.ravel(_one(args, "end"))]

    def mask(key, default):
        v = _one(args, key)
        return [bool(b) for b in np.ravel(v)] if v is not None else [default] * n

    stride = _one(args, "stride")
    stride = [int(s) for s in np.ravel(stride)] if stride is not None else [1] * n
    begin_mask, end_mask, squeeze_mask = mask("begin_mask", False), mask("end_mask", False), mask("squeeze_mask", False)
    index = []
    for d in range(n):
        b = None if begin_mask[d] else begin[d]
        e = None if end_mask[d] else end[d]
        if squeeze_mask[d]:
            index.append(begin[d])
        else:
            index.append(slice(b, e, stride[d]))
    return x[tuple(index)]


@kernel("slice_by_size")
def _slice_by_size(op, args):
    x = np.asarray(_one(args, "x"))
    begin = [int(v) for v in np.ravel(_one(args, "begin"))]
    size = [int(v) for v in np.ravel(_one(args, "size"))]
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size))]


@kernel("split")
def _split(op, args):
    x = np.asarray(_one(args, "x"))
    axis = int(_scalar(args, "axis"))
    sizes = _one(args, "split_sizes")
    if sizes is not None:
        cuts = np.cumsum([int(s) for s in np.ravel(sizes)])[:-1]
        return np.split(x, cuts, axis=axis)
    return np.split(x, int(_scalar(args, "num_splits")), axis=axis)


def _reduce(fn):
    def run(op, args):
        x = _f(_one(args, "x"))
        axes = _one(args, "axes")
        axes = None if axes is None else tuple(int(a) for a in np.ravel(axes))
        return fn(x, axis=axes, keepdims=bool(_scalar(args, "keep_dims", False)))
    return run


KERNELS["reduce_sum"] = _reduce(np.sum)
KERNELS["reduce_mean"] = _reduce(np.mean)
KERNELS["reduce_max"] = _reduce(np.max)
KERNELS["reduce_min"] = _reduce(np.min)


@kernel("matmul")
def _matmul(op, args):
    x, y = _f(_one(args, "x")), _f(_one(args, "y"))
    if bool(_scalar(args, "transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(_scalar(args, "transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@kernel("linear")
def _linear(op, args):
    x, w = _f(_one(args, "x")), _f(_one(args, "weight"))
    out = x @ w.T
    bias = _one(args, "bias")
    return out + _f(bias) if bias is not None else out


@kernel("batch_norm")
def _batch_norm(op, args):
    x = _f(_one(args, "x"))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = _f(_one(args, "mean")).reshape(shape)
    var = _f(_one(args, "variance")).reshape(shape)
    eps = np.float32(_scalar(args, "epsilon", 1e-5))
    out = (x - mean) / np.sqrt(var + eps)
    gamma, beta = _one(args, "gamma"), _one(args, "beta")
    if gamma is not None:
        out = out * _f(gamma).reshape(shape)
    if beta is not None:
        out = out + _f(beta).reshape(shape)
    return out


@kernel("instance_norm")
def _instance_norm(op, args):
    x = _f(_one(args, "x"))
    axes = tuple(range(2, x.ndim))
    eps = np.float32(_scalar(args, "epsilon", 1e-5))
    out = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    shape = [1, -1] + [1] * (x.ndim - 2)
    gamma, beta = _one(args, "gamma"), _one(args, "beta")
    if gamma is not None:
        out = out * _f(gamma).reshape(shape)
    if beta is not None:
        out = out + _f(beta).reshape(shape)
    return out


def _conv_padding(pad_type: str, pad, in_hw, kernel_hw, strides, dilations):
    """[(top, bottom), (left, right)] for a conv's MIL padding arguments."""
    if pad_type == "custom":
        p = [int(v) for v in np.ravel(pad)]
        return [(p[0], p[1]), (p[2], p[3])]
    if pad_type == "valid":
        return [(0, 0), (0, 0)]
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_hw, kernel_hw, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise UnsupportedOp(f"conv pad_type {pad_type!r} is not supported")


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, strides=(1, 1), padding=((0, 0), (0, 0)),
           dilations=(1, 1), groups: int = 1) -> np.ndarray:
    """NCHW conv in float32: sliding windows (im2col) + one BLAS product per group."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    if c != cg * groups or o % groups:
        raise MilProgramError(f"conv: input has {c} channels, weight {w.shape} with groups={groups}")
    (pt, pb), (pl, pr) = padding
    if pt or pb or pl or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    sh, sw = strides
    dh, dw = dilations
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if kh == 1 and kw == 1:
        cols = x[:, :, ::sh, ::sw]
        ho, wo = cols.shape[2:]
        out = np.empty((n, o, ho, wo), np.float32)
        og = o // groups
        for g in range(groups):
            xs = cols[:, g * cg:(g + 1) * cg].reshape(n, cg, -1)
            out[:, g * og:(g + 1) * og] = np.matmul(w[g * og:(g + 1) * og, :, 0, 0], xs).reshape(n, og, ho, wo)
    else:
        win = np.lib.stride_tricks.sliding_window_view(x, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
        ho, wo = win.shape[2:4]
        out = np.empty((n, o, ho, wo), np.float32)
        og = o // groups
        for g in range(groups):
            cols = win[:, g * cg:(g + 1) * cg]  # n, cg, ho, wo, kh, kw
            cols = np.ascontiguousarray(cols.transpose(0, 2, 3, 1, 4, 5)).reshape(n, ho * wo, cg * kh * kw)
            wg = w[g * og:(g + 1) * og].reshape(og, -1)
            out[:, g * og:(g + 1) * og] = np.matmul(cols, wg.T).transpose(0, 2, 1).reshape(n, og, ho, wo)
    if bias is not None:
        out += np.asarray(bias, np.float32).reshape(1, -1, 1, 1)
    return out


@kernel("conv")
def _conv(op, args):
    x, w = _f(_one(args, "x")), _f(_one(args, "weight"))
    if x.ndim != 4:
        raise UnsupportedOp(f"conv of rank {x.ndim} is not supported (2-D only)")
    strides = [int(v) for v in np.ravel(_one(args, "strides", np.array([1, 1])))]
    dilations = [int(v) for v in np.ravel(_one(args, "dilations", np.array([1, 1])))]
    pad_type = str(_scalar(args, "pad_type", "valid"))
    padding = _conv_padding(pad_type, _one(args, "pad"), x.shape[2:], w.shape[2:], strides, dilations)
    bias = _one(args, "bias")
    return conv2d(x, w, None if bias is None else _f(bias), strides, padding, dilations,
                  int(_scalar(args, "groups", 1)))


@kernel("avg_pool")
def _avg_pool(op, args):
    x = _f(_one(args, "x"))
    kh, kw = (int(v) for v in np.ravel(_one(args, "kernel_sizes")))
    sh, sw = (int(v) for v in np.ravel(_one(args, "strides")))
    pad_type = str(_scalar(args, "pad_type", "valid"))
    padding = _conv_padding(pad_type, _one(args, "pad"), x.shape[2:], (kh, kw), (sh, sw), (1, 1))
    if any(p for pair in padding for p in pair):
        if not bool(_scalar(args, "exclude_padding_from_average", False)):
            raise UnsupportedOp("avg_pool with padding counted in the average is not supported")
        raise UnsupportedOp("avg_pool with padding is not supported")
    if bool(_scalar(args, "ceil_mode", False)):
        raise UnsupportedOp("avg_pool with ceil_mode=True is not supported")
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return win.mean(axis=(-2, -1))


@kernel("upsample_nearest_neighbor")
def _upsample_nearest(op, args):
    x = np.asarray(_one(args, "x"))
    sh = float(_scalar(args, "scale_factor_height", 1))
    sw = float(_scalar(args, "scale_factor_width", 1))
    h, w = x.shape[-2:]
    ho, wo = int(math.floor(h * sh)), int(math.floor(w * sw))
    rows = np.minimum(np.floor(np.arange(ho) / sh).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(wo) / sw).astype(np.int64), w - 1)
    return x[..., rows[:, None], cols[None, :]]


def resample_bilinear(x: np.ndarray, coordinates: np.ndarray, coordinates_mode: str, align_corners: bool,
                      padding_mode: str = "constant", padding_value: float = 0.0) -> np.ndarray:
    """MIL `resample` with sampling_mode "bilinear": x [B, C, H, W], coordinates [B, Ho, Wo, 2]
    as (x, y) -> [B, C, Ho, Wo], in float32.

    Pixel coordinates of a sample (u = the coordinate along a side of n texels):
    - normalized_minus_one_to_one: align_corners False: ((u + 1) * n - 1) / 2 (-1 and 1 are the
      outer edges of the corner texels, torch grid_sample align_corners=False); True:
      (u + 1) / 2 * (n - 1) (-1 and 1 are the corner texels' centres);
    - normalized_zero_to_one: the same with u' = 2 u - 1;
    - unnormalized: u is the pixel coordinate itself (texel centres at 0 .. n - 1); align_corners
      has no meaning there and must be False.
    Outside the texture the image is padded with `padding_value` ("constant") or its border
    texels ("border"). Other modes raise.
    """
    x = np.asarray(x, np.float32)
    coords = np.asarray(coordinates, np.float32)
    b, c, h, w = x.shape
    u, v = coords[..., 0].astype(np.float32), coords[..., 1].astype(np.float32)
    if coordinates_mode == "normalized_zero_to_one":
        u, v = 2 * u - 1, 2 * v - 1
        coordinates_mode = "normalized_minus_one_to_one"
    if coordinates_mode == "normalized_minus_one_to_one":
        if align_corners:
            px, py = (u + 1) / 2 * (w - 1), (v + 1) / 2 * (h - 1)
        else:
            px, py = ((u + 1) * w - 1) / 2, ((v + 1) * h - 1) / 2
    elif coordinates_mode == "unnormalized":
        if align_corners:
            raise UnsupportedOp("resample: unnormalized coordinates with align_corners=True are not supported")
        px, py = u, v
    else:
        raise UnsupportedOp(f"resample coordinates_mode {coordinates_mode!r} is not supported")
    if padding_mode not in ("constant", "border"):
        raise UnsupportedOp(f"resample padding_mode {padding_mode!r} is not supported (constant, border)")
    x0, y0 = np.floor(px), np.floor(py)
    fx, fy = px - x0, py - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((b, c) + coords.shape[1:3], np.float32)
    flat = x.reshape(b, c, h * w)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            weight = (wx * wy).astype(np.float32)
            if padding_mode == "constant":
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            index = np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1)  # [b, ho, wo]
            for k in range(b):
                texels = flat[k][:, index[k].reshape(-1)].reshape((c,) + index.shape[1:])
                if padding_mode == "constant":
                    texels = np.where(inside[k][None], texels, np.float32(padding_value))
                out[k] += weight[k][None] * texels
    return out


@kernel("resample")
def _resample(op, args):
    mode = str(_scalar(args, "sampling_mode"))
    if mode != "bilinear":
        raise UnsupportedOp(f"resample sampling_mode {mode!r} is not supported (bilinear only)")
    return resample_bilinear(_f(_one(args, "x")), _f(_one(args, "coordinates")), str(_scalar(args, "coordinates_mode")),
                             bool(_scalar(args, "align_corners")), str(_scalar(args, "padding_mode")),
                             float(_scalar(args, "padding_value", 0.0)))


@kernel("scatter_along_axis")
def _scatter_along_axis(op, args):
    data = np.array(_f(_one(args, "data")), copy=True)
    indices = np.asarray(_one(args, "indices")).astype(np.int64)
    updates = _f(_one(args, "updates"))
    axis = int(_scalar(args, "axis", 0))
    mode = str(_scalar(args, "mode", "add"))
    axis = axis % data.ndim
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    grids = list(np.indices(indices.shape, sparse=True))
    grids[axis] = indices
    index = tuple(np.broadcast_to(g, indices.shape) for g in grids)
    if mode == "add":
        np.add.at(data, index, updates)
    elif mode == "update":
        data[index] = updates
    else:
        raise UnsupportedOp(f"scatter_along_axis mode {mode!r} is not supported (add, update)")
    return data


@kernel("fill")
def _fill(op, args):
    shape = [int(s) for s in np.ravel(_one(args, "shape"))]
    value = _scalar(args, "value", 0.0)
    return np.full(shape, value, dtype=op.outputs[0][1].dtype)
