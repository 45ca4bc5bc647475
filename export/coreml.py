"""The Core ML target: export a graph (`export.graphs`) to an ML Program package (.mlpackage).

Route: `torch.export.export(graph, args).run_decompositions(DECOMPOSITIONS)` (ATen ops, static
shapes), then `coremltools.convert(..., convert_to="mlprogram")` with the contract's input and
output names, float32 at the boundary for every precision.

Deployment target: `DEPLOYMENT_TARGET` = iOS16 (macOS13), for every precision. It is the lowest
that all three precisions need: the ML Program format and MIL `resample` (what `grid_sample`
becomes) exist since iOS15, so fp32 and fp16 alone would load on iOS15, but per-channel int8
weights (`constexpr_affine_dequantize`, int8_dynamic) are iOS16 ops, and a float32 output of an
fp16 program (a cast at the boundary) is fine there too. One target for the three artifacts of a
bundle keeps them on one opset (the same `resample` definition). Nothing here needs iOS17 (its
`resample` only adds 8/16-bit integer coordinates) or iOS18 (blockwise int4 / palettes).

Why tensors and not `ct.ImageType` inputs/outputs: the contract's images are float NCHW in
[-1, 1] (`(uint8 / 255 - 0.5) * 2`), the texture and frame outputs are not clamped and the
frame graph's texture input is the identity graph's output, not a camera image. An ImageType
would take 8-bit RGB and fold the normalisation (scale 2/255, bias -1) into the model, and an
image output would clamp and quantize the frame. An app that wants `CVPixelBuffer`s can wrap
the model (or re-convert with ImageType) and then owns that normalisation; the artifact here
keeps exactly the contract every other target has.

Precisions:
- fp32: `compute_precision=FLOAT32`.
- fp16: `compute_precision=FLOAT16`: coremltools stores weights in fp16 and inserts casts at
  the float32 inputs and outputs; every op computes in fp16 (the warp's sampling coordinates
  too: iOS16 `resample` takes fp16 coordinates, i.e. uv resolved to 2^-11 near 1, ~0.06 px at
  256 px).
- int8_dynamic: the fp16 program with `coremltools.optimize.coreml.linear_quantize_weights`
  (int8, per output channel, symmetric) on the weights of `conv` and `linear` only. This is
  weights-only int8: `constexpr_affine_dequantize` ops hold the int8 data, activations stay
  fp16; Core ML dequantizes at load time or, on iOS17+ hardware that has int8 weight paths
  (Neural Engine), uses the int8 weights directly. Other constants are left alone on purpose:
  coremltools would otherwise quantize the warp's identity grid (an int8 grid over [-1, 1] has
  a step of ~1 px, which measured 15 dB on the frame image) and the baked texture.

After conversion the saved package's program is read back and every `resample` op must have
the reference's convention (bilinear, constant zero padding, coordinates normalized to [-1, 1],
align_corners False); anything else is a `ConversionError`. The package is written to a
temporary sibling directory and renamed into place only when complete.

Known trap (coremltools 9.0): `ct.convert` of an ExportedProgram modifies the program's constant
tensors in place (BatchNorm running means came out negated), and an ExportedProgram shares those
tensors with the module it was exported from: converting twice, or running the torch graph as
the reference after converting it, then silently gives wrong numbers (15 dB). Here the graph is
deep-copied before torch.export and the program before every conversion.

`CoremlTarget` is this module's entry in the target registry (`export.targets`).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConversionError, ExportError
from .target import ArtifactNotes, Target, converting, output_names

PRECISIONS = ("fp32", "fp16", "int8_dynamic")
DEPLOYMENT_TARGET_NAME = "iOS16"
# MIL ops whose weights int8_dynamic quantizes (their "weight" input).
INT8_WEIGHT_OPS = ("conv", "linear")
# The reference's warp: torch grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False).
RESAMPLE_CONVENTION = {
    "sampling_mode": "bilinear",
    "padding_mode": "constant",
    "padding_value": 0.0,
    "coordinates_mode": "normalized_minus_one_to_one",
    "align_corners": False,
}

# What coremltools' documentation says about running these ops on Apple's Neural Engine (ANE).
# Apple publishes no per-op ANE support table; entries marked "(uncertain)" are widely reported
# behaviour rather than a documented rule. Sources: coremltools guide pages as titled.
ANE_NOTES: dict[str, dict[str, str]] = {
    "precision": {
        "note": "An fp16-typed ML Program is eligible for the Neural Engine, GPU and CPU; an fp32-typed one "
                "executes on the GPU and CPU only. So only the fp16 and int8_dynamic (fp16 compute) packages "
                "can reach the Neural Engine; fp32 is the accuracy fallback.",
        "source": "coremltools guide 'Typed Execution' and its 'Typed Execution Workflow Example' "
                  "(https://apple.github.io/coremltools/docs-guides/source/typed-execution.html, "
                  "https://apple.github.io/coremltools/docs-guides/source/typed-execution-example.html)",
    },
    "shapes": {
        "note": "Static (fixed) input shapes give Core ML the most freedom to place ops on the ANE; "
                "flexible shapes (RangeDim) can keep a model off it. All shapes here are static.",
        "source": "coremltools guide 'Flexible Input Shapes' (https://apple.github.io/coremltools/docs-guides/source/flexible-inputs.html)",
    },
    "resample": {
        "note": "(uncertain) grid_sample-style resampling is not known to run on the ANE; expect Core ML "
                "to place it on the GPU or CPU, splitting the frame graph into ANE/GPU segments. Check "
                "with Xcode's Core ML performance report or MLComputePlan on a device.",
        "source": "no Apple document lists per-op ANE support; coremltools 'MLModel Utilities' documents "
                  "MLComputePlan for checking (https://apple.github.io/coremltools/docs-guides/source/mlmodel-utilities.html)",
    },
    "reshape/transpose": {
        "note": "(uncertain) Many reshapes/transposes between channel-first and channels-last layouts cost "
                "memory copies on the ANE; Apple's ANE transformer write-up recommends a (B, C, 1, S) "
                "layout and avoiding such reshapes.",
        "source": "Apple Machine Learning Research, 'Deploying Transformers on the Apple Neural Engine' (2022)",
    },
    "int8 weights": {
        "note": "Weight-only int8 (constexpr_affine_dequantize) shrinks the file; on iOS16 weights are "
                "decompressed at load time (no speed-up); from iOS17 the ANE can use 8-bit weights with "
                "lower memory traffic.",
        "source": "coremltools guide 'Optimizing Models: Overview / Quantization' "
                  "(https://apple.github.io/coremltools/docs-guides/source/opt-quantization-overview.html)",
    },
}


def deployment_target():
    import coremltools as ct

    return getattr(ct.target, DEPLOYMENT_TARGET_NAME)


# torch.export ATen ops that coremltools 9.0's torch frontend does not know, rewritten into ones
# it does (same values). Found converting the identity graph (the enhancer's masks and views).
def _decompositions() -> dict:
    aten = torch.ops.aten
    return {
        aten.__and__.Tensor: lambda a, b: aten.logical_and.default(a, b),
        aten.alias.default: lambda x: aten.view.default(x, list(x.shape)),
    }


@dataclass
class CoremlFloat:
    """What `convert_float` returns: the graph's exported program (every precision converts from
    it without re-running torch.export) and notes on how it was made."""

    program: object  # torch.export.ExportedProgram
    input_names: list[str]
    output_names: list[str]
    notes: list[str] = field(default_factory=list)


class CoremlTarget(Target):
    """Core ML ML Program packages (.mlpackage), run by Core ML on Apple devices (macOS here);
    elsewhere their MIL program is evaluated on the host (runtime_bench.coreml_runner)."""

    name = "coreml"
    extension = ".mlpackage"
    runtime = "coreml"
    precisions = PRECISIONS
    # The identity graph converts too (tests/export/test_coreml.py), but off macOS its package can
    # only be checked by the numpy MIL evaluator, minutes per sample at the paper size: a bundle
    # ships the frame graphs, each checked.
    graphs = ("frame", "baked_frame", "split_frame")
    limitations = {
        "identity graph": "not in bundles: it converts (tested on a small model), but its only check off macOS, the "
                          "host MIL evaluation, takes minutes per sample at the paper size (~350 GMAC with the enhancer)",
        "int8": "no calibrated static int8: Core ML's int8 is weights-only here (int8_dynamic); activation "
                "quantization (linear_quantize_activations) is not used",
        "dynamic shapes": "static shapes only (those of the contract)",
        "prediction off macOS": "Core ML runs only on Apple systems; elsewhere the saved MIL program is "
                                "evaluated with numpy (checks conversion and serialisation, not the Core ML runtime)",
    }

    def convert_float(self, graph, example_inputs):
        with converting(f"torch.export of the {graph.name} graph for Core ML"):
            return convert_float(graph, example_inputs)

    def warp_of(self, graph):
        return "native resample" if hasattr(graph, "warp_kind") else None

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None) -> ArtifactNotes:
        if precision not in PRECISIONS:
            raise ExportError(f"the Core ML target has no precision {precision!r} (has {', '.join(PRECISIONS)})")
        if float_model is None:
            float_model = self.convert_float(graph, example_inputs)
        with converting(f"Core ML {precision} conversion of the {graph.name} graph"):
            return export_coreml(graph, float_model, precision, Path(path))


def convert_float(graph: torch.nn.Module, example_inputs: dict[str, torch.Tensor]) -> CoremlFloat:
    if not example_inputs:
        raise ExportError("example_inputs is empty")
    contract = [t.name for t in graph.input_spec()]
    if list(example_inputs) != contract:
        raise ExportError(f"example_inputs are {list(example_inputs)}, the {graph.name} graph takes {contract}")
    t0 = time.perf_counter()
    args = tuple(example_inputs[n].detach().contiguous() for n in contract)
    # exported from a copy: the program then shares no storage with the caller's module
    program = torch.export.export(copy.deepcopy(graph).eval(), args).run_decompositions(_decompositions())
    n_nodes = sum(1 for n in program.graph.nodes if n.op == "call_function")
    return CoremlFloat(program, contract, output_names(graph),
                       [f"torch.export + run_decompositions: {n_nodes} ATen nodes in {time.perf_counter() - t0:.1f} s"])


def _convert(graph, float_model: CoremlFloat, precision: str):
    import coremltools as ct

    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    specs = {t.name: t for t in graph.input_spec()}
    # A fresh copy per conversion: coremltools 9.0 writes into the program's constants (it negated
    # BatchNorm running means in place, which also changed the torch module's buffers, since
    # torch.export shares their storage) so a program converted once must not be converted again.
    return ct.convert(
        copy.deepcopy(float_model.program),
        convert_to="mlprogram",
        minimum_deployment_target=deployment_target(),
        compute_precision=compute,
        inputs=[ct.TensorType(name=n, shape=tuple(specs[n].shape), dtype=np.float32) for n in float_model.input_names],
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in float_model.output_names],
    )


def quantize_weights_int8(mlmodel):
    """Per-channel symmetric int8 weights of `INT8_WEIGHT_OPS` only."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    op = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                 weight_threshold=0)
    config = OptimizationConfig(global_config=None, op_type_configs={t: op for t in INT8_WEIGHT_OPS})
    return linear_quantize_weights(mlmodel, config)


