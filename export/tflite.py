"""TFLite / LiteRT export of the identity and frame graphs (litert-torch + ai-edge-quantizer).

    result = export_tflite(FrameGraph(model, layout), example_inputs, ["image", "mask"],
                           Path("frame_int8.tflite"), "int8", calibration=feeds)

The model's signature (`serving_default`) takes its inputs by the names of `example_inputs`
and returns its outputs by `output_names` (the module is wrapped so that it returns a dict,
which litert-torch turns into output names).

Precisions
- fp32: float model as converted.
- fp16: float16 weights of CONV_2D / FULLY_CONNECTED / DEPTHWISE_CONV_2D (ai-edge-quantizer
  float casting, explicit DEQUANTIZE), float32 compute unless a delegate decides otherwise.
  Other constants (baked texture and adaptive parameters, BatchNorm folds) stay float32:
  float casting supports only those weight-bearing ops.
- int8_dynamic: int8 per-channel weights of CONV_2D / FULLY_CONNECTED / DEPTHWISE_CONV_2D,
  activations quantized on the fly by the kernels (see int8_dynamic_recipe for why not on
  every op).
- int8: calibrated *static* int8 (int8 weights and activations) restricted to CONV_2D and
  FULLY_CONNECTED, everything else float. The restriction is deliberate: the warp's sampling
  coordinates (identity grid + delta UV, in [-1, 1]) need ~1/100 px precision, an int8
  activation of that range has a step of 2/255 ~ 1 px at 256 px, and the bilinear gather
  amplifies every coordinate error into image error. Convolution outputs (delta UV before
  tanh, low-frequency logits, features) have small ranges and quantize fine.
- int8_full (tests and reports only, not a shipping precision): static int8 on every op the
  quantizer supports; used to show what quantizing the warp coordinates costs (on the paper
  model ~6 dB of image and three times the mixed recipe's UV error, docs/export.md).

Known trap (litert-torch 0.10): constants that are strided views of a larger tensor convert
without error into a wrong model. Every parameter, buffer and tensor attribute is therefore
replaced by a contiguous copy before conversion, and nothing here trusts a conversion: every
artifact is run in LiteRT and gated against the reference (`runtime_bench.validate`), and the
tests gate on it too.

`TfliteTarget` is this module's entry in the target registry (`export.targets`).
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..reference.files import write_bytes_atomic
from .errors import ConversionError, ExportError
from .precisions import PRECISIONS, SHIPPING_PRECISIONS, needs_calibration
from .target import ArtifactNotes, Target, converting, output_names
from .warp import FusedWarp

SIGNATURE = "serving_default"
# Op types that get static int8 (weights and activations) in the `int8` precision.
INT8_STATIC_OPS = ("CONV_2D", "FULLY_CONNECTED")
FP16_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D")
DYNAMIC_INT8_OPS = ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D")

# Why an op type stays float in the mixed int8 recipe (reported in notes).
FLOAT_OP_REASONS = {
    "ADD": "residual sums and uv = identity grid + delta (sampling coordinates)",
    "SUB": "sampling-coordinate arithmetic (bilinear weights)",
    "MUL": "adaptive norm affine / bilinear weights of the warp",
    "FLOOR": "warp: integer texel coordinates",
    "GATHER": "warp: texel lookup",
    "GATHER_ND": "warp: texel lookup",
    "CAST": "warp: index conversion",
    "LOGICAL_AND": "warp: zero-padding mask",
    "GREATER_EQUAL": "warp: zero-padding mask",
    "LESS_EQUAL": "warp: zero-padding mask",
    "LESS": "warp: zero-padding mask",
    "SELECT_V2": "warp: zero-padding mask",
    "BATCH_MATMUL": "adaptive 1x1 convs: both operands are activations (per-identity weights come in as input)",
    "TANH": "head activations (delta UV, low-frequency image)",
    "LOGISTIC": "mask head",
    "LEAKY_RELU": "between float norm affines",
    "RESHAPE": "layout only",
    "TRANSPOSE": "layout only",
    "CONCATENATION": "layout only",
    "SLICE": "unpacking adaptive parameters / grid channels",
    "STRIDED_SLICE": "unpacking adaptive parameters / grid channels",
}


_log = logging.getLogger(__name__).info  # the converter log (bilayer-mobile export: reports/export.log)


class TfliteTarget(Target):
    """TFLite flatbuffers with a `serving_default` signature, run by LiteRT (XNNPACK on CPU here;
    GPU, NNAPI and other delegates on devices)."""

    name = "tflite"
    extension = ".tflite"
    runtime = "litert"
    precisions = SHIPPING_PRECISIONS
    limitations = {
        "fp16 compute": "fp16 stores float16 weights of CONV_2D / FULLY_CONNECTED / DEPTHWISE_CONV_2D only; "
                        "compute is float32 unless a delegate (GPU) runs it in fp16",
        "dynamic shapes": "static shapes only (those of the contract)",
        "phones": "no phone runs here (no adb): the GPU accelerator runs on a software Vulkan device (its verdicts "
                  "and fp16 numerics, not a phone GPU's timings or driver), XNNPACK on this x86 CPU, no NPU",
    }

    def graph_for(self, graph, warp):
        # litert-torch decomposes grid_sample into ops no GPU delegate takes (export.warp)
        if warp == "fused" and hasattr(graph, "with_warp"):
            size = graph.model.config.image_size
            return graph.with_warp(FusedWarp(size, size, gather=tfl_gather))
        return graph

    def convert_float(self, graph, example_inputs):
        with converting(f"litert-torch conversion of the {graph.name} graph"):
            return convert_float(graph, example_inputs, output_names(graph))

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None) -> ArtifactNotes:
        with converting(f"TFLite {precision} conversion of the {graph.name} graph"):
            result = export_tflite(graph, example_inputs, output_names(graph), path, precision, calibration,
                                   float_model=float_model)
        return ArtifactNotes(result.float_ops, result.notes)


def tfl_gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a 2-D table by a 1-D int32 index as one TFL GATHER (axis 0). litert-torch lowers
    every torch indexing op to GATHER_ND, which the GPU delegates reject; its experimental TFL
    op library emits GATHER directly (and runs it eagerly too)."""
    import litert_torch.backend.experimental.torch_tfl  # noqa: F401  (registers torch.ops.tfl)

    return torch.ops.tfl.gather(table, index, 0)


