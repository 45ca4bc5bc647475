"""The NNAPI profile: a TFLite artifact shaped so that the TFLite NNAPI delegate takes it whole.

NNAPI (Android's Neural Networks API, deprecated since Android 15; LiteRT's GPU and NPU
accelerators replace it, docs/nnapi.md) is reached from an app through LiteRT's NNAPI delegate,
which takes or refuses each op by its type, version, tensor types and ranks and the device's
NNAPI feature level. The profile is the baked frame graph (one identity folded into ordinary
layers: no per-identity BATCH_MATMUL, which NNAPI has only from feature level 6) with the fused
warp in its flat-index form (no GATHER_ND, which NNAPI does not have; the int32 arithmetic on
flat tensors, so no int32 RESHAPE: feature level 4, Android 11), converted like every TFLite
artifact (`export.tflite`). Its files are `*.nnapi.tflite`.

What is checked where: `validate` runs it in the LiteRT interpreter (its numerics, gated like
every artifact) and holds it against the NNAPI delegate's rules (`runtime_bench.nnapi_profile`:
it fails unless the table takes every op). The delegate itself needs an Android device and is
not run here. Run it without the delegate's fp16 relaxation (`allow_fp16` off, the default):
relaxed fp16 rounds the warp's sampling positions and its index arithmetic (on LiteRT's GPU
accelerator in fp16 this form loses 13 dB, which is why the GPU artifacts keep the 4-D form).
"""
from __future__ import annotations

from .tflite import TfliteTarget, tfl_gather
from .warp import FusedWarp


class NnapiTarget(TfliteTarget):
    """The NNAPI delegate profile of the baked frame graph (TFLite flatbuffers)."""

    name = "nnapi"
    extension = ".nnapi.tflite"
    runtime = "litert"
    precisions = ("fp32", "int8")
    graphs = ("baked_frame",)
    limitations = {
        "graphs": "the baked frame graph only: the frame graph's per-identity 1x1 convolutions are BATCH_MATMULs, "
                  "which NNAPI has only from feature level 6 (Android 13); the identity graph runs once, off NNAPI",
        "fp16": "not exported: NNAPI runs float32 models in fp16 when the app allows relaxed computation; "
                "keep it off for this graph (the warp's sampling positions)",
        "int8_dynamic": "not exported: hybrid (dynamic-range) ops need the delegate's hybrid path, which the "
                        "static int8 profile avoids",
        "device run": "the NNAPI delegate and the phone's driver are not run here (needs an Android device); "
                      "the rule table is a static check",
    }

    def graph_for(self, graph, warp):
        # always the fused warp: the decomposed one's GATHER_ND has no NNAPI operation
        size = graph.model.config.image_size
        return graph.with_warp(FusedWarp(size, size, gather=tfl_gather, flat_indices=True))
