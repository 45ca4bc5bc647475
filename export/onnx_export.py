"""The ONNX target: export a graph (`export.graphs`) to a checked .onnx file at one precision.

Named `onnx_export` (not `onnx`) so that nothing that puts `export/` on `sys.path` can shadow
the `onnx` package.

Pipeline (one function, `export_onnx`):

1. **Torch export with the dynamo exporter** (`torch.onnx.export(..., dynamo=True)`, opset 18,
   static shapes). Why not the legacy TorchScript exporter: it matches the dynamo exporter on
   the frame graphs (both ~100 dB vs PyTorch on golden_tiny in onnxruntime), but it could not
   export the identity graph while the texture projector pooled an 8x8 embedding *up* to 32x32
   with `adaptive_avg_pool2d` ("output size that are not factor of input size"; the reference
   now writes that resize as an exact repeat). The dynamo exporter handles every graph, maps
   `grid_sample` to `GridSample` (bilinear, zeros, align_corners=0) and the enhancer's
   `scatter_add` to `ScatterElements(reduction="add")` (needs opset >= 16). One exporter for
   every graph keeps the three artifacts consistent.
2. **onnxslim** (constant folding, dead-node and shape-op cleanup).
3. **Contiguous constants**: every initializer and `Constant` tensor is re-serialised from a
   C-contiguous array (module parameters/buffers are made contiguous before tracing too; a
   converter that keeps a constant as a strided view can silently compute garbage).
4. **Precision** (`export.precisions`):
   - `fp32`: as exported;
   - `fp16`: float16 weights and activations, float32 graph inputs/outputs
     (`onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`);
   - `int8_dynamic`: `quantize_dynamic`, uint8 weights of MatMul/Gemm/Conv, activations
     quantized at run time;
   - `int8`: calibrated static 8-bit (QDQ, uint8 activations, per-channel symmetric uint8
     weights: zero point 128)
     *restricted to Conv, MatMul and Gemm*. The warp coordinates (`identity_grid + tanh(uv_head)`)
     and everything that feeds `GridSample` stay float: a uniform int8 grid over [-1, 1] has a
     step of ~1 output pixel, which destroys the warp (see `int8_full`);
   Both 8-bit recipes are u8 x u8 (`INT8_WEIGHT_TYPE`) so that their figures do not depend on
   the CPU: onnxruntime's x86 u8 x s8 kernel multiplies with VPMADDUBSW, whose int16 pair sums
   saturate on CPUs without VNNI (AVX2, AVX-512 before VNNI); with int8 weights the frame graph
   measured 31.7 dB there against 35.9 dB on a VNNI CPU. Its u8 x u8 kernel widens to int16 and
   accumulates exactly on every ISA (x86 with or without VNNI, ARM), and so does every ARM
   kernel: measured 35.7 dB on both kinds of x86 (docs/export.md, "int8 on any CPU");
   - `int8_full` (tests and demonstrations only): static int8 of every float op type in the
     graph, to show that the parity gate catches a quantized warp.
5. `onnx.checker.check_model(full_check=True)` and an **atomic write** (`reference.files`).

`OnnxTarget` is this module's entry in the target registry (`export.targets`).
"""
from __future__ import annotations

import copy
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..reference.files import write_bytes_atomic
from .errors import ConversionError, ExportError
from .precisions import PRECISIONS, SHIPPING_PRECISIONS, needs_calibration
from .target import ArtifactNotes, Target, converting, output_names

OPSET = 18

# Op types that take static int8 in the mixed recipe: the MAC-heavy ops, whose inputs are
# activations and weights with well-behaved ranges.
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
# 8-bit weights and activations of both int8 recipes are unsigned: u8 x u8 never saturates in
# onnxruntime's kernels (see the module docstring); int8 weights did on CPUs without VNNI.
INT8_WEIGHT_TYPE = "QUInt8"
INT8_ACTIVATION_TYPE = "QUInt8"
# Also keep float the MAC node(s) that produce the sampling grid (the UV head's conv).
INT8_EXCLUDE_UV_HEAD = True
# Why the other op types stay float in the mixed recipe (reported in `notes`).
FLOAT_OP_REASONS = {
    "Conv": "the UV head, whose output becomes the GridSample grid (the warp), is kept float",
    "GridSample": "samples the texture at the UV grid; its grid input must keep sub-pixel precision",
    "Add": "residual sums and identity_grid + delta_uv (the warp coordinates): int8 over [-1, 1] is ~1 px",
    "Tanh": "UV/low-frequency heads: the UV head's output is the warp displacement",
    "Sigmoid": "mask head output",
    "Mul": "adaptive norm scale / shift and bilinear weights",
    "BatchNormalization": "folded by runtimes into the neighbouring conv; cheap",
    "LeakyRelu": "elementwise, cheap; quantizing it only adds Q/DQ pairs",
    "Resize": "nearest upsampling: data movement, exact in float",
    "ScatterElements": "enhancer's scatter-add adjoint: accumulation must stay float",
}
_IGNORED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant", "Cast"}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass
class OnnxExportResult:
    path: Path
    precision: str
    opset: int
    float_ops: dict[str, int] | None
    notes: list[str] = field(default_factory=list)