def export_coreml(graph, float_model: CoremlFloat, precision: str, path: Path) -> ArtifactNotes:
    """Convert, save atomically, check the saved program; notes for the manifest."""
    import logging

    notes = list(float_model.notes)
    t0 = time.perf_counter()
    previous = logging.getLogger("coremltools").level
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        mlmodel = _convert(graph, float_model, precision)
        notes.append(f"coremltools.convert (mlprogram, {DEPLOYMENT_TARGET_NAME}, compute precision "
                     f"{'FLOAT32' if precision == 'fp32' else 'FLOAT16'}) in {time.perf_counter() - t0:.1f} s")
        if precision == "int8_dynamic":
            t1 = time.perf_counter()
            mlmodel = quantize_weights_int8(mlmodel)
            notes.append(f"int8_dynamic: weights-only int8 (linear_quantize_weights, per-channel symmetric) of "
                         f"{list(INT8_WEIGHT_OPS)} weights in {time.perf_counter() - t1:.1f} s; activations stay fp16; "
                         "Core ML dequantizes at load (iOS16) or uses the int8 weights on the Neural Engine (iOS17+); "
                         "the warp's identity grid and baked texture stay fp16")
    finally:
        logging.getLogger("coremltools").setLevel(previous)
    save_package(mlmodel, path, expected_inputs=float_model.input_names, expected_outputs=float_model.output_names)
    info = describe_package(path)
    resamples = info["resample"]
    notes.append(f"deployment target {DEPLOYMENT_TARGET_NAME} (spec version {info['spec_version']}, opset {info['opset']})")
    notes.append(f"op histogram (main): {json.dumps(info['ops'], sort_keys=True)}")
    notes.append(f"compute dtypes of non-const ops: {json.dumps(info['op_precisions'], sort_keys=True)}")
    notes.append(f"{len(resamples)} resample op(s), convention " +
                 ("; ".join(json.dumps(r, sort_keys=True) for r in resamples) if resamples else "n/a"))
    float_ops = {k: v for k, v in info["float_ops"].items()} if precision == "int8_dynamic" else None
    eligible = "GPU, CPU" if precision == "fp32" else "Neural Engine, GPU, CPU"
    accelerator = {"backend": "Core ML", "deployment_target": info["deployment_target"], "ops": info["ops"],
                   "op_precisions": info["op_precisions"], "resample": resamples,
                   "compute_units_eligible": eligible, "ane_notes": ANE_NOTES}
    return ArtifactNotes(float_ops, notes, accelerator=accelerator)


