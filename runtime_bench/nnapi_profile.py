"""Would the TFLite NNAPI delegate take a .tflite model whole? A rule table, checked on the file.

NNAPI (Android's Neural Networks API) is what older Android apps reach a phone's accelerators
through; it is deprecated since Android 15, and LiteRT's GPU and NPU accelerators replace it.
Its delegate decides per op, from the op's type, version, tensor types, ranks and which inputs
are constant, and from the device's NNAPI feature level. This module holds those decisions as
data (`RULES`, one `NnapiRule` per op type, each naming where in the delegate's source the rule
lives) and applies them to a model's flatbuffer (`nnapi_verdict`): which ops the delegate would
take, why it would refuse the others, how many partitions the accepted ops form, and the lowest
feature level that takes all of them.

This is a static check against the rules as the delegate's source states them, not a run of the
delegate (that needs an Android device); reports label it so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

# NNAPI feature levels and the Android releases that introduced them (the delegate's
# nnapi_delegate_kernel.h: API levels 27-31 are feature levels 1-5, later ones are named 6-8).
FEATURE_LEVELS = {1: "Android 8.1 (API 27)", 2: "Android 9 (API 28)", 3: "Android 10 (API 29)",
                  4: "Android 11 (API 30)", 5: "Android 12 (API 31)", 6: "Android 13 (feature level 6)",
                  7: "Android 14 (feature level 7)", 8: "Android 15 (feature level 8)"}

FLOAT_OR_QUANT8 = ("FLOAT32", "UINT8", "INT8")
ANY = ("FLOAT32", "UINT8", "INT8", "INT32")


@dataclass(frozen=True)
class NnapiRule:
    """When the NNAPI delegate takes one TFLite op type."""

    op: str
    min_feature_level: int  # the lowest NNAPI feature level that has the operation
    max_version: int  # the highest TFLite op version the delegate accepts
    input_types: tuple[str, ...]  # accepted types of the op's first input
    source: str  # where the rule lives in the delegate's source
    max_rank: int = 4  # of every non-constant input
    constant_inputs: tuple[int, ...] = ()  # inputs that must be constants
    type_levels: tuple[tuple[str, int], ...] = ()  # input types that need a later feature level
    note: str = ""

    def feature_level(self, input_type: str | None) -> int:
        """The lowest feature level that takes the op with this first-input type."""
        return max([self.min_feature_level] + [lvl for t, lvl in self.type_levels if t == input_type])


@dataclass
class OpOperands:
    """What the rules look at for one op of a model."""

    index: int
    op: str
    version: int
    input_types: list[str]
    input_ranks: list[int]
    constant: list[bool]
    inputs: list[int]
    outputs: list[int]
    output_names: list[str]


def model_operands(path: Path | str) -> list[OpOperands]:
    """The main subgraph's ops in execution order with their inputs' types, ranks and constness."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)}
    graph = model.subgraphs[0]

    def is_constant(tensor) -> bool:
        buffer = model.buffers[tensor.buffer]
        return (buffer.data is not None and len(buffer.data) > 0) or int(getattr(buffer, "offset", 0) or 0) > 1

    result = []
    for k, op in enumerate(graph.operators):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = op_names.get(builtin, f"OP_{builtin}")
        if name == "CUSTOM" and code.customCode:
            name = f"CUSTOM:{code.customCode.decode()}"
        inputs = [i for i in op.inputs if i >= 0]
        outputs = [i for i in op.outputs if i >= 0]
        tensors = [graph.tensors[i] for i in inputs]
        result.append(OpOperands(k, name, int(code.version), [type_names.get(t.type, str(t.type)) for t in tensors],
                                 [0 if t.shape is None else len(t.shape) for t in tensors],
                                 [is_constant(t) for t in tensors], inputs, outputs,
                                 [graph.tensors[i].name.decode() for i in outputs]))
    return result


def refusal(op: OpOperands, rules: dict[str, NnapiRule]) -> str | None:
    """Why the delegate would not take `op` (None: it would)."""
    rule = rules.get(op.op)
    if op.op in UNMAPPED:
        return f"{op.op}: NNAPI has no such operation (no case in the delegate's Validate)"
    if rule is None:
        return f"{op.op}: not in this rule table (counted as refused until a rule is added)"
    if op.version > rule.max_version:
        return f"{op.op} v{op.version}: the delegate takes versions <= {rule.max_version}"
    if op.input_types and op.input_types[0] not in rule.input_types:
        return f"{op.op}: input type {op.input_types[0]} (takes {', '.join(rule.input_types)})"
    for i in rule.constant_inputs:
        if i < len(op.constant) and not op.constant[i]:
            return f"{op.op}: input {i} must be a constant"
    for rank, constant in zip(op.input_ranks, op.constant):
        if not constant and rank > rule.max_rank:
            return f"{op.op}: an input of rank {rank} (takes rank <= {rule.max_rank})"
    return None


def connected_sets(ops: list[tuple[list[int], list[int]]], members: list[int]) -> int:
    """How many connected sets (through tensors) the ops `members` form, ops given as (input
    tensor ids, output tensor ids): the fewest partitions a delegate could run them in."""
    parent = {i: i for i in members}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer = {t: i for i in members for t in ops[i][1]}
    for i in members:
        for t in ops[i][0]:
            if t in producer:
                parent[root(i)] = root(producer[t])
    return len({root(i) for i in members})


def nnapi_verdict(path: Path | str, rules: dict[str, NnapiRule] | None = None) -> dict:
    """The rule table's verdict on a .tflite file (`verdict_of` its `model_operands`)."""
    return verdict_of(model_operands(path), rules)