class OnnxTarget(Target):
    """ONNX files, run by onnxruntime (CPU provider here; other providers on devices)."""

    name = "onnx"
    extension = ".onnx"
    runtime = "onnxruntime"
    precisions = SHIPPING_PRECISIONS
    limitations = {"dynamic shapes": "static shapes only (those of the contract)",
                   "execution providers": "only onnxruntime's CPU provider runs here; the NNAPI, Core ML, QNN and other "
                                          "device providers are not run"}

    def convert_float(self, graph, example_inputs):
        with converting(f"ONNX export of the {graph.name} graph"):
            return convert_float(graph, example_inputs, output_names(graph))

    def warp_of(self, graph):
        # grid_sample maps to ONNX's own GridSample op, which onnxruntime runs natively
        return "native GridSample" if hasattr(graph, "warp_kind") else None

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None) -> ArtifactNotes:
        with converting(f"ONNX {precision} conversion of the {graph.name} graph"):
            result = export_onnx(graph, example_inputs, output_names(graph), path, precision, calibration,
                                 float_model=float_model)
        return ArtifactNotes(result.float_ops, result.notes)


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------
def convert_float(module: torch.nn.Module, example_inputs: dict[str, torch.Tensor],
                  output_names: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """Steps 1-3: the fp32 ModelProto of `module` (dynamo export, onnxslim, contiguous constants)
    and notes on how it was made. Every precision of `export_onnx` starts from this model."""
    if not example_inputs:
        raise ExportError("example_inputs is empty")
    t0 = time.perf_counter()
    model = torch_to_onnx(module, example_inputs, output_names)
    notes = [f"exported with the dynamo exporter, opset {OPSET}, static shapes "
             f"({len(model.graph.node)} nodes) in {time.perf_counter() - t0:.1f} s"]
    n_before = len(model.graph.node)
    model = simplify(model)
    notes.append(f"onnxslim: {n_before} -> {len(model.graph.node)} nodes")
    return contiguous_constants(model), notes


def export_onnx(
    module: torch.nn.Module | None,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    path: Path,
    precision: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
    *,
    float_model: tuple[onnx.ModelProto, list[str]] | None = None,
) -> OnnxExportResult:
    """Export `module` (called with `example_inputs`' values in order) to `path` at `precision`.

    Input names are `example_inputs`' keys, output names `output_names` (the module must
    return that many tensors). `calibration` (feeds by input name) is required for `int8` and
    `int8_full`. Shapes are static (those of `example_inputs`).

    float_model: what `convert_float` returned for this module and these inputs; the torch
    export is then skipped and only the precision's conversion runs (so one graph is exported
    once for all its precisions). The model is not modified.
    """
    path = Path(path)
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if needs_calibration(precision) and not calibration:
        raise ExportError(f"precision {precision!r} needs calibration feeds (list of dicts input name -> array)")
    if not example_inputs:
        raise ExportError("example_inputs is empty")
    if float_model is None:
        model, notes = convert_float(module, example_inputs, output_names)
    else:
        # not copied: every precision below builds a new model and leaves this one as it is
        model, notes = float_model[0], list(float_model[1]) + ["derived from the graph's one fp32 export"]
        got = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
        if got != (list(example_inputs), list(output_names)):
            raise ExportError(f"float_model has inputs/outputs {got}, not {list(example_inputs)} -> {list(output_names)}")

    float_ops: dict[str, int] | None = None
    if precision == "fp16":
        model, block = to_fp16(model)
        float_ops = count_float_ops_fp16(model)
        notes.append("fp16: float16 weights/activations, float32 inputs and outputs (keep_io_types); "
                     f"kept float32 (op_block_list): {sorted(block)}; onnxruntime's CPU provider runs the "
                     "fp16 ops it has no fp16 kernel for in float32 behind inserted casts")
    elif precision == "int8_dynamic":
        model = quantize_int8_dynamic(model)
        float_ops = count_float_ops(model)
        notes.append("int8_dynamic: quantize_dynamic, uint8 weights (per tensor) of "
                     f"{list(DYNAMIC_OP_TYPES)}; activations quantized at run time (uint8); everything else float; "
                     "u8 x u8 kernels accumulate exactly on every CPU (no VNNI dependence)")
    elif precision in ("int8", "int8_full"):
        op_types = list(INT8_OP_TYPES) if precision == "int8" else quantizable_op_types(model)
        exclude = warp_coordinate_producers(model) if precision == "int8" and INT8_EXCLUDE_UV_HEAD else []
        model = quantize_int8_static(model, calibration, op_types, exclude)
        float_ops = count_float_ops(model)
        if precision == "int8":
            notes.append(f"int8: calibrated static QDQ (MinMax, {len(calibration)} feeds, per-channel symmetric "
                         f"uint8 weights (zero point 128), uint8 activations) on {list(INT8_OP_TYPES)} only; u8 x u8 kernels "
                         "accumulate exactly on every CPU (no VNNI dependence)")
            if exclude:
                notes.append(f"  kept float: {exclude} (computes the GridSample grid, i.e. the warp)")
            for op in sorted(float_ops):
                notes.append(f"  float {op} x{float_ops[op]}: {FLOAT_OP_REASONS.get(op, 'data movement / shape op')}")
        else:
            notes.append(f"int8_full (test only): static QDQ of every float op type {op_types}; "
                         "this quantizes the warp coordinates and is expected to fail the parity gate")
    if precision != "fp32":  # the fp32 model's constants were made contiguous by convert_float
        model = contiguous_constants(model)
    check(model)
    write_bytes_atomic(path, model.SerializeToString())
    return OnnxExportResult(path=path, precision=precision, opset=opset_of(model), float_ops=float_ops, notes=notes)


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------
def _make_contiguous_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if not tensor.is_contiguous():
                tensor.data = tensor.data.contiguous()


def torch_to_onnx(module: torch.nn.Module, example_inputs: dict[str, torch.Tensor],
                  output_names: list[str]) -> onnx.ModelProto:
    """Dynamo export (opset 18) to an in-memory ModelProto with the given input/output names."""
    import logging
    import warnings

    module = module.eval()
    _make_contiguous_(module)
    args = tuple(t.detach().contiguous() for t in example_inputs.values())
    input_names = list(example_inputs)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=list(output_names), opset_version=OPSET,
                                        external_data=False, optimize=True, verbose=False, report=False)
        except Exception as exc:  # the exporter raises many types; name the graph and re-raise
            raise ConversionError(f"torch.onnx.export (dynamo) failed for {type(module).__name__}: {exc}") from exc
    model = program.model_proto
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != input_names or got_out != list(output_names):
        raise ConversionError(f"exported names {got_in} -> {got_out} differ from requested "
                              f"{input_names} -> {list(output_names)} (does the module return {len(output_names)} tensors?)")
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    original_inputs = [copy.deepcopy(i) for i in model.graph.input]
    slim = onnxslim.slim(model)
    if [i.name for i in slim.graph.input] != names_in:
        # onnxslim drops inputs nothing reads (the identity graph's source_keypoints when the
        # model has no enhancer). The input list is the app's contract: put them back, unused.
        kept = {i.name: i for i in slim.graph.input}
        del slim.graph.input[:]
        slim.graph.input.extend(kept.get(i.name, i) for i in original_inputs)
    if [i.name for i in slim.graph.input] != names_in or [o.name for o in slim.graph.output] != names_out:
        raise ConversionError("onnxslim changed the graph's input/output names")
    return slim