@dataclass
class TfliteExportResult:
    path: Path
    precision: str
    float_ops: dict[str, int] | None  # op type -> count kept in float (mixed / full int8)
    notes: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    conversion_seconds: float = 0.0
    size_bytes: int = 0


# ---------------------------------------------------------------------------- module preparation
def contiguous_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` (eval mode, no grad) whose every parameter, buffer and tensor
    attribute is a fresh contiguous tensor (no strided views sharing storage)."""
    module = copy.deepcopy(module).eval()
    with torch.no_grad():
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = nn.Parameter(p.detach().clone().contiguous(), requires_grad=False)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = b.detach().clone().contiguous()
            for name, value in list(vars(sub).items()):
                if isinstance(value, torch.Tensor) and not name.startswith("_"):
                    setattr(sub, name, value.detach().clone().contiguous())
    return module


class NamedOutputs(nn.Module):
    """Calls `module(**inputs)` and returns its outputs as {name: tensor} (litert-torch names the
    TFLite signature outputs after the dict keys)."""

    def __init__(self, module: nn.Module, output_names: list[str]):
        super().__init__()
        self.module = module
        self.output_names = list(output_names)

    def forward(self, **inputs):
        out = self.module(**inputs)
        if isinstance(out, torch.Tensor):
            out = (out,)
        if isinstance(out, dict):
            out = tuple(out[n] for n in self.output_names)
        if len(out) != len(self.output_names):
            raise ExportError(f"module returned {len(out)} outputs, output_names has {len(self.output_names)}: "
                             f"{self.output_names}")
        return {name: t.contiguous() for name, t in zip(self.output_names, out)}


# ---------------------------------------------------------------------------- recipes
def fp16_recipe():
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    for op in FP16_WEIGHT_OPS:
        rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName(op), num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return rm.get_quantization_recipe()


def int8_dynamic_recipe():
    """Dynamic-range int8 (int8 per-channel weights, float activations quantized on the fly) on
    the weight-bearing ops. Not on every supported op (dynamic_wi8_afp32): ai-edge-quantizer
    0.10 then also quantizes a constant *left* operand of BATCH_MATMUL (the baked adaptive 1x1
    convs, bmm(weight, x)), which the LiteRT hybrid kernel rejects at prepare time
    (batch_matmul.cc: lhs float and rhs int8 required)."""
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    for op in DYNAMIC_INT8_OPS:
        rm.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName(op), num_bits=8)
    return rm.get_quantization_recipe()


def int8_mixed_recipe(static_ops: Iterable[str] = INT8_STATIC_OPS):
    """Static int8 (weights + activations) only on `static_ops`; every other op stays float."""
    from ai_edge_quantizer import qtyping, recipe_manager

    rm = recipe_manager.RecipeManager()
    for op in static_ops:
        rm.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName(op),
                             activation_num_bits=8, weight_num_bits=8)
    return rm.get_quantization_recipe()


def full_int8_recipe():
    """Static int8 on every supported op (ai-edge-quantizer static_wi8_ai8): quantizes the warp's
    sampling coordinates too. For tests/reports that show why `int8` is restricted."""
    from ai_edge_quantizer import recipe

    return recipe.static_wi8_ai8()


def _recipe_for(precision: str, int8_static_ops: Iterable[str] = INT8_STATIC_OPS):
    if precision == "int8":
        return int8_mixed_recipe(int8_static_ops)
    return {"fp16": fp16_recipe, "int8_dynamic": int8_dynamic_recipe, "int8_full": full_int8_recipe}[precision]()


# ---------------------------------------------------------------------------- model inspection
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _tensor_type_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)}


def op_histogram(model: bytes | Path, only: str | None = None) -> dict[str, int]:
    """Op type -> count in the main subgraph.

    only="float": ops computing in float (an output is FLOAT32/FLOAT16);
    only="quantized": ops with a quantized integer output (INT8/UINT8/INT16 with a scale);
    only="index": ops with only int32/int64/bool outputs (index and mask arithmetic, e.g. the
    warp's texel indices), which no precision changes. QUANTIZE/DEQUANTIZE are left out of
    all three.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    fb = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    names, types = _op_names(), _tensor_type_names()
    counts: Counter[str] = Counter()
    subgraph = fb.subgraphs[0]
    for op in subgraph.operators:
        code = fb.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"OP_{code.builtinCode}")
        if only is not None:
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            outs = [subgraph.tensors[i] for i in op.outputs if i >= 0]
            out_types = {types.get(t.type, "?") for t in outs}
            quantized = any(types.get(t.type) in ("INT8", "UINT8", "INT16") and t.quantization is not None
                            and t.quantization.scale is not None and len(t.quantization.scale) > 0 for t in outs)
            kind = "float" if out_types & {"FLOAT32", "FLOAT16"} else "quantized" if quantized else "index"
            if kind != only:
                continue
        counts[name] += 1
    return dict(sorted(counts.items()))


def fix_scatter_regions(model: bytes) -> tuple[bytes, int]:
    """Make STABLEHLO_SCATTER ops runnable: their update region must be STABLEHLO_ADD.

    litert-torch 0.10 lowers `scatter_add` (the enhancer's grid_sample adjoint) to
    STABLEHLO_SCATTER whose update subgraph holds a TFLite ADD, but the LiteRT 2.3 kernel
    (stablehlo_scatter.cc, OpCodeToComputationType) only recognises STABLEHLO_ADD / _MULTIPLY /
    _MAXIMUM / _MINIMUM and fails at AllocateTensors with "Only update, Add, Multiply, Maximum
    and Minimum operations are currently supported for stablehlo.scatter". Rewriting the region's
    ADD to STABLEHLO_ADD (same semantics, a single 2-input add of scalars) fixes it.
    Returns the model and the number of regions rewritten.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    ops = schema.BuiltinOperator
    fb = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    code_of = lambda op: max(fb.operatorCodes[op.opcodeIndex].builtinCode,
                             fb.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
    regions = {op.builtinOptions2.updateComputationSubgraphIndex
               for sg in fb.subgraphs for op in sg.operators if code_of(op) == ops.STABLEHLO_SCATTER}
    to_fix = [op for r in sorted(regions) for op in fb.subgraphs[r].operators if code_of(op) == ops.ADD]
    if not to_fix:
        return model, 0
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = ops.STABLEHLO_ADD, ops.PLACEHOLDER_FOR_GREATER_OP_CODES, 1
    fb.operatorCodes.append(code)
    for op in to_fix:
        op.opcodeIndex = len(fb.operatorCodes) - 1
        op.builtinOptionsType, op.builtinOptions = 0, None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb)), len(to_fix)


def signature_names(model: bytes | Path) -> tuple[list[str], list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    kw = {"model_path": str(model)} if isinstance(model, (str, Path)) else {"model_content": bytes(model)}
    sigs = Interpreter(**kw).get_signature_list()
    sig = sigs[SIGNATURE] if SIGNATURE in sigs else next(iter(sigs.values()))
    return list(sig["inputs"]), list(sig["outputs"])


# ---------------------------------------------------------------------------- conversion
def _quantize(float_model: bytes, precision: str, calibration: list[dict[str, np.ndarray]] | None,
              int8_static_ops: Iterable[str] = INT8_STATIC_OPS) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(float_model), _recipe_for(precision, int8_static_ops))
    result = None
    if q.need_calibration:
        if not calibration:
            raise ExportError(f"precision {precision!r} needs calibration data (a list of input feeds)")
        feeds = [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()} for feed in calibration]
        _log(f"calibrating {precision} on {len(feeds)} samples")
        result = q.calibrate({SIGNATURE: feeds}, num_threads=max(1, os.cpu_count() or 1))
    _log(f"quantizing ({precision})")
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def convert_float(module: nn.Module, example_inputs: dict[str, torch.Tensor], output_names: list[str]) -> bytes:
    """fp32 TFLite flatbuffer of `module` (contiguous copy, dict outputs)."""
    import litert_torch

    wrapper = NamedOutputs(contiguous_copy(module), output_names).eval()
    example = {k: v.detach().clone().contiguous().float() for k, v in example_inputs.items()}
    with torch.no_grad():
        edge = litert_torch.convert(wrapper, sample_kwargs=example)
    return bytes(edge.model_content())


def export_tflite(module: torch.nn.Module, example_inputs: dict[str, torch.Tensor], output_names: list[str],
                  path: Path, precision: str, calibration: list[dict[str, np.ndarray]] | None = None,
                  *, float_model: bytes | Path | None = None,
                  int8_static_ops: Iterable[str] = INT8_STATIC_OPS) -> TfliteExportResult:
    """Convert `module` with litert-torch and write a .tflite at `path` (atomically).

    The signature `serving_default` takes `example_inputs`' keys as input names and returns
    `output_names`. `calibration` (feeds keyed like example_inputs, numpy) is required for
    "int8" (and "int8_full"). The result lists the op types kept in float for the static int8
    precisions. The conversion is not checked here: run it in LiteRT (`runtime_bench.validate`).

    float_model: the fp32 .tflite (path or bytes) of this same module and inputs from an earlier
    export_tflite call; the litert-torch conversion is then skipped and only the quantizer runs
    (to export several precisions of one graph without converting it again).
    int8_static_ops: the op types that get static int8 in "int8" (default CONV_2D and
    FULLY_CONNECTED; other choices are for experiments).
    """
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    path = Path(path)
    if not output_names:
        raise ExportError("output_names must name every output of the module")
    if needs_calibration(precision):
        if not calibration:
            raise ExportError(f"precision {precision!r} needs calibration data: a list of feeds keyed like example_inputs")
        for feed in calibration:
            if set(feed) != set(example_inputs):
                raise ExportError(f"calibration feed keys {sorted(feed)} differ from the inputs {sorted(example_inputs)}")
    notes: list[str] = []
    start = time.perf_counter()
    _log(f"converting {type(module).__name__} -> {path.name} ({precision})")
    if float_model is None:
        content = convert_float(module, example_inputs, output_names)
    else:
        content = Path(float_model).read_bytes() if isinstance(float_model, (str, Path)) else bytes(float_model)
        notes.append("derived from the graph's one fp32 conversion (no new litert-torch conversion)")
        if op_histogram(content, only="quantized"):
            raise ExportError("float_model is already quantized; pass the fp32 export")
    content, fixed = fix_scatter_regions(content)
    if fixed:
        notes.append(f"{fixed} STABLEHLO_SCATTER update region(s) rewritten ADD -> STABLEHLO_ADD "
                     "(litert-torch 0.10 / LiteRT 2.3 mismatch; see fix_scatter_regions)")
    if precision != "fp32":
        content = _quantize(content, precision, calibration, int8_static_ops)
    seconds = time.perf_counter() - start

    inputs, outputs = signature_names(content)
    if sorted(inputs) != sorted(example_inputs) or sorted(outputs) != sorted(output_names):
        raise ConversionError(f"litert-torch named the signature {inputs} -> {outputs}, not "
                              f"{list(example_inputs)} -> {list(output_names)}")

    float_ops = None
    if precision in ("int8", "int8_full"):
        float_ops = op_histogram(content, only="float")
        notes.append(f"int8 ops: {op_histogram(content, only='quantized')}")
        notes.append(f"index/mask ops (int32/bool, unaffected by precision): {op_histogram(content, only='index')}")
        if precision == "int8":
            notes.append(f"static int8 restricted to {list(int8_static_ops)}; the warp (sampling coordinates and "
                         "bilinear gather) and every non-conv op stay float")
            for op in sorted(float_ops):
                if op in FLOAT_OP_REASONS:
                    notes.append(f"float {op} x{float_ops[op]}: {FLOAT_OP_REASONS[op]}")
        else:
            notes.append("int8_full quantizes every supported op, the sampling coordinates included: diagnostic only")
    elif precision == "fp16":
        notes.append(f"float16 weights on {list(FP16_WEIGHT_OPS)} (dequantized to float32 at load); "
                     "other constants stay float32")
    elif precision == "int8_dynamic":
        notes.append(f"int8 per-channel weights on {list(DYNAMIC_INT8_OPS)}; activations quantized dynamically "
                     "by the kernels; BATCH_MATMUL left float (constant-lhs hybrid BMM is rejected by LiteRT)")

    write_bytes_atomic(path, content)
    _log(f"wrote {path} ({len(content) / 1e6:.2f} MB) in {seconds:.1f} s")
    return TfliteExportResult(path=path, precision=precision, float_ops=float_ops, notes=notes,
                              input_names=inputs, output_names=outputs, conversion_seconds=seconds,
                              size_bytes=len(content))
