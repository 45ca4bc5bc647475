"""Localise where a quantized artifact diverges from its float model, tensor by tensor.

    loc = localize_divergence("onnxruntime", Path("frame_fp32.onnx"), Path("frame_int8.onnx"), feed)
    loc.first_jump   # TensorDrift(name='grid_sampler', op_type='GridSample', position=186, psnr_db=23.6, ...)

Both models run on the same feed with every intermediate float tensor observable, and every
tensor present in both models (matched by name) is compared with `runtime_bench.compare.psnr_db`
(peak = the float tensor's range), in the float model's execution order.

How tensors are observed and matched
- ONNX (onnxruntime, CPU provider): a copy of each ModelProto gets every float node output as an
  extra graph output. In a QDQ model (onnxruntime `quantize_static`, QuantFormat.QDQ) the original
  producer keeps its node name and its float output name `X`; the value its consumers see is the
  output of the `QuantizeLinear(X) -> DequantizeLinear` pair that follows it, named
  `X_DequantizeLinear_Output`. For a graph output the roles swap: the producer's output becomes
  `X_QuantizeLinear_Input` and the DequantizeLinear output keeps the name `X`. The comparison uses
  the value consumers see: `X` itself when no Q/DQ pair follows it (graph outputs included), else
  the DequantizeLinear output. A float tensor whose name is gone from the quantized model is
  matched through its producer (same node name, same output slot) when that node survived;
  otherwise it is left out (counted in `note`).
- TFLite (LiteRT interpreter, signature runner, builtin kernels *without* the XNNPACK delegate:
  a delegated subgraph hides its intermediates): `experimental_preserve_all_tensors=True`, every
  tensor read with `get_tensor` by index. ai-edge-quantizer keeps the float model's tensor names
  (litert-torch names them after the module path, `...FrameGraph_module;123`); an int8/int16
  tensor is dequantized with its scale / zero point (per channel when it has several). Names that
  occur more than once in a model cannot be matched and are left out (counted in `note`).
  Position = the op's index in the float model's execution plan.

The rule (what `first_jump` is)
PSNR against the tensor's own range drops for two reasons: error is *added or amplified* (a
quantized op, a sampler reading quantized coordinates, cancellation), or the range shrinks while
the error is only carried along (a slice of a wider tensor, tanh / sigmoid squashing their
input). Only the first is a jump. So, walking the float model's execution order:

- level(t) = min(PSNR(t), `cap_db`) with cap_db = 60 dB (just above an ideal int8 rounding of a
  uniform tensor, 58.9 dB, and well below float32 reordering noise, > 80 dB): identical and
  merely re-rounded tensors count as "clean";
- ref(t) = the lowest level among the producing op's data inputs that were compared (graph inputs
  included), or cap_db when none was (constants, integer index tensors);
- t is a jump when its op computes values (not a layout / data-movement op such as Reshape, Slice,
  Gather, Concat, Resize, and not a range-squashing activation such as Tanh, Sigmoid, (Leaky)Relu),
  **and** PSNR(t) < ref(t) - `jump_db` (the op itself lost more than jump_db), **and**
  PSNR(t) < `floor_db` (default 30 dB, the int8 gate; `validate` passes the failing precision's
  gate). The floor is what separates a fault from ordinary quantization: a clean input becoming a
  40-55 dB int8 tensor is what int8 does at every layer (measured: LiteRT's int8 first
  FULLY_CONNECTED of the keypoint embedder goes from 58 to 36 dB in both the mixed and the full
  recipe, and the image still passes with the mixed one), whereas a tensor that falls under the
  gate in one op is where the failure is made.
- `first_jump` is the first such tensor, or None. `note` also names the computing op with the
  largest drop, the jump's inputs and their PSNR (for a sampler: is it the grid or the texture?).

A slow, gradual decline (errors accumulating over a conv stack) has no jump by this rule; the
drifts list still shows it. The localisation run is not byte-identical to the artifact's normal
run (ONNX: exposing intermediates stops some QDQ fusions; TFLite: no XNNPACK), so `note` states
the final outputs' PSNR in the localisation run, which should reproduce the failure.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .compare import THRESHOLDS_DB, psnr_db
from .litert_runner import tensor_info
from .onnxruntime_runner import ort_session
from .runner import dequantize, quantize

CAP_DB = 60.0
FLOOR_DB = THRESHOLDS_DB["int8"]  # validate passes the failing precision's own gate
# Op types that move or select values without computing new ones, or that squash their input's
# range (so the range-relative PSNR falls although no error is added). Never reported as a jump.
_ONNX_PASSIVE = {
    "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Concat", "Split", "Flatten", "Expand", "Identity",
    "Gather", "GatherElements", "GatherND", "Resize", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Cast",
    "QuantizeLinear", "DequantizeLinear", "Where", "MaxPool",
    "Tanh", "Sigmoid", "HardSigmoid", "Relu", "LeakyRelu", "Clip", "Elu", "Softmax",
}
_TFLITE_PASSIVE = {
    "RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "PACK", "UNPACK",
    "SPLIT", "SPLIT_V", "GATHER", "GATHER_ND", "RESIZE_NEAREST_NEIGHBOR", "BROADCAST_TO", "TILE", "PAD", "PADV2",
    "CAST", "QUANTIZE", "DEQUANTIZE", "SELECT", "SELECT_V2", "MAX_POOL_2D",
    "TANH", "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "ELU", "HARD_SWISH", "SOFTMAX",
}
_ONNX_BATCH_BYTES = 256 << 20  # intermediate outputs fetched per onnxruntime run (bounded memory)


@dataclass
class TensorDrift:
    name: str  # the float model's tensor name
    op_type: str  # op producing it in the float model ("input" for a graph input)
    position: int  # index of that op in the float model's execution order (-1: graph input)
    psnr_db: float  # quantized vs float, peak = the float tensor's range
    max_abs: float


@dataclass
class Localization:
    runtime: str
    first_jump: TensorDrift | None
    drifts: list[TensorDrift] = field(default_factory=list)
    note: str = ""

    def as_dict(self, max_drifts: int | None = None) -> dict:
        """JSON-friendly (inf PSNR as "inf"); `max_drifts` keeps only the worst drifts."""
        def one(d: TensorDrift) -> dict:
            out = asdict(d)
            out["psnr_db"] = "inf" if math.isinf(d.psnr_db) else round(d.psnr_db, 2)
            return out

        drifts = self.drifts
        if max_drifts is not None:
            drifts = sorted(drifts, key=lambda d: d.psnr_db)[:max_drifts]
        return {"runtime": self.runtime, "first_jump": one(self.first_jump) if self.first_jump else None,
                "drifts": [one(d) for d in drifts], "note": self.note}


# ------------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------------
def _first_jump(drifts: list[TensorDrift], inputs_of: dict[str, list[str]], passive: set[str], jump_db: float,
                floor_db: float, cap_db: float = CAP_DB) -> tuple[TensorDrift | None, float, tuple[TensorDrift, float] | None]:
    """The first drift that satisfies the module docstring's rule and its reference level, plus the
    computing op with the largest drop below its inputs (drift, drop in dB) for the note."""
    level = {d.name: min(d.psnr_db, cap_db) for d in drifts}
    first, first_ref, largest = None, math.nan, None
    for d in drifts:
        if d.op_type in passive or d.op_type == "input":
            continue
        known = [level[i] for i in inputs_of.get(d.name, []) if i in level]
        ref = min(known) if known else cap_db
        drop = ref - min(d.psnr_db, cap_db)
        if largest is None or drop > largest[1]:
            largest = (d, drop)
        if first is None and d.psnr_db < ref - jump_db and d.psnr_db < floor_db:
            first, first_ref = d, ref
    return first, first_ref, largest


def _drift(name: str, op_type: str, position: int, reference: np.ndarray, test: np.ndarray) -> TensorDrift:
    reference = np.asarray(reference, np.float64)
    test = np.asarray(test, np.float64)
    return TensorDrift(name, op_type, position, psnr_db(reference, test),
                       float(np.abs(reference - test).max()) if reference.size else 0.0)


def _summary(jump: TensorDrift | None, ref: float, inputs: list[tuple[str, float]],
             largest: tuple[TensorDrift, float] | None, jump_db: float, floor_db: float) -> str:
    if jump is None:
        text = (f"no jump: no computing op fell more than {jump_db:g} dB below its inputs to under "
                f"{floor_db:g} dB")
    else:
        ins = ", ".join(f"{n} {p:.1f} dB" for n, p in inputs) or "no compared input"
        text = (f"first jump: {jump.name} ({jump.op_type}) at position {jump.position}, {jump.psnr_db:.1f} dB "
                f"from inputs at {ref:.1f} dB ({ins})")
    if largest is not None and largest[1] > 0:
        d, drop = largest
        text += f"; largest drop: {d.name} ({d.op_type}) at position {d.position}, -{drop:.1f} dB to {d.psnr_db:.1f} dB"
    return text


def localize_divergence(runtime: str, float_model: Path, quantized_model: Path, feed: dict[str, np.ndarray],
                        jump_db: float = 10.0, floor_db: float = FLOOR_DB) -> Localization:
    """Compare every tensor shared by `float_model` and `quantized_model` on one `feed`.

    `runtime` is "onnxruntime" or "litert" (`runtime_bench.runners`); `feed` maps every graph input name to one sample (float32,
    the contract's shapes). See the module docstring for the matching and the jump rule;
    `floor_db` is best set to the failing precision's gate (`compare.THRESHOLDS_DB`).
    """
    feed = {k: np.asarray(v, np.float32) for k, v in feed.items()}
    if runtime == "onnxruntime":
        return _localize_onnx(Path(float_model), Path(quantized_model), feed, jump_db, floor_db)
    if runtime == "litert":
        return _localize_tflite(Path(float_model), Path(quantized_model), feed, jump_db, floor_db)
    return Localization(runtime, None, [], f"no per-tensor localisation for runtime {runtime!r}")


def _final_outputs_note(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    parts = [f"{n} {psnr_db(f, q):.1f} dB" for n, (f, q) in outputs.items()]
    return "outputs in the localisation run: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def _onnx_session(model, extra: list[str]):
    """A session of `model` that also returns the tensors named in `extra`."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in extra:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return ort_session(copy.SerializeToString())


def _onnx_float_tensors(model) -> dict[str, tuple[int, int]]:
    """Tensor name -> (ONNX element type, element count or 0 when unknown), by shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    info = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim] if t.HasField("shape") else [0]
        info[v.name] = (t.elem_type, int(np.prod(dims)) if all(dims) else 0)
    return info


def _localize_onnx(float_path: Path, quant_path: Path, feed: dict[str, np.ndarray], jump_db: float,
                    floor_db: float) -> Localization:
    import onnx

    fmodel, qmodel = onnx.load(float_path), onnx.load(quant_path)
    finfo = _onnx_float_tensors(fmodel)
    is_float = lambda n: finfo.get(n, (0, 0))[0] == onnx.TensorProto.FLOAT

    # the float model's tensors in execution (topological) order: graph inputs, then node outputs
    order: list[tuple[str, str, int]] = [(i.name, "input", -1) for i in fmodel.graph.input if is_float(i.name)]
    inputs_of: dict[str, list[str]] = {}
    fproducer = {}
    for k, node in enumerate(fmodel.graph.node):
        for slot, out in enumerate(node.output):
            if out and is_float(out):
                order.append((out, node.op_type, k))
                inputs_of[out] = [i for i in node.input if i]
                fproducer[out] = (node.name, slot)

    # where each float tensor's value lives in the quantized model (the view its consumers see)
    qnames = {o for n in qmodel.graph.node for o in n.output} | {i.name for i in qmodel.graph.input}
    consumers: dict[str, list] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qnodes = {n.name: n for n in qmodel.graph.node if n.name}

    def consumer_view(name: str) -> str:
        for q in consumers.get(name, []):
            if q.op_type == "QuantizeLinear":
                for d in consumers.get(q.output[0], []):
                    if d.op_type == "DequantizeLinear":
                        return d.output[0]
        return name

    qview: dict[str, str] = {}
    renamed = 0
    for name, _, _ in order:
        if name in qnames:
            qview[name] = consumer_view(name)
        elif name in fproducer and fproducer[name][0] in qnodes:
            node_name, slot = fproducer[name]
            qnode = qnodes[node_name]
            if slot < len(qnode.output) and qnode.output[slot]:
                out = qnode.output[slot]
                # a graph output's producer writes X_QuantizeLinear_Input; its DQ output is X
                qview[name] = consumer_view(out)
                renamed += 1
    matched = [t for t in order if t[0] in qview]
    unmatched = len(order) - len(matched)

    fsess = _onnx_session(fmodel, [n for n, _, _ in matched])
    qsess = _onnx_session(qmodel, sorted({qview[n] for n, _, _ in matched}))
    f_available = {o.name for o in fsess.get_outputs()}
    q_available = {o.name for o in qsess.get_outputs()}
    f_inputs = {i.name: feed[i.name] for i in fsess.get_inputs()}
    q_inputs = {i.name: feed[i.name] for i in qsess.get_inputs()}

    # fetch in batches of bounded size (a paper-size frame graph has GBs of intermediates)
    drifts: list[TensorDrift] = []
    batch: list[tuple[str, str, int]] = []
    size = 0
    skipped_shape = 0

    def flush():
        nonlocal batch, size, skipped_shape
        if not batch:
            return
        fnames = [n for n, _, _ in batch if n in feed or n in f_available]
        fvals = dict(zip([n for n in fnames if n not in feed],
                         fsess.run([n for n in fnames if n not in feed], f_inputs))) if any(n not in feed for n in fnames) else {}
        fvals.update({n: feed[n] for n in fnames if n in feed})
        qn = sorted({qview[n] for n, _, _ in batch if qview[n] in q_available and qview[n] not in feed})
        qvals = dict(zip(qn, qsess.run(qn, q_inputs))) if qn else {}
        qvals.update({qview[n]: feed[qview[n]] for n, _, _ in batch if qview[n] in feed})
        for name, op, pos in batch:
            if name not in fvals or qview[name] not in qvals:
                continue
            f, q = fvals[name], qvals[qview[name]]
            if np.shape(f) != np.shape(q) or not np.issubdtype(np.asarray(q).dtype, np.floating):
                skipped_shape += 1
                continue
            drifts.append(_drift(name, op, pos, f, q))
        batch, size = [], 0

    for item in matched:
        batch.append(item)
        size += 4 * (finfo.get(item[0], (0, 0))[1] or (1 << 22))
        if size >= _ONNX_BATCH_BYTES:
            flush()
    flush()

    # the final outputs of the instrumented run, and whether the plain artifact agrees with it
    out_names = [o.name for o in fmodel.graph.output if o.name in qview]
    f_out = dict(zip(out_names, fsess.run(out_names, f_inputs)))
    q_out = dict(zip(out_names, qsess.run([qview[n] for n in out_names], q_inputs)))
    plain = _onnx_session(qmodel, [])
    plain_out = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, q_inputs)))
    agree = [f"{n} {psnr_db(plain_out[n], q_out[n]):.0f} dB" for n in out_names if n in plain_out]

    jump, ref, largest = _first_jump(drifts, inputs_of, _ONNX_PASSIVE, jump_db, floor_db)
    jump_inputs = [(d.name, d.psnr_db) for d in drifts if jump and d.name in inputs_of.get(jump.name, [])]
    note = "; ".join([
        _summary(jump, ref, jump_inputs, largest, jump_db, floor_db),
        f"{len(drifts)} of {len(order)} float tensors compared ({renamed} matched through their producer node, "
        f"{unmatched} absent from the quantized model, {skipped_shape} of another shape/type)",
        _final_outputs_note({n: (f_out[n], q_out[n]) for n in out_names}),
        "instrumented vs plain quantized run: " + ", ".join(agree),
    ])
    return Localization("onnxruntime", jump, drifts, note)


# ------------------------------------------------------------------------------------------------
# TFLite / LiteRT
# ------------------------------------------------------------------------------------------------
def _tflite_interpreter(path: Path, feed: dict[str, np.ndarray]):
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    signatures = interpreter.get_signature_list()
    if not signatures:
        raise ValueError(f"{path} has no signature; export it with export.tflite")
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    prepared = {}
    for name, detail in runner.get_input_details().items():
        info = tensor_info(name, detail)
        value = np.asarray(feed[name], np.float32)
        prepared[name] = quantize(value, info) if info.quantized else np.ascontiguousarray(value, dtype=info.dtype)
    outputs = runner(**prepared)
    output_tensors = {n: d["index"] for n, d in runner.get_output_details().items()}
    return interpreter, outputs, output_tensors


def _tflite_value(interpreter, detail: dict) -> np.ndarray | None:
    """A tensor's value as float (dequantized), or None when it is not a real-valued tensor."""
    try:
        value = interpreter.get_tensor(detail["index"])
    except ValueError:
        return None  # not allocated (e.g. a constant folded away)
    info = tensor_info("", detail)
    if np.issubdtype(info.dtype, np.floating):
        return value.astype(np.float32)
    if info.dtype not in (np.int8, np.uint8, np.int16) or not info.quantized:
        return None
    return dequantize(value, info)


def _localize_tflite(float_path: Path, quant_path: Path, feed: dict[str, np.ndarray], jump_db: float,
                    floor_db: float) -> Localization:
    from collections import Counter

    f_interp, f_out, f_out_idx = _tflite_interpreter(float_path, feed)
    q_interp, q_out, q_out_idx = _tflite_interpreter(quant_path, feed)
    f_details, q_details = f_interp.get_tensor_details(), q_interp.get_tensor_details()
    f_count = Counter(d["name"] for d in f_details)
    q_count = Counter(d["name"] for d in q_details)
    q_by_name = {d["name"]: d for d in q_details if q_count[d["name"]] == 1}
    ops = f_interp._get_ops_details()  # execution order of the float model's main subgraph

    # float tensors in execution order: graph inputs, then every op's outputs
    order: list[tuple[int, str, int]] = []
    inputs_of: dict[str, list[str]] = {}
    input_indices = [d["index"] for d in f_interp.get_input_details()]
    for index in input_indices:
        order.append((index, "input", -1))
    for op in ops:
        for index in op["outputs"]:
            if index >= 0:
                order.append((index, op["op_name"], op["index"]))
                inputs_of[f_details[index]["name"]] = [f_details[i]["name"] for i in op["inputs"] if i >= 0]

    drifts: list[TensorDrift] = []
    duplicated = absent = other = 0
    for index, op_type, position in order:
        detail = f_details[index]
        if not np.issubdtype(np.dtype(detail["dtype"]), np.floating):
            continue
        name = detail["name"]
        if f_count[name] > 1 or q_count.get(name, 0) > 1:
            duplicated += 1
            continue
        if name not in q_by_name:
            absent += 1
            continue
        f = _tflite_value(f_interp, detail)
        q = _tflite_value(q_interp, q_by_name[name])
        if f is None or q is None or f.shape != q.shape:
            other += 1
            continue
        drifts.append(_drift(name, op_type, position, f, q))

    jump, ref, largest = _first_jump(drifts, inputs_of, _TFLITE_PASSIVE, jump_db, floor_db)
    jump_inputs = [(d.name, d.psnr_db) for d in drifts if jump and d.name in inputs_of.get(jump.name, [])]
    finals = {}
    for n in f_out:
        if n in q_out:
            fq = q_out[n]
            if np.issubdtype(fq.dtype, np.integer):
                fq = _tflite_value(q_interp, q_details[q_out_idx[n]])
            finals[n] = (f_out[n], fq)
    note = "; ".join([
        _summary(jump, ref, jump_inputs, largest, jump_db, floor_db),
        f"{len(drifts)} float tensors compared by name ({duplicated} left out: name not unique, "
        f"{absent} absent from the quantized model, {other} unreadable or of another shape)",
        _final_outputs_note(finals) + " (builtin kernels, no XNNPACK)",
    ])
    return Localization("litert", jump, drifts, note)