def contiguous_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-serialise every initializer and Constant tensor from a C-contiguous array (raw data)."""

    def fresh(tensor: onnx.TensorProto) -> onnx.TensorProto:
        # (not np.ascontiguousarray: it turns 0-d scalars into shape [1])
        array = np.array(numpy_helper.to_array(tensor), order="C", copy=True)
        return numpy_helper.from_array(array, tensor.name)

    def visit(graph: onnx.GraphProto) -> None:
        for i, init in enumerate(graph.initializer):
            if init.data_location != onnx.TensorProto.EXTERNAL:
                graph.initializer[i].CopyFrom(fresh(init))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    attr.t.CopyFrom(fresh(attr.t))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    return model


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # ScatterElements stays float32: it is the enhancer's scatter-add (65k bilinear contributions
    # accumulate per texel), and onnxruntime's CPU provider has no float16 ScatterElements with
    # reduction (the session fails at run time).
    block = list(DEFAULT_OP_BLOCK_LIST) + [op for op in FP16_FLOAT_OPS if op not in DEFAULT_OP_BLOCK_LIST]
    converted = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, op_block_list=block)
    # The converter appends the input casts at the end of the node list: restore topological order.
    toposort_(converted.graph)
    present = {n.op_type for n in model.graph.node}
    return converted, [op for op in block if op in present]


DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
FP16_FLOAT_OPS = ("ScatterElements",)


def quantize_int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnx-int8dyn-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        # per tensor: per-channel weights measured no better here (39.0 vs 39.1 dB on the frame graph)
        quantize_dynamic(src, dst, op_types_to_quantize=list(DYNAMIC_OP_TYPES), per_channel=False,
                         weight_type=QuantType[INT8_WEIGHT_TYPE])
        return onnx.load(dst)


class FeedReader:
    """onnxruntime CalibrationDataReader over a list of feeds (only the graph's inputs, float32)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]], input_names: list[str]):
        self._feeds = [{k: np.array(f[k], dtype=np.float32, order="C") for k in input_names}
                       for f in feeds]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)