def verdict_of(ops: list[OpOperands], rules: dict[str, NnapiRule] | None = None) -> dict:
    """The rule table's verdict on a model's ops: ops taken and refused (with reasons), the
    delegable share, partitions, and the lowest NNAPI feature level that takes every accepted op."""
    rules = RULES if rules is None else rules
    refused = [(op, why) for op in ops if (why := refusal(op, rules)) is not None]
    refused_index = {op.index for op, _ in refused}
    accepted = [op.index for op in ops if op.index not in refused_index]
    level = max((rules[ops[i].op].feature_level(ops[i].input_types[0] if ops[i].input_types else None)
                 for i in accepted), default=None)
    return {"ops": len(ops), "delegable_ops": len(accepted),
            "delegable_percent": round(100.0 * len(accepted) / len(ops), 1) if ops else 100.0,
            "whole": not refused, "partitions": connected_sets([(op.inputs, op.outputs) for op in ops], accepted),
            "min_feature_level": level, "min_android": FEATURE_LEVELS.get(level) if level else None,
            "refused": [{"index": op.index, "op": op.op, "reason": why} for op, why in refused],
            "checked": "static rule table (runtime_bench/nnapi_profile.py); the NNAPI delegate was not run"}


def rule_table() -> list[dict]:
    """The rules as rows (for the docs and reports)."""
    return [asdict(r) for r in RULES.values()]


_SOURCE = "tflite/delegates/nnapi/nnapi_delegate.cc, NNAPIDelegateKernel::Validate"


def _rule(op, level, max_version, types, **kw) -> NnapiRule:
    return NnapiRule(op, level, max_version, types, f"{_SOURCE}, case kTfLiteBuiltin{kw.pop('case')}", **kw)


# The delegate's rules for the ops this project's graphs contain, as LiteRT's copy of the delegate
# (google-ai-edge/LiteRT, commit f67457790c9c) states them. Conditions the table cannot express
# (fused activations, per-channel or hybrid quantization, the driver's own filtering) are notes.
# Ops the delegate never takes: no case in Validate and no NNAPI operation.
UNMAPPED = frozenset({"GATHER_ND", "BROADCAST_TO"})

RULES: dict[str, NnapiRule] = {r.op: r for r in (
    _rule("ADD", 1, 2, ANY, case="Add", type_levels=(("INT32", 4),), note="int32 without a fused activation"),
    _rule("SUB", 2, 3, ANY, case="Sub", type_levels=(("UINT8", 3), ("INT8", 3), ("INT32", 4))),
    _rule("MUL", 1, 3, ANY, case="Mul", type_levels=(("INT32", 4),),
          note="version 3 only when the delegate targets named devices (the default from API 29)"),
    _rule("CONV_2D", 1, 5, FLOAT_OR_QUANT8, case="Conv2d",
          note="grouped, dilated, per-channel and hybrid convolutions need feature level 3"),
    _rule("FULLY_CONNECTED", 1, 5, FLOAT_OR_QUANT8, case="FullyConnected",
          note="version 6 (no bias input) is refused; keep_num_dims needs feature level 4"),
    _rule("BATCH_MATMUL", 6, 2, ("FLOAT32", "INT8", "INT32"), case="BatchMatmul",
          note="both inputs of one type, rank 2-4, no broadcasting; only through the delegate's "
               "target-device path"),
    _rule("RESHAPE", 1, 1, ("FLOAT32", "UINT8", "INT8", "INT32"), case="Reshape", constant_inputs=(1,),
          type_levels=(("INT32", 6),), note="no reshape to a scalar"),
    _rule("TRANSPOSE", 2, 2, ANY, case="Transpose", constant_inputs=(1,)),
    _rule("SLICE", 3, 2, ANY, case="Slice", note="begin and size int32"),
    _rule("PAD", 2, 2, FLOAT_OR_QUANT8, case="Pad", type_levels=(("UINT8", 3), ("INT8", 3))),
    _rule("RESIZE_NEAREST_NEIGHBOR", 3, 3, FLOAT_OR_QUANT8, case="ResizeNearestNeighbor", constant_inputs=(1,),
          note="align_corners / half_pixel_centers need feature level 4"),
    _rule("LEAKY_RELU", 3, 1, FLOAT_OR_QUANT8, case="LeakyRelu", note="lowered to NNAPI PRELU"),
    _rule("TANH", 1, 2, FLOAT_OR_QUANT8, case="Tanh", type_levels=(("UINT8", 3), ("INT8", 3))),
    _rule("LOGISTIC", 1, 2, FLOAT_OR_QUANT8, case="Logistic"),
    _rule("MAXIMUM", 3, 3, ANY, case="Maximum", note="a scalar operand must be a constant"),
    _rule("MINIMUM", 3, 3, ANY, case="Minimum", note="a scalar operand must be a constant"),
    _rule("FLOOR", 1, 1, ("FLOAT32",), case="Floor"),
    _rule("CAST", 3, 1, ("FLOAT32", "INT32", "UINT8"), case="Cast"),
    _rule("GATHER", 3, 2, ANY, case="Gather", note="int32 indices of rank >= 1"),
    _rule("CONCATENATION", 1, 2, FLOAT_OR_QUANT8, case="Concatenation", note="no fused activation"),
    _rule("QUANTIZE", 3, 2, ("FLOAT32",), case="Quantize", note="int8 output needs feature level 4"),
    _rule("DEQUANTIZE", 1, 2, ("UINT8", "INT8", "FLOAT16"), case="Dequantize",
          type_levels=(("FLOAT16", 4),)),
)}
