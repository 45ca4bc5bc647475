"""TFLite / LiteRT export: every converted graph is run in LiteRT and compared with PyTorch.

A conversion is never trusted: litert-torch can produce a wrong model without an error (strided
constants, scatter regions), so each test measures the outputs. Fast tests use the golden_tiny
model (its UV head scaled to a realistic 3 px warp, which is what decides whether int8 keeps
the warp) and a small synthetic config for the identity graph; the paper-size test is `slow`.
Calibration and evaluation always use different seeds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bilayer_mobile.export.calibration import frame_feeds, identity_feeds, photo_clips
from bilayer_mobile.export.errors import ExportError
from bilayer_mobile.export.graphs import BakedFrameGraph, FrameGraph, IdentityGraph, adaptive_layout
from bilayer_mobile.export.precisions import PRECISIONS, needs_calibration
from bilayer_mobile.export.target import output_names
from bilayer_mobile.export.targets import TARGETS
from bilayer_mobile.export.tflite import contiguous_copy, export_tflite, fix_scatter_regions, op_histogram
from bilayer_mobile.reference.config import BilayerConfig
from bilayer_mobile.reference.default_model import scale_uv_head_, spectral_normalise_
from bilayer_mobile.reference.face_samples import augmented_crops, load_face_photos, perturb_keypoints
from bilayer_mobile.reference.model import BilayerModel
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, UV_TOLERANCE, warp_px
from bilayer_mobile.runtime_bench.litert_runner import LiteRtRunner
from bilayer_mobile.runtime_bench.runner import FeedError, ModelFileError


# ------------------------------------------------------------------------------------ data
@dataclass
class Exports:
    """One graph exported at several precisions, each artifact's parity in LiteRT, and the
    reference's own mean warp (px) on the evaluation feeds (what the UV gate scales with)."""

    graph: nn.Module
    results: dict
    metrics: dict[str, dict[str, dict[str, float]]]
    warp_px: float


def reference_warp_px(graph, feeds) -> float:
    """The PyTorch graph's mean texel displacement over `feeds`, as `validate` measures it on the
    golden set (from the output the contract declares as a sampling grid)."""
    specs = graph.output_spec()
    k = next(i for i, t in enumerate(specs) if t.kind == "warp")
    with torch.no_grad():
        grids = [graph(**as_torch(f))[k].numpy() for f in feeds]
    return warp_px(np.concatenate(grids), specs[0].shape[-1])


class RealValuedBoundary(LiteRtRunner):
    """A diagnostic artifact whose signature is quantized too: ai-edge-quantizer's full-integer
    recipe (`int8_full`, never shipped) makes every input and output int8 with a scale and zero
    point. `Runner.infer` quantizes the feed and dequantizes the outputs at such tensors, so the
    artifact still takes and returns the contract's real values: it is held to the contract's
    names and shapes, and to its dtype at every tensor that is not quantized."""

    def check_contract(self, inputs, outputs):
        quantized = {t.name: np.dtype(t.dtype).name for t in self.inputs + self.outputs if t.quantized}
        as_run = lambda entries: [{**e, "dtype": quantized.get(e["name"], e["dtype"])} for e in entries]
        return super().check_contract(as_run(inputs), as_run(outputs))


def export_and_measure(parity, graph, evaluation, calibration, stem: Path, precisions) -> Exports:
    """fp32 plus each quantized precision (quantized from the fp32 file), and their parity metrics."""
    example = as_torch(evaluation[0])
    names = output_names(graph)
    results = {"fp32": export_tflite(graph, example, names, Path(f"{stem}_fp32.tflite"), "fp32")}
    for precision in precisions:
        results[precision] = export_tflite(graph, example, names, Path(f"{stem}_{precision}.tflite"), precision,
                                           calibration=calibration, float_model=results["fp32"].path)
    # shipping precisions keep the contract's float32 boundary exactly
    runner = lambda p: (LiteRtRunner if PRECISIONS[p].shipping else RealValuedBoundary)(results[p].path)
    metrics = {p: parity(graph, runner(p), evaluation) for p in results}
    return Exports(graph, results, metrics, reference_warp_px(graph, evaluation))


@pytest.fixture(scope="module")
def photos(photos_dir):
    return load_face_photos(photos_dir)


def as_torch(feed):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()}


@pytest.fixture(scope="module")
def warp_model(tiny_model, photos):
    """golden_tiny with its UV head scaled to a 3 px mean warp on real faces (a trained model's
    warp; the raw tiny model's decides nothing about int8)."""
    model = copy.deepcopy(tiny_model).eval()
    measured = scale_uv_head_(model, augmented_crops(photos, 2, seed=7), 3.0, frames_per_identity=2)
    assert 2.7 < measured < 3.3
    return model


