"""LiteRT's real GPU accelerator (WebGPU over Vulkan; lavapipe on a CPU-only host): the fused
warp's frame graph is fully accelerated and right in fp16, the decomposed one is not, and the
verdict is read from what the accelerator prints.

These tests need a Vulkan device. Without one they fail with the instruction to install it
(`make setup` as root, or scripts/install-vulkan-driver.sh); they never skip.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from bilayer_mobile.export.calibration import frame_feeds, photo_clips
from bilayer_mobile.export.graphs import FrameGraph, adaptive_layout
from bilayer_mobile.export.target import output_names
from bilayer_mobile.export.targets import TARGETS
from bilayer_mobile.export.tflite import export_tflite
from bilayer_mobile.reference.default_model import scale_uv_head_
from bilayer_mobile.reference.face_samples import augmented_crops, load_face_photos
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, psnr_db
from bilayer_mobile.runtime_bench.litert_gpu_runner import LiteRtGpuRunner, parse_verdict
from bilayer_mobile.runtime_bench.litert_runner import LiteRtRunner

# What the accelerator printed for the decomposed warp's frame graph (tensor names shortened).
DECOMPOSED_LOG = """\
INFO: [delegate_webgpu.cc:342] Create WebGPU environment (use_low_power=0, enable_host_mapped_pointer=1)
I0000 00:00:1796171396.762752    9660 environment.cc:532] Selected adapter: llvmpipe (LLVM 15.0.6, 256 bits), arch=software, vendor=mesa, backend=Vulkan, adapterType=CPU / Software
ERROR: Following operations are not supported by GPU delegate:
BROADCAST_TO: Operation is not supported.
CONCATENATION: Tensor dimensions must be less than 5. NamedOutputs/FrameGraph_module/GridSampleWarp_warp;2
GATHER_ND: Operation is not supported.
RESHAPE: Tensor dimensions must be less than 5. NamedOutputs/FrameGraph_module/GridSampleWarp_warp;108
RESHAPE: Tensor dimensions must be less than 5. NamedOutputs/FrameGraph_module/GridSampleWarp_warp;109
SLICE: Slicing is unsupported for input with rank > 4
191 operations will run on the GPU, and the remaining 106 operations will run on the CPU.
"""


def test_verdict_is_parsed_from_the_accelerators_messages():
    verdict = parse_verdict(DECOMPOSED_LOG, fully_accelerated=False, total_ops=297, fp16=True)
    assert not verdict.fully_accelerated
    assert (verdict.gpu_ops, verdict.cpu_ops) == (191, 106)
    assert verdict.device == "llvmpipe (LLVM 15.0.6, 256 bits)"
    by_op = {r["op"]: r for r in verdict.rejected}
    assert set(by_op) == {"BROADCAST_TO", "CONCATENATION", "GATHER_ND", "RESHAPE", "SLICE"}
    assert by_op["RESHAPE"]["count"] == 2 and len(by_op["RESHAPE"]["tensors"]) == 2
    assert by_op["RESHAPE"]["reason"] == "Tensor dimensions must be less than 5."
    assert by_op["GATHER_ND"]["tensors"] == []
    assert "GATHER_ND" in verdict.summary()
    full = parse_verdict("Selected adapter: x, arch=y\n", fully_accelerated=True, total_ops=240, fp16=True)
    assert full.fully_accelerated and (full.gpu_ops, full.cpu_ops) == (240, 0) and not full.rejected


@pytest.fixture(scope="module")
def frame_models(tiny_model, photos_dir, tmp_path_factory):
    """golden_tiny's frame graph (3 px warp) as TFLite fp32 with each warp, and real-face feeds."""
    model = copy.deepcopy(tiny_model).eval()
    scale_uv_head_(model, augmented_crops(load_face_photos(photos_dir), 2, seed=7), 3.0, frames_per_identity=2)
    clips = photo_clips(1, 2, seed=23, photos_dir=photos_dir)
    feeds = frame_feeds(model, clips)
    layout = adaptive_layout(model.init_identity(clips[0].image[None], clips[0].keypoints[None]))
    graph = FrameGraph(model, layout, debug_outputs=True).eval()
    out = tmp_path_factory.mktemp("gpu")
    paths = {}
    example = {k: torch.from_numpy(v) for k, v in feeds[0].items()}
    for warp in ("fused", "decomposed"):
        converted = TARGETS["tflite"].graph_for(graph, warp)
        paths[warp] = export_tflite(converted, example, output_names(graph), out / f"frame_{warp}.tflite", "fp32").path
    with torch.no_grad():
        reference = [dict(zip(output_names(graph), graph(**{k: torch.from_numpy(v) for k, v in f.items()})))
                     for f in feeds]
    return paths, feeds, reference


def gpu_psnr(runner, feeds, reference, name="image") -> float:
    return min(psnr_db(ref[name].numpy(), runner.infer(feed)[name]) for feed, ref in zip(feeds, reference))


def test_fused_warp_frame_graph_is_fully_accelerated_and_right_in_fp16(frame_models):
    paths, feeds, reference = frame_models
    fused = LiteRtGpuRunner(paths["fused"])
    assert fused.verdict.fully_accelerated, fused.verdict.summary()
    assert fused.verdict.fp16 and fused.verdict.cpu_ops == 0
    fused_db = gpu_psnr(fused, feeds, reference)
    assert fused_db >= THRESHOLDS_DB["fp16"], fused_db
    # the same network with the warp on the CPU (the decomposed graph's warp is rejected)
    cpu_warp_db = gpu_psnr(LiteRtGpuRunner(paths["decomposed"]), feeds, reference)
    assert fused_db >= cpu_warp_db - 1.0, (fused_db, cpu_warp_db)
    # and fp32 on the accelerator is exact to float round-off: the fp16 loss is the accelerator's mode
    assert gpu_psnr(LiteRtGpuRunner(paths["fused"], enforce_f32=True), feeds, reference) >= THRESHOLDS_DB["fp32"]


def test_decomposed_warp_is_not_accelerated_and_the_verdict_names_gather_nd(frame_models):
    paths, _, _ = frame_models
    verdict = LiteRtGpuRunner(paths["decomposed"]).verdict
    assert not verdict.fully_accelerated
    assert "GATHER_ND" in {r["op"] for r in verdict.rejected}
    assert verdict.cpu_ops > 0


def test_cpu_runs_of_both_warps_agree_with_the_reference(frame_models):
    paths, feeds, reference = frame_models
    for warp in ("fused", "decomposed"):
        assert gpu_psnr(LiteRtRunner(paths[warp]), feeds, reference) >= THRESHOLDS_DB["fp32"], warp


def test_without_a_vulkan_device_the_error_says_how_to_get_one(frame_models):
    paths, _, _ = frame_models
    code = ("import sys\nfrom bilayer_mobile.runtime_bench.litert_gpu_runner import LiteRtGpuRunner, GpuUnavailable\n"
            f"try:\n    LiteRtGpuRunner({str(paths['fused'])!r})\nexcept GpuUnavailable as e:\n"
            "    print('UNAVAILABLE', e)\n    sys.exit(0)\nsys.exit(1)\n")
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("UNAVAILABLE"))
    assert "lavapipe" in line and "make setup" in line
