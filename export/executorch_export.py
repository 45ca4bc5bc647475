"""ExecuTorch export of the graphs: `.pte` programs lowered to the XNNPACK delegate.

    target = ExecutorchTarget()
    program = target.convert_float(graph, example_inputs)      # torch.export, once per graph
    target.export(graph, example_inputs, "int8", Path("frame_int8.pte"), calibration, program)

ExecuTorch is PyTorch's own on-device runtime: `torch.export` captures the graph, `executorch.exir`
lowers the pieces a backend takes to that backend (here XNNPACK, the CPU delegate on Android,
iOS and desktop) and leaves the rest on ExecuTorch's portable kernels, and the result is one
flatbuffer program (`.pte`) run by the ExecuTorch runtime. A `.pte` stores no tensor names, so
each program also carries two constant methods, `input_names` and `output_names` (the contract's
names, comma-separated, in the order of `forward`'s arguments and results), which the runner
(`runtime_bench.executorch_runner`) reads.

Precisions
- fp32: the float graph lowered to XNNPACK as it is.
- int8: PT2E static quantization (per-channel int8 weights, per-tensor int8 activations from
  calibration) of the convolutions and linear layers only: the same float islands as the TFLite
  and ONNX recipes (the warp's sampling coordinates, the adaptive norms, the residual sums).
- fp16 is not exported: it would change the contract's float32 boundary, and XNNPACK computes
  fp16 only on CPUs with fp16 arithmetic.
- int8_dynamic is not exported: PT2E dynamic quantization lowers for the frame graph (38.3 dB on
  the paper model) but not for the baked frame graph, where ExecuTorch 1.5.1's
  `ChannelsLastTaggedReshapePass` asks for a channels-last copy of the rank-2 keypoints input
  ("required rank 4 tensor to use channels_last format"); the static int8 recipe covers both.

ExecuTorch 1.5.1 quirk worked around here: its `DecomposeBatchNorm` pass gives the folded
constants of every `BatchNorm2d(affine=False)` the same name, so every such layer would get the
*first* one's scale and shift (a loud shape error where channel counts differ, a silently wrong
model where they match). `graph_for` therefore makes those layers affine with weight 1 and bias 0
(the same arithmetic). As for every target, nothing here is trusted: each program runs in the
ExecuTorch runtime against the reference (`runtime_bench.validate`).

`grid_sampler_2d` (the warp) and `upsample_nearest2d` are not taken by XNNPACK 1.5.1; they run
on portable kernels between delegate partitions. The delegation summary of each program
(`delegation_summary`) goes into its manifest entry and the coverage report.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..reference.files import write_bytes_atomic
from .errors import ConversionError, ExportError
from .target import ArtifactNotes, Target, converting, output_names

# The op types the int8 recipes quantize (PT2E annotation by operator type).
QUANTIZED_OPS = ("conv2d", "linear")

_log = logging.getLogger(__name__).info


def affine_batch_norms(graph: nn.Module) -> nn.Module:
    """A copy of `graph` whose `BatchNorm2d(affine=False)` layers are affine with weight 1 and
    bias 0: the same arithmetic, and each layer's folded constants get their own names in
    ExecuTorch's `DecomposeBatchNorm` pass (see the module docstring)."""
    graph = copy.deepcopy(graph)
    for layer in graph.modules():
        if isinstance(layer, nn.BatchNorm2d) and not layer.affine:
            layer.affine = True
            like = layer.running_mean  # the layer's dtype and device
            layer.weight = nn.Parameter(torch.ones_like(like))
            layer.bias = nn.Parameter(torch.zeros_like(like))
    return graph