@pytest.fixture(scope="module")
def frame_data(warp_model, photos_dir):
    calibration = frame_feeds(warp_model, photo_clips(2, 4, seed=11, photos_dir=photos_dir))
    evaluation_clips = photo_clips(2, 2, seed=23, photos_dir=photos_dir)
    evaluation = frame_feeds(warp_model, evaluation_clips)
    clip = evaluation_clips[0]
    layout = adaptive_layout(warp_model.init_identity(clip.image[None], clip.keypoints[None]))
    return calibration, evaluation, layout


@pytest.fixture(scope="module")
def frame_exports(parity, warp_model, frame_data, tmp_path_factory) -> Exports:
    """FrameGraph (debug outputs) at every precision export.precisions defines (int8_full
    included); one litert-torch conversion, the quantized variants made from its fp32 model."""
    calibration, evaluation, layout = frame_data
    graph = TARGETS["tflite"].graph_for(FrameGraph(warp_model, layout, debug_outputs=True).eval(), "fused")
    out = tmp_path_factory.mktemp("tflite_frame")
    return export_and_measure(parity, graph, evaluation, calibration, out / "frame",
                              tuple(p for p in PRECISIONS if p != "fp32"))


# ------------------------------------------------------------------------------------ frame graph
def test_frame_fp32_signature_names_and_parity(frame_exports):
    graph, result = frame_exports.graph, frame_exports.results["fp32"]
    runner = LiteRtRunner(result.path)
    assert sorted(runner.input_names) == sorted(t.name for t in graph.input_spec())
    assert sorted(runner.output_names) == sorted(output_names(graph))
    assert sorted(result.output_names) == sorted(output_names(graph))
    assert result.float_ops is None and result.size_bytes == result.path.stat().st_size
    m = frame_exports.metrics["fp32"]
    assert m["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], m
    assert m["image"]["max_abs"] < 1e-2, m
    for name in ("mask", "uv", "lowfreq"):
        assert m[name]["max_abs"] < 1e-3, (name, m[name])
    # the UV floor: stricter than the warp-scaled limit validate applies
    assert m["uv"]["uv_error_px"] < UV_TOLERANCE["fp32"].floor_px, m["uv"]


def test_frame_fp16(frame_exports):
    results, metrics = frame_exports.results, frame_exports.metrics
    assert metrics["fp16"]["image"]["psnr_db"] >= THRESHOLDS_DB["fp16"], metrics["fp16"]
    assert metrics["fp16"]["uv"]["uv_error_px"] < UV_TOLERANCE["fp16"].floor_px, metrics["fp16"]["uv"]
    # float16 weights, dequantized at load (the tiny model's size is dominated by float32
    # constants such as the identity grid, so only "smaller" is asserted)
    assert op_histogram(results["fp16"].path).get("DEQUANTIZE", 0) > 0
    assert results["fp16"].size_bytes < results["fp32"].size_bytes


def test_frame_int8_dynamic(frame_exports):
    results, metrics = frame_exports.results, frame_exports.metrics
    assert metrics["int8_dynamic"]["image"]["psnr_db"] >= THRESHOLDS_DB["int8_dynamic"], metrics["int8_dynamic"]
    limit = UV_TOLERANCE["int8_dynamic"].limit_px(frame_exports.warp_px)
    assert metrics["int8_dynamic"]["uv"]["uv_error_px"] < limit, (metrics["int8_dynamic"]["uv"], limit)
    assert results["int8_dynamic"].size_bytes < results["fp32"].size_bytes


def test_frame_int8_mixed_keeps_the_warp(frame_exports):
    result, m = frame_exports.results["int8"], frame_exports.metrics["int8"]
    assert m["image"]["psnr_db"] >= THRESHOLDS_DB["int8"], m
    # the UV gate validate applies: a floor plus a share of the reference's own warp (~3 px here)
    limit = UV_TOLERANCE["int8"].limit_px(frame_exports.warp_px)
    assert m["uv"]["uv_error_px"] < limit, (m["uv"], frame_exports.warp_px, limit)
    # Deliberately mixed: only convolutions and linear layers are integer...
    assert set(op_histogram(result.path, only="quantized")) == {"CONV_2D", "FULLY_CONNECTED"}
    # ...and the warp (sampling coordinates, bilinear gather) is float, and reported as such.
    assert {"GATHER", "FLOOR", "ADD", "MUL", "SUB", "TANH"} <= set(result.float_ops), result.float_ops
    assert any("GATHER" in note for note in result.notes)


def test_full_int8_is_detected_as_destroying_the_warp(frame_exports):
    full, mixed = frame_exports.metrics["int8_full"], frame_exports.metrics["int8"]
    # int8_full has no gate of its own (never shipped): the int8 gate must catch it
    assert full["image"]["psnr_db"] < THRESHOLDS_DB["int8"], full
    assert full["image"]["psnr_db"] < mixed["image"]["psnr_db"] - 4
    # The cause: quantized sampling coordinates (int8 steps of ~1 px on a 256 px grid).
    assert full["uv"]["uv_error_px"] > 2 * mixed["uv"]["uv_error_px"]
    assert full["uv"]["uv_error_px"] > UV_TOLERANCE["int8"].limit_px(frame_exports.warp_px), full["uv"]


# ------------------------------------------------------------------------------------ baked frame graph
@pytest.fixture(scope="module")
def baked_exports(parity, warp_model, photos_dir, tmp_path_factory) -> Exports:
    clip = photo_clips(1, 4, seed=31, photos_dir=photos_dir)[0]
    state = warp_model.init_identity(clip.image[None], clip.keypoints[None])
    graph = TARGETS["tflite"].graph_for(BakedFrameGraph(warp_model, state, debug_outputs=True).eval(), "fused")
    evaluation = [{"keypoints": k[None].numpy()} for k in clip.drivers]
    # other poses of the same identity (the baked graph holds one)
    calibration = [{"keypoints": k[None].numpy()} for k in perturb_keypoints(clip.keypoints, 8, seed=33)]
    out = tmp_path_factory.mktemp("tflite_baked")
    return export_and_measure(parity, graph, evaluation, calibration, out / "baked", ("int8_dynamic", "int8"))


def test_baked_frame_graph(baked_exports):
    results, metrics = baked_exports.results, baked_exports.metrics
    assert LiteRtRunner(results["fp32"].path).input_names == [t.name for t in baked_exports.graph.input_spec()]
    assert metrics["fp32"]["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], metrics["fp32"]
    assert metrics["fp32"]["uv"]["uv_error_px"] < UV_TOLERANCE["fp32"].floor_px, metrics["fp32"]["uv"]
    # int8_dynamic used to fail at prepare (hybrid BATCH_MATMUL with a constant int8 lhs).
    assert metrics["int8_dynamic"]["image"]["psnr_db"] >= THRESHOLDS_DB["int8_dynamic"], metrics["int8_dynamic"]
    assert metrics["int8"]["image"]["psnr_db"] >= THRESHOLDS_DB["int8"], metrics["int8"]


# ------------------------------------------------------------------------------------ identity graph
SMALL = BilayerConfig(image_size=64, emb_num_channels=4, emb_max_channels=32, tex_num_channels=4, tex_max_channels=32,
                      pse_num_channels=16, inf_num_channels=2, inf_max_channels=16, enh_num_channels=4,
                      enh_max_channels=8, enh_bottleneck_tensor_size=32, enh_num_blocks=1, enh_unrolling_depth=2)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(5)
    model = BilayerModel(SMALL).eval()
    spectral_normalise_(model)
    model.has_enhancer = True
    return model


@pytest.mark.parametrize("enhancer", [True, False], ids=["enhancer", "no_enhancer"])
def test_identity_graph(parity, small_model, photos_dir, tmp_path, enhancer):
    model = copy.copy(small_model)
    model.has_enhancer = enhancer
    size = model.config.image_size  # 64: crops, stickmen and masks at the model's size
    clips = photo_clips(2, 1, seed=41, photos_dir=photos_dir, image_size=size)
    feeds = identity_feeds(clips, image_size=size)
    layout = adaptive_layout(model.init_identity(clips[0].image[None], clips[0].keypoints[None]))
    graph = IdentityGraph(model, layout).eval()
    result = export_tflite(graph, as_torch(feeds[0]), output_names(graph), tmp_path / "identity.tflite", "fp32")
    assert sorted(LiteRtRunner(result.path).input_names) == sorted(t.name for t in graph.input_spec())
    m = parity(graph, LiteRtRunner(result.path), feeds)
    assert m["texture"]["psnr_db"] >= THRESHOLDS_DB["fp32"] and m["texture"]["max_abs"] < 1e-3, m
    assert m["adaptive_params"]["psnr_db"] >= THRESHOLDS_DB["fp32"], m  # not gated; held to the fp32 gate anyway
    # The enhancer's grid_sample adjoint (scatter_add) becomes STABLEHLO_SCATTER, whose ADD
    # region LiteRT cannot run until it is rewritten to STABLEHLO_ADD.
    rewritten = any("STABLEHLO_SCATTER" in note for note in result.notes)
    assert rewritten == enhancer
    assert fix_scatter_regions(result.path.read_bytes())[1] == 0  # nothing left to fix


# ------------------------------------------------------------------------------------ strided constants
class StridedConstants(nn.Module):
    """Constants that are strided views of larger tensors (the litert-torch 0.10 trap)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        big = torch.randn(8, 16, 6, generator=g)
        self.register_buffer("weight", big[:, ::2, 1])  # non-contiguous view
        self.register_buffer("bias", big.transpose(0, 1)[3, :, 2])
        self.scale = torch.randn(3, 8, generator=g)[1]  # plain tensor attribute, a view

    def forward(self, x):
        return x @ self.weight * self.scale + self.bias


def test_contiguous_copy_and_strided_constants_convert_correctly(tmp_path):
    module = StridedConstants()
    assert not module.weight.is_contiguous()
    copied = contiguous_copy(module)
    for t in (copied.weight, copied.bias, copied.scale):
        assert t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * 4
    assert module.weight.data_ptr() != copied.weight.data_ptr()
    x = torch.randn(2, 8)
    result = export_tflite(module, {"x": x}, ["y"], tmp_path / "strided.tflite", "fp32")
    got = LiteRtRunner(result.path).infer({"x": x.numpy()})["y"]
    np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------ API and runner
def test_export_rejects_bad_requests(tmp_path):
    module = StridedConstants()
    with pytest.raises(ExportError, match="unknown precision"):
        export_tflite(module, {"x": torch.zeros(1, 8)}, ["y"], tmp_path / "a.tflite", "int4")
    for precision in (p for p in PRECISIONS if needs_calibration(p)):
        with pytest.raises(ExportError, match="calibration"):
            export_tflite(module, {"x": torch.zeros(1, 8)}, ["y"], tmp_path / "a.tflite", precision)
    with pytest.raises(ExportError, match="calibration feed keys"):
        export_tflite(module, {"x": torch.zeros(1, 8)}, ["y"], tmp_path / "a.tflite", "int8",
                      calibration=[{"z": np.zeros((1, 8), np.float32)}])
    assert not list(tmp_path.iterdir())


def test_runner_describes_and_checks_feeds(frame_exports, frame_data):
    graph, results = frame_exports.graph, frame_exports.results
    runner = LiteRtRunner(results["fp32"].path)
    shapes = {t.name: t.shape for t in runner.inputs}
    assert shapes["keypoints"] == (1, 136) and shapes["texture"] == (1, 3, 256, 256)
    assert shapes == {t.name: t.shape for t in graph.input_spec()}
    assert all(t.dtype == np.float32 and not t.quantized and t.scales == () for t in runner.inputs + runner.outputs)
    feed = frame_data[1][0]
    out = runner.infer(feed)
    assert {name: value.shape for name, value in out.items()} == {t.name: t.shape for t in graph.output_spec()}
    assert out["image"].shape == (1, 3, 256, 256) and out["uv"].shape == (1, 256, 256, 2)
    with pytest.raises(FeedError, match=r"missing \['adaptive_params', 'texture'\]"):
        runner.infer({"keypoints": feed["keypoints"]})
    with pytest.raises(FeedError, match=r"unexpected \['extra'\]"):
        runner.infer({**feed, "extra": np.zeros((1,), np.float32)})
    with pytest.raises(FeedError, match="shape"):
        runner.infer({**feed, "keypoints": np.zeros((2, 136), np.float32)})
    with pytest.raises(FeedError, match="complex64"):
        runner.infer({**feed, "keypoints": feed["keypoints"].astype(np.complex64)})
    with pytest.raises(ModelFileError, match="does not exist"):
        LiteRtRunner(results["fp32"].path.with_name("missing.tflite"))


# ------------------------------------------------------------------------------------ paper size
@pytest.mark.slow
def test_paper_frame_graph_gates(parity, default_model_paper, photos_dir, tmp_path):
    """The paper-size default model on real faces: fp32 and int8 (mixed) pass their gates, and the
    mixed recipe is clearly better than quantizing every op, the warp's coordinates included."""
    model = default_model_paper
    calibration = frame_feeds(model, photo_clips(2, 4, seed=101, photos_dir=photos_dir))
    evaluation_clips = photo_clips(2, 2, seed=202, photos_dir=photos_dir)
    evaluation = frame_feeds(model, evaluation_clips)
    clip = evaluation_clips[0]
    graph = FrameGraph(model, adaptive_layout(model.init_identity(clip.image[None], clip.keypoints[None])),
                       debug_outputs=True).eval()
    graph = TARGETS["tflite"].graph_for(graph, "fused")  # as bundles ship it
    exports = export_and_measure(parity, graph, evaluation, calibration, tmp_path / "frame", ("int8", "int8_full"))
    metrics = exports.metrics
    assert metrics["fp32"]["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], metrics["fp32"]
    assert metrics["int8"]["image"]["psnr_db"] >= THRESHOLDS_DB["int8"], metrics["int8"]
    assert metrics["int8_full"]["image"]["psnr_db"] < metrics["int8"]["image"]["psnr_db"] - 3, metrics["int8_full"]
