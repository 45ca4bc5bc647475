"""Core ML target: the frame, baked frame and identity graphs convert to ML Program packages with
the contract's boundary and the reference's warp convention; their saved MIL programs, evaluated
on the host (MilProgramRunner), match PyTorch within each precision's gate; and a package whose
warp convention is wrong is caught, by the export's check and by the parity gate.

golden_tiny's random weights move texels by ~60 px, so fp16 rounding of its sampling
coordinates costs more than on a trained model (frame image 38.8 dB, below the fp16 gate):
reduced precisions are measured on the tiny model built with the default-model recipe
(`realistic_tiny`, ~3 px warp), as in test_onnx.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilayer_mobile.export.calibration import frame_feeds, identity_feeds, photo_clips
from bilayer_mobile.export.coreml import RESAMPLE_CONVENTION, CoremlTarget, describe_package
from bilayer_mobile.export.errors import ConversionError
from bilayer_mobile.export.graphs import BakedFrameGraph, FrameGraph, IdentityGraph, TensorSpec, adaptive_layout
from bilayer_mobile.export.target import output_names
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, UV_TOLERANCE
from bilayer_mobile.runtime_bench.coreml_runner import CoreMlRunner, MilProgramRunner
from bilayer_mobile.runtime_bench.runner import RuntimeUnavailable

TARGET = CoremlTarget()


def example(feed):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()}


def contract(graph):
    return ([{"name": t.name, "shape": list(t.shape), "dtype": "float32"} for t in graph.input_spec()],
            [{"name": t.name, "shape": list(t.shape), "dtype": "float32"} for t in graph.output_spec()])


def checked(path: Path, graph) -> dict:
    """The package loads without compiling, has the contract's boundary and the reference's warp."""
    import coremltools as ct

    ct.models.MLModel(str(path), skip_model_load=True)
    info = describe_package(path)
    assert (info["inputs"], info["outputs"]) == contract(graph)
    assert info["deployment_target"] == "iOS16"
    assert info["resample"], "grid_sample did not become resample"
    for r in info["resample"]:
        assert {k: r[k] for k in RESAMPLE_CONVENTION} == RESAMPLE_CONVENTION, r
    return info


def package_consts(path: Path) -> list[np.ndarray]:
    from bilayer_mobile.runtime_bench.mil_program import MilProgram

    return [op.attributes["val"] for op in MilProgram.load(path).operations
            if op.type == "const" and isinstance(op.attributes.get("val"), np.ndarray)]


@pytest.fixture(scope="module")
def clips():
    return photo_clips(2, 2, seed=202)


@pytest.fixture(scope="module")
def tiny_frame(tiny_model, clips):
    state = tiny_model.init_identity(clips[0].image[None], clips[0].keypoints[None])
    return FrameGraph(tiny_model, adaptive_layout(state), debug_outputs=True).eval(), frame_feeds(tiny_model, clips)


@pytest.fixture(scope="module")
def frame_fp32(tiny_frame, tmp_path_factory):
    graph, feeds = tiny_frame
    path = tmp_path_factory.mktemp("coreml") / "frame_fp32.mlpackage"
    notes = TARGET.export(graph, example(feeds[0]), "fp32", path)
    return path, notes


@pytest.fixture(scope="module")
def realistic_tiny(tiny_model):
    """golden_tiny's architecture built with the default-model recipe (~3 px warp, about 20 s)."""
    from bilayer_mobile.reference.default_model import DefaultModelRecipe, build_default_model

    torch.manual_seed(0)
    return build_default_model(tiny_model.config, DefaultModelRecipe(stats_identities=8, uv_identities=4,
                                                                     with_enhancer=False)).eval()