def _args(graph: nn.Module, example_inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    names = [t.name for t in graph.input_spec()]
    if sorted(names) != sorted(example_inputs):
        raise ExportError(f"example inputs {sorted(example_inputs)} are not the graph's inputs {names}")
    return tuple(example_inputs[n].contiguous() for n in names)


def capture(graph: nn.Module, example_inputs: dict[str, torch.Tensor]) -> torch.export.ExportedProgram:
    """The float graph captured by `torch.export` (static shapes: those of the example)."""
    with torch.no_grad():
        return torch.export.export(graph.eval(), _args(graph, example_inputs))


def quantized_program(program: torch.export.ExportedProgram, graph: nn.Module, example_inputs: dict[str, torch.Tensor],
                      calibration: list[dict[str, np.ndarray]]) -> torch.export.ExportedProgram:
    """The PT2E-quantized form of `program`: XNNPACK's symmetric static int8 config (per-channel
    weights, per-tensor activations calibrated on `calibration`) on the convolutions and linear
    layers."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ExportError("int8 needs calibration feeds")
    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer()
    for op in QUANTIZED_OPS:
        quantizer.set_operator_type(getattr(torch.ops.aten, op).default, config)
    prepared = prepare_pt2e(program.module(), quantizer)
    names = [t.name for t in graph.input_spec()]
    with torch.no_grad():
        for feed in calibration:
            prepared(*[torch.from_numpy(np.asarray(feed[n], np.float32)) for n in names])
        return torch.export.export(convert_pt2e(prepared), _args(graph, example_inputs))


def delegation_summary(lowered) -> dict:
    """What XNNPACK took of a lowered program (`executorch.devtools.backend_debug`): delegate
    partitions, nodes delegated and not, and per op type the counts on each side."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(lowered.exported_program().graph_module)
    table = info.get_operator_delegation_dataframe()
    ops = {row.op_type: {"delegated": int(row.occurrences_in_delegated_graphs),
                         "portable": int(row.occurrences_in_non_delegated_graphs)}
           for row in table.itertuples() if row.op_type not in ("Total", "getitem")}
    return {"backend": "XnnpackBackend", "partitions": int(info.num_delegated_subgraphs),
            "delegated_nodes": int(info.num_delegated_nodes), "portable_nodes": int(info.num_non_delegated_nodes),
            "ops": ops, "portable_ops": sorted(op for op, n in ops.items() if n["portable"]
                                               and op not in ("aten_unsqueeze_copy_default", "aten_view_copy_default"))}


def lower_to_xnnpack(program: torch.export.ExportedProgram, inputs: list[str], outputs: list[str]):
    """`program` lowered to XNNPACK (everything it takes) with the portable kernels for the rest,
    carrying the boundary's names as constant methods."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                       constant_methods={"input_names": ",".join(inputs),
                                                         "output_names": ",".join(outputs)})


class ExecutorchTarget(Target):
    """`.pte` programs for the ExecuTorch runtime, XNNPACK-delegated."""

    name = "executorch"
    extension = ".pte"
    runtime = "executorch"
    precisions = ("fp32", "int8")
    limitations = {
        "int8_dynamic": "not exported: ExecuTorch 1.5.1's ChannelsLastTaggedReshapePass fails on the baked frame "
                        "graph's dynamic quantization (a channels-last copy of the rank-2 keypoints); int8 (static) "
                        "is exported",
        "fp16": "not exported: a half program changes the contract's float32 boundary, and XNNPACK computes fp16 "
                "only on CPUs with fp16 arithmetic",
        "warp and nearest upsampling": "grid_sampler_2d and upsample_nearest2d run on ExecuTorch's portable kernels "
                                       "(XNNPACK 1.5.1 does not take them)",
        "other delegates": "only XNNPACK here; the Core ML, MPS, Vulkan and vendor NPU delegates are not exported",
    }

    def graph_for(self, graph: nn.Module, warp: str) -> nn.Module:
        # torch's grid_sample as it is (ExecuTorch has a portable kernel for it); BatchNorm made
        # affine against the DecomposeBatchNorm naming bug (module docstring)
        shaped = affine_batch_norms(graph)
        shaped.name = graph.name
        return shaped

    def warp_of(self, graph: nn.Module) -> str | None:
        return "grid_sampler_2d (portable kernel)" if hasattr(graph, "warp_kind") else None

    def convert_float(self, graph, example_inputs):
        with converting(f"torch.export of the {graph.name} graph for ExecuTorch"):
            return capture(graph, example_inputs)

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None) -> ArtifactNotes:
        if precision not in self.precisions:
            raise ExportError(f"ExecuTorch exports {', '.join(self.precisions)}, not {precision}")
        started = time.perf_counter()
        program = float_model if float_model is not None else self.convert_float(graph, example_inputs)
        notes = ["torch.export (static shapes), lowered with to_edge_transform_and_lower + XnnpackPartitioner",
                 "BatchNorm2d(affine=False) made affine (weight 1, bias 0) against ExecuTorch 1.5.1's "
                 "DecomposeBatchNorm constant-naming bug"]
        with converting(f"ExecuTorch {precision} conversion of the {graph.name} graph"):
            if precision != "fp32":
                program = quantized_program(program, graph, example_inputs, calibration)
                notes.append(f"PT2E static int8 calibrated (XNNPACKQuantizer, per-channel weights) on {list(QUANTIZED_OPS)}; "
                             "every other op stays float (the warp's sampling coordinates included)")
            lowered = lower_to_xnnpack(program, [t.name for t in graph.input_spec()], output_names(graph))
            delegation = delegation_summary(lowered)
            buffer = lowered.to_executorch().buffer
        if not buffer:
            raise ConversionError(f"ExecuTorch wrote an empty program for the {graph.name} graph")
        notes.append(f"XNNPACK: {delegation['partitions']} delegate partitions, {delegation['delegated_nodes']} nodes "
                     f"delegated, {delegation['portable_nodes']} on portable kernels "
                     f"({', '.join(delegation['portable_ops']) or 'no compute op'})")
        write_bytes_atomic(path, buffer)
        _log(f"wrote {path} ({len(buffer) / 1e6:.2f} MB) in {time.perf_counter() - started:.1f} s")
        return ArtifactNotes(float_ops=None, notes=notes, accelerator=delegation)