def save_package(mlmodel, path: Path, expected_inputs: list[str], expected_outputs: list[str]) -> None:
    """Save `mlmodel` to `path` (a .mlpackage directory) through a temporary sibling directory,
    check the saved package, then rename it into place (replacing an older one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        staged = tmp / path.name
        mlmodel.save(str(staged))
        check_package(staged, expected_inputs, expected_outputs)
        if path.exists():
            old = tmp / (path.name + ".old")
            os.replace(path, old)  # moved aside first: the rename below then never meets a directory
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_package(path: Path, expected_inputs: list[str], expected_outputs: list[str]) -> None:
    """The saved package loads (without compiling), has the contract's boundary (names, float32)
    and its resample ops have the reference's convention."""
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    got_in = [i.name for i in spec.description.input]
    got_out = [o.name for o in spec.description.output]
    if got_in != list(expected_inputs) or got_out != list(expected_outputs):
        raise ConversionError(f"the package's boundary is {got_in} -> {got_out}, the contract {expected_inputs} -> "
                              f"{expected_outputs}")
    for t in list(spec.description.input) + list(spec.description.output):
        if t.type.WhichOneof("Type") != "multiArrayType" or t.type.multiArrayType.dataType != \
                ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            raise ConversionError(f"package tensor {t.name!r} is not a float32 MultiArray: {t.type}")
    problems = [f"resample {r['name']}: {k} is {r.get(k)!r}, the reference's is {v!r}"
                for r in resample_conventions(spec) for k, v in RESAMPLE_CONVENTION.items() if r.get(k) != v]
    if problems:
        raise ConversionError("the warp would not sample like the reference: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------
# Reading a saved package's program (protobuf) without the converter
# ------------------------------------------------------------------------------------------------
def _main_block(spec):
    fn = spec.mlProgram.functions["main"]
    return fn, fn.block_specializations[fn.opset]


def _immediate_scalar(value):
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes":
        dt = value.type.tensorType.dataType
        np_dtype = {10: np.float16, 11: np.float32, 21: np.int8, 31: np.uint8}.get(dt)
        vals = np.frombuffer(tensor.bytes.values, np_dtype) if np_dtype else []
        return float(vals[0]) if len(vals) == 1 else None
    vals = list(getattr(tensor, kind).values)
    if len(vals) != 1:
        return None
    v = vals[0]
    return float(v) if kind in ("floats", "doubles") else v


def resample_conventions(spec) -> list[dict]:
    """Each `resample` op of the main function with its constant arguments, as saved."""
    _, block = _main_block(spec)
    consts = {}
    for op in block.operations:
        if op.type == "const" and "val" in op.attributes and op.attributes["val"].WhichOneof("value") == "immediateValue":
            consts[op.outputs[0].name] = _immediate_scalar(op.attributes["val"])
    found = []
    for op in block.operations:
        if op.type != "resample":
            continue
        entry = {"name": op.outputs[0].name}
        for key in RESAMPLE_CONVENTION:
            if key not in op.inputs:
                continue
            arg = op.inputs[key].arguments[0]
            value = consts.get(arg.name) if arg.WhichOneof("binding") == "name" else _immediate_scalar(arg.value)
            entry[key] = bool(value) if key == "align_corners" and value is not None else value
        found.append(entry)
    return found


_DTYPE_NAMES = {1: "bool", 10: "fp16", 11: "fp32", 12: "fp64", 21: "int8", 22: "int16", 23: "int32", 24: "int64",
                31: "uint8", 32: "uint16"}
_DTYPE_BYTES = {1: 1, 10: 2, 11: 4, 12: 8, 21: 1, 22: 2, 23: 4, 24: 8, 31: 1, 32: 2}


def describe_package(path: Path | str) -> dict:
    """What a saved .mlpackage holds: boundary (names, shapes, dtypes from the spec), spec version
    and deployment target, op histogram of the main function, the dtypes ops compute in, the
    resample ops' convention and the weights' sizes."""
    import coremltools as ct

    path = Path(path)
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def tensor(t):
        a = t.type.multiArrayType
        return {"name": t.name, "shape": [int(s) for s in a.shape],
                "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(a.dataType).lower()}

    fn, block = _main_block(spec)
    ops: Counter[str] = Counter()
    precisions: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for op in block.operations:
        ops[op.type] += 1
        out_dtype = op.outputs[0].type.tensorType.dataType if op.outputs else 0
        if op.type == "const" or op.type.startswith("constexpr_"):
            for attr in op.attributes.values():
                if attr.WhichOneof("value") == "blobFileValue":
                    t = attr.type.tensorType
                    n = int(np.prod([d.constant.size for d in t.dimensions])) if t.rank else 1
                    weights[_DTYPE_NAMES.get(t.dataType, str(t.dataType))] += n * _DTYPE_BYTES.get(t.dataType, 0)
            continue
        precisions[_DTYPE_NAMES.get(out_dtype, str(out_dtype))] += 1
        if out_dtype in (10, 11) and op.type not in ("cast", "reshape", "transpose", "expand_dims", "slice_by_index"):
            float_ops[op.type] += 1
    weight_file = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return {
        "inputs": [tensor(t) for t in spec.description.input],
        "outputs": [tensor(t) for t in spec.description.output],
        "spec_version": int(spec.specificationVersion),
        "opset": str(fn.opset),
        "deployment_target": {7: "iOS16", 6: "iOS15", 8: "iOS17", 9: "iOS18"}.get(int(spec.specificationVersion),
                                                                              f"spec {spec.specificationVersion}"),
        "ops": dict(sorted(ops.items())),
        "op_precisions": dict(sorted(precisions.items())),
        "float_ops": dict(sorted(float_ops.items())),
        "resample": resample_conventions(spec),
        "weight_bytes_by_dtype": dict(sorted(weights.items())),
        "weight_file_bytes": weight_file.stat().st_size if weight_file.is_file() else 0,
    }