# ------------------------------------------------------------------------------------------------
def test_frame_graph_fp32(parity, tiny_frame, frame_fp32, tiny_model):
    graph, feeds = tiny_frame
    path, notes = frame_fp32
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary files left behind"
    info = checked(path, graph)
    assert info["op_precisions"].get("fp16", 0) == 0 and info["ops"]["resample"] == 1
    assert any("resample" in n and "normalized_minus_one_to_one" in n for n in notes.notes)
    assert any(n.startswith("deployment target iOS16") for n in notes.notes)
    # weights round-trip: the keypoint embedder's linear weights are in the package as they are in torch
    consts = package_consts(path)
    for name, p in graph.named_parameters():
        if "keypoints_embedder" in name and p.ndim == 2:
            assert any(c.shape == p.shape and np.array_equal(c, p.detach().numpy()) for c in consts), name
    metrics = parity(graph, MilProgramRunner(path), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"] + 30, metrics
    assert metrics["uv"]["uv_error_px"] < UV_TOLERANCE["fp32"].floor_px, metrics
    # the conversion left the torch module as it was (coremltools writes into program constants)
    assert metrics["mask"]["max_abs"] < 1e-4, metrics


def test_baked_frame_graph_fp32(parity, tiny_model, clips, tmp_path):
    state = tiny_model.init_identity(clips[0].image[None], clips[0].keypoints[None])
    graph = BakedFrameGraph(tiny_model, state, debug_outputs=True).eval()
    feeds = [{"keypoints": k[None].numpy()} for k in clips[0].drivers]
    path = tmp_path / "baked.mlpackage"
    TARGET.export(graph, example(feeds[0]), "fp32", path)
    info = checked(path, graph)
    assert [t["name"] for t in info["inputs"]] == ["keypoints"]
    assert any(c.shape == (1, 3, 256, 256) for c in package_consts(path)), "the baked texture is missing"
    metrics = parity(graph, MilProgramRunner(path), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], metrics


@pytest.mark.slow  # ~27 s: export 7 s, convert 11 s, host evaluation 7 s
def test_identity_graph_fp32(parity, tiny_model, clips, tmp_path):
    state = tiny_model.init_identity(clips[0].image[None], clips[0].keypoints[None])
    graph = IdentityGraph(tiny_model, adaptive_layout(state)).eval()
    feeds = identity_feeds(clips[:1])
    path = tmp_path / "identity.mlpackage"
    TARGET.export(graph, example(feeds[0]), "fp32", path)
    info = checked(path, graph)
    assert info["ops"]["scatter_along_axis"] > 0 and info["ops"]["resample"] == 4  # the enhancer
    metrics = parity(graph, MilProgramRunner(path), feeds)
    assert metrics["texture"]["psnr_db"] >= THRESHOLDS_DB["fp32"], metrics


def test_frame_graph_fp16_and_int8_dynamic(parity, realistic_tiny, clips, tmp_path):
    m = realistic_tiny
    state = m.init_identity(clips[0].image[None], clips[0].keypoints[None])
    graph = FrameGraph(m, adaptive_layout(state), debug_outputs=True).eval()
    feeds = frame_feeds(m, clips)
    float_model = TARGET.convert_float(graph, example(feeds[0]))
    results = {}
    for precision in ("fp16", "int8_dynamic"):
        path = tmp_path / f"frame_{precision}.mlpackage"
        notes = TARGET.export(graph, example(feeds[0]), precision, path, float_model=float_model)
        info = checked(path, graph)
        assert info["op_precisions"]["fp16"] > info["op_precisions"].get("fp32", 0), info["op_precisions"]
        metrics = parity(graph, MilProgramRunner(path), feeds)
        assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB[precision], (precision, metrics)
        results[precision] = (info, notes, metrics)
    fp16, int8 = results["fp16"][0], results["int8_dynamic"][0]
    assert "int8" not in fp16["weight_bytes_by_dtype"]
    assert int8["ops"]["constexpr_affine_dequantize"] == fp16["ops"]["conv"] + fp16["ops"]["linear"]
    assert int8["weight_bytes_by_dtype"]["int8"] > 0 and int8["weight_file_bytes"] < fp16["weight_file_bytes"]
    assert any("weights-only int8" in n for n in results["int8_dynamic"][1].notes)
    assert results["fp16"][2]["uv"]["uv_error_px"] < UV_TOLERANCE["fp16"].limit_px(3.0), results["fp16"][2]
    # fp16 weights round-trip to within fp16 rounding
    consts = package_consts(tmp_path / "frame_fp16.mlpackage")
    w = next(p for n, p in graph.named_parameters() if "keypoints_embedder" in n and p.ndim == 2).detach().numpy()
    assert any(c.shape == w.shape and c.dtype == np.float16 and np.array_equal(c, w.astype(np.float16)) for c in consts)


def test_baked_frame_graph_fp16(parity, realistic_tiny, clips, tmp_path):
    m = realistic_tiny
    state = m.init_identity(clips[0].image[None], clips[0].keypoints[None])
    graph = BakedFrameGraph(m, state, debug_outputs=True).eval()
    feeds = [{"keypoints": k[None].numpy()} for k in clips[0].drivers]
    path = tmp_path / "baked_fp16.mlpackage"
    TARGET.export(graph, example(feeds[0]), "fp16", path)
    checked(path, graph)
    metrics = parity(graph, MilProgramRunner(path), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["fp16"], metrics


# ------------------------------------------------------------------------------------------------
# the warp convention: a wrong one is caught
# ------------------------------------------------------------------------------------------------
def with_align_corners(src: Path, dst: Path) -> Path:
    """A copy of a package whose resample ops have align_corners=True (the spec edited, weights kept)."""
    from coremltools.proto import Model_pb2

    shutil.copytree(src, dst)
    model_file = dst / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(model_file.read_bytes())
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    names = {op.inputs["align_corners"].arguments[0].name for op in block.operations if op.type == "resample"}
    assert names
    for op in block.operations:
        if op.type == "const" and op.outputs[0].name in names:
            op.attributes["val"].immediateValue.tensor.bools.values[:] = [True]
    model_file.write_bytes(spec.SerializeToString())
    return dst


def test_wrong_warp_convention_is_caught(parity, tiny_frame, frame_fp32, tmp_path):
    from bilayer_mobile.export.coreml import check_package

    graph, feeds = tiny_frame
    wrong = with_align_corners(frame_fp32[0], tmp_path / "frame_wrong.mlpackage")
    assert describe_package(wrong)["resample"][0]["align_corners"] is True
    with pytest.raises(ConversionError, match="align_corners"):
        check_package(wrong, [t.name for t in graph.input_spec()], output_names(graph))
    right = parity(graph, MilProgramRunner(frame_fp32[0]), feeds[:1])
    bad = parity(graph, MilProgramRunner(wrong), feeds[:1])
    assert right["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], right
    assert bad["image"]["psnr_db"] < THRESHOLDS_DB["fp32"], bad
    assert bad["uv"]["uv_error_px"] < 1e-3  # the grid is right: only the sampling is wrong


class AlignCornersWarp(nn.Module):
    """A frame-like graph whose grid_sample uses align_corners=True (not the reference's)."""

    name = "bad_warp"

    def input_spec(self):
        return [TensorSpec("texture", (1, 3, 16, 16), "image", ""), TensorSpec("uv", (1, 16, 16, 2), "warp", "")]

    def output_spec(self):
        return [TensorSpec("image", (1, 3, 16, 16), "image", "", gated=True)]

    def forward(self, texture, uv):
        return F.grid_sample(texture, uv, mode="bilinear", padding_mode="zeros", align_corners=True)


def test_conversion_with_the_wrong_convention_fails_and_leaves_nothing(tmp_path):
    graph = AlignCornersWarp()
    feed = {"texture": torch.zeros(1, 3, 16, 16), "uv": torch.zeros(1, 16, 16, 2)}
    path = tmp_path / "out" / "bad.mlpackage"
    with pytest.raises(ConversionError, match="align_corners is True"):
        TARGET.export(graph, feed, "fp32", path)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_core_ml_runner_needs_macos(frame_fp32):
    import platform

    if platform.system() == "Darwin":
        pytest.skip("Core ML runs here")
    with pytest.raises(RuntimeUnavailable, match="needs macOS.*evaluated on the host"):
        CoreMlRunner(frame_fp32[0])
    runner = MilProgramRunner(frame_fp32[0])
    assert runner.runtime == "coreml_mil_host" and "Core ML runtime not run" in runner.checks