def quantizable_op_types(model: onnx.ModelProto) -> list[str]:
    """Every op type in the graph that computes on float tensors (used by `int8_full`)."""
    skip = _IGNORED_OPS | {"Shape", "Range", "ConstantOfShape"}
    return sorted({n.op_type for n in model.graph.node if n.op_type not in skip})


def warp_coordinate_producers(model: onnx.ModelProto, stop_ops: tuple[str, ...] = INT8_OP_TYPES) -> list[str]:
    """Names of the MAC nodes (Conv/MatMul/Gemm) that compute the sampling grid of a GridSample.

    Walks back from every GridSample's grid input through elementwise/shape ops and stops at the
    first node of `stop_ops` on each path: in these graphs that is the UV head's conv.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [n.input[1] for n in model.graph.node if n.op_type == "GridSample" and len(n.input) > 1]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in stop_ops:
            found.append(node.name)
            continue
        stack.extend(i for i in node.input if i)
    return sorted(set(found))


def quantize_int8_static(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]],
                         op_types: list[str], nodes_to_exclude: list[str] | None = None) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_names = [i.name for i in model.graph.input]
    missing = [k for k in input_names if k not in calibration[0]]
    if missing:
        raise ExportError(f"calibration feeds lack inputs {missing}; they need {input_names}")

    class _Reader(FeedReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="onnx-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        quantize_static(
            src, dst, _Reader(calibration, input_names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(nodes_to_exclude or []),
            per_channel=True,
            activation_type=QuantType[INT8_ACTIVATION_TYPE],
            weight_type=QuantType[INT8_WEIGHT_TYPE],
            calibrate_method=CalibrationMethod.MinMax,
            # (No CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards the statistics it
            # flushes. MinMax keeps only per-tensor ReduceMin/ReduceMax outputs per feed anyway.)
            # Per-channel weights are symmetric whatever is asked (QLinearConv needs one zero point
            # for all channels): uint8 with zero point 128, i.e. an int8 grid stored as uint8.
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return onnx.load(dst)


def toposort_(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` topologically (stable: keeps the original order where it can)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    consumers: dict[str, list[int]] = {}
    waiting = []
    for k, node in enumerate(nodes):
        deps = {i for i in node.input if i not in available}
        waiting.append(len(deps))
        for i in deps:
            consumers.setdefault(i, []).append(k)
    import heapq

    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for out in nodes[k].output:
            for c in consumers.pop(out, []):
                waiting[c] -= 1
                if waiting[c] == 0:
                    heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise ConversionError("graph has a cycle or an input no node produces; cannot sort it")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)


def check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ConversionError(f"onnx.checker (full_check) rejected the model: {exc}") from exc


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# ------------------------------------------------------------------------------------------------
# Which ops stay float
# ------------------------------------------------------------------------------------------------
def count_float_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (with counts) that still compute in float after int8 quantization.

    A node counts as int8 when it is an integer op (MatMulInteger, ConvInteger, QLinear*) or,
    in QDQ form, when every non-constant input comes from a DequantizeLinear. Q/DQ, Cast and
    Constant nodes are bookkeeping and not counted; nor are the scale arithmetic nodes
    quantize_dynamic inserts after its integer ops.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    float_inits = {i.name for i in model.graph.initializer if i.data_type in _FLOAT_TYPES}
    constants = {i.name for i in model.graph.initializer} - float_inits
    for n in model.graph.node:
        if n.op_type == "Constant":
            t = next((a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR), None)
            (float_inits if t is not None and t.data_type in _FLOAT_TYPES else constants).update(n.output)
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        op = node.op_type
        if op in _IGNORED_OPS or op.endswith("Integer") or op.startswith("QLinear"):
            continue
        if "_quant" in node.name or node.name.endswith(("_output_scale_mul", "_scales_mul", "_bias_add")):
            continue
        # float weights consumed directly (not through DequantizeLinear) mean float compute
        data = [i for i in node.input if i and i not in constants]
        if data and all(i in producers and producers[i].op_type == "DequantizeLinear" for i in data):
            continue
        counts[op] += 1
    return dict(sorted(counts.items()))


def count_float_ops_fp16(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (with counts) still computing in float32 in an fp16-converted model."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info)
             + list(inferred.graph.input) + list(inferred.graph.output)}
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in _IGNORED_OPS:
            continue
        if any(types.get(o) == onnx.TensorProto.FLOAT for o in node.output):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))
