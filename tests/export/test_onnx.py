"""ONNX target: exported identity / frame / baked graphs pass the full checker and match PyTorch
in onnxruntime; reduced precisions stay within bounds; the int8 recipe keeps the warp and full
int8 of the warp is caught by the parity gate.

Fast tests use golden_tiny (small channel counts, official layout, enhancer) and a tiny model
built with the default-model recipe (standing statistics, 3 px warp) where the figure depends on
trained-like behaviour. One slow test measures the paper-size default model.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bilayer_mobile.export.calibration import frame_feeds, identity_feeds, photo_clips
from bilayer_mobile.export.errors import ExportError
from bilayer_mobile.export.graphs import BakedFrameGraph, FrameGraph, IdentityGraph, adaptive_layout
from bilayer_mobile.export.onnx_export import export_onnx
from bilayer_mobile.export.precisions import PRECISIONS, needs_calibration
from bilayer_mobile.export.target import output_names
from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.runtime_bench.compare import FIGURE_PSNR_CEILING_DB, THRESHOLDS_DB, UV_TOLERANCE
from bilayer_mobile.runtime_bench.onnxruntime_runner import OnnxRuntimeRunner
from bilayer_mobile.runtime_bench.runner import FeedError, ModelFileError


@pytest.fixture(autouse=True)
def _quiet_quantizer():
    logging.disable(logging.WARNING)  # onnxruntime.quantization logs "consider pre-processing" per call
    yield
    logging.disable(logging.NOTSET)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def runner_of(path: Path, graph, feeds) -> OnnxRuntimeRunner:
    """The artifact in onnxruntime, its boundary checked beyond what `parity` checks: inputs and
    outputs in the contract's order (the session is called by position), every output float32."""
    runner = OnnxRuntimeRunner(path)
    assert runner.input_names == [t.name for t in graph.input_spec()] == list(feeds[0])
    assert runner.output_names == output_names(graph)
    for name, value in runner.infer(feeds[0]).items():
        assert value.dtype == np.float32, f"{name} is {value.dtype}: graph outputs must stay float32"
    return runner


def example(feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in feed.items()}


def checked(path: Path) -> onnx.ModelProto:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return model


def grid_producer(model: onnx.ModelProto) -> str:
    """Op type of the node that produces GridSample's grid input."""
    producers = {o: n for n in model.graph.node for o in n.output}
    grid = next(n for n in model.graph.node if n.op_type == "GridSample").input[1]
    return producers[grid].op_type


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips():
    return {"eval": photo_clips(2, 2, seed=202), "calib": photo_clips(4, 4, seed=101)}


@pytest.fixture(scope="module")
def tiny_frame(tiny_model, clips):
    """golden_tiny frame graph (its random-init warp is large, ~60 px) and real-face feeds."""
    feeds = frame_feeds(tiny_model, clips["eval"])
    state = tiny_model.init_identity(clips["eval"][0].image[None], clips["eval"][0].keypoints[None])
    return FrameGraph(tiny_model, adaptive_layout(state), debug_outputs=True).eval(), feeds


@pytest.fixture(scope="module")
def tiny_layout(tiny_model, clips):
    """golden_tiny's adaptive layout (the same for every identity, with or without the enhancer)."""
    return adaptive_layout(tiny_model.init_identity(clips["eval"][0].image[None], clips["eval"][0].keypoints[None]))


# ------------------------------------------------------------------------------------------------
# fp32 parity of the three graphs
# ------------------------------------------------------------------------------------------------
def test_frame_graph_fp32_matches_torch(parity, tiny_frame, tmp_path):
    graph, feeds = tiny_frame
    path = tmp_path / "frame.onnx"
    result = export_onnx(graph, example(feeds[0]), output_names(graph), path, "fp32")
    assert result.path == path and result.precision == "fp32" and result.float_ops is None
    model = checked(path)
    assert [i.name for i in model.graph.input] == [t.name for t in graph.input_spec()]
    assert [o.name for o in model.graph.output] == output_names(graph)
    assert result.opset == 18
    gs = next(n for n in model.graph.node if n.op_type == "GridSample")
    attrs = {a.name: (a.s.decode() if a.s else a.i) for a in gs.attribute}
    assert attrs["align_corners"] == 0 and attrs["padding_mode"] == "zeros" and attrs["mode"] in ("bilinear", "linear")
    assert [p.name for p in tmp_path.iterdir()] == ["frame.onnx"], "temporary files left behind"
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    # fp32 differs from PyTorch by float round-off only: above the PSNR that compare treats as
    # round-off (FIGURE_PSNR_CEILING_DB), far above the fp32 gate
    assert metrics["image"]["max_abs"] < 2e-3, metrics
    assert metrics["image"]["psnr_db"] > FIGURE_PSNR_CEILING_DB, metrics
    for name in ("mask", "lowfreq"):
        assert metrics[name]["max_abs"] < 1e-4, metrics
    assert metrics["uv"]["uv_error_px"] < 1e-3, metrics


def test_baked_frame_graph_fp32_matches_torch(parity, tiny_model, clips, tmp_path):
    c = clips["eval"][0]
    state = tiny_model.init_identity(c.image[None], c.keypoints[None])
    graph = BakedFrameGraph(tiny_model, state, debug_outputs=True).eval()
    feeds = [{"keypoints": k[None].numpy()} for k in c.drivers]
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "baked.onnx", "fp32")
    model = checked(result.path)
    assert [i.name for i in model.graph.input] == [t.name for t in graph.input_spec()] == ["keypoints"]
    # the texture is baked in: a [1, 3, 256, 256] initializer
    assert any(tuple(i.dims) == (1, 3, 256, 256) for i in model.graph.initializer)
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    assert metrics["image"]["max_abs"] < 2e-3 and metrics["image"]["psnr_db"] > FIGURE_PSNR_CEILING_DB, metrics
    assert metrics["mask"]["max_abs"] < 1e-4, metrics


def test_identity_graph_with_enhancer_fp32_matches_torch(parity, tiny_model, tiny_layout, clips, tmp_path):
    assert tiny_model.has_enhancer
    graph = IdentityGraph(tiny_model, tiny_layout).eval()
    feeds = identity_feeds(clips["eval"][:1])
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "identity.onnx", "fp32")
    model = checked(result.path)
    assert result.opset >= 16
    scatters = [n for n in model.graph.node if n.op_type == "ScatterElements"]
    assert scatters, "the enhancer's scatter-add adjoint is missing"
    for node in scatters:
        assert {a.name: a.s for a in node.attribute}.get("reduction") == b"add"
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    assert metrics["texture"]["max_abs"] < 1e-3 and metrics["texture"]["psnr_db"] > FIGURE_PSNR_CEILING_DB, metrics
    assert metrics["adaptive_params"]["max_abs"] < 1e-4, metrics
    # and the graph computes what the reference computes
    c = clips["eval"][0]
    state = tiny_model.init_identity(c.image[None], c.keypoints[None])
    out = OnnxRuntimeRunner(result.path).infer(feeds[0])
    assert np.abs(out["texture"] - state.enhanced_texture.numpy()).max() < 1e-3


def test_identity_graph_without_enhancer_fp32_matches_torch(parity, tiny_model, tiny_layout, clips, tmp_path):
    model_base = copy.deepcopy(tiny_model)
    model_base.has_enhancer = False
    graph = IdentityGraph(model_base, tiny_layout).eval()
    feeds = identity_feeds(clips["eval"][:1])
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "identity_base.onnx", "fp32")
    model = checked(result.path)
    assert not any(n.op_type in ("ScatterElements", "GridSample") for n in model.graph.node)
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    assert metrics["texture"]["max_abs"] < 1e-4 and metrics["adaptive_params"]["max_abs"] < 1e-4, metrics


# ------------------------------------------------------------------------------------------------
# reduced precisions
# ------------------------------------------------------------------------------------------------
def test_fp16_frame_graph(parity, realistic_frame, tmp_path):
    graph, feeds, _ = realistic_frame
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "f16.onnx", "fp16")
    model = checked(result.path)
    io_types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}
    big = [i for i in model.graph.initializer if np.prod(i.dims) >= 1024]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["fp16"], metrics
    assert metrics["uv"]["uv_error_px"] < UV_TOLERANCE["fp16"].floor_px, metrics


def test_fp16_identity_graph_keeps_scatter_add_float(parity, tiny_model, tiny_layout, clips, tmp_path):
    """onnxruntime's CPU provider has no float16 ScatterElements(reduction=add): it must stay float32."""
    graph = IdentityGraph(tiny_model, tiny_layout).eval()
    feeds = identity_feeds(clips["eval"][:1])
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "identity_f16.onnx", "fp16")
    checked(result.path)
    assert result.float_ops.get("ScatterElements", 0) > 0, result.float_ops
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)  # fails at run time if a scatter is fp16
    assert metrics["texture"]["psnr_db"] >= THRESHOLDS_DB["fp16"], metrics


def test_int8_dynamic_frame_graph(parity, realistic_frame, tmp_path):
    graph, feeds, _ = realistic_frame
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "dyn.onnx", "int8_dynamic")
    model = checked(result.path)
    ops = {n.op_type for n in model.graph.node}
    assert ops & {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}, ops
    assert "GridSample" in result.float_ops
    metrics = parity(graph, runner_of(result.path, graph, feeds), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["int8_dynamic"], metrics
    assert metrics["uv"]["uv_error_px"] < UV_TOLERANCE["int8_dynamic"].floor_px, metrics


def test_int8_calibration_does_not_depend_on_the_texture(tiny_model, tiny_frame, clips, tmp_path):
    """The bundle calibrates the frame graph on base textures (no enhancer pass): no quantized op
    reads the texture, which only enters the float warp, so the int8 model is the same file."""
    from bilayer_mobile.export.calibration import calibration_frame_feeds

    graph, feeds = tiny_frame
    enhanced = frame_feeds(tiny_model, clips["calib"][:2])
    base = calibration_frame_feeds(tiny_model, clips["calib"][:2])
    assert tiny_model.has_enhancer
    assert np.abs(enhanced[0]["texture"] - base[0]["texture"]).max() > 0.1  # really other textures
    paths = []
    for name, calibration in (("enhanced", enhanced), ("base", base)):
        paths.append(export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / f"{name}.onnx", "int8",
                                 calibration=calibration).path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def integer_weight_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the 8-bit weights that integer kernels multiply: the constant inputs of
    DequantizeLinear (QDQ) and of ConvInteger / MatMulInteger / DynamicQuantizeMatMul."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    slots = {"DequantizeLinear": (0,), "ConvInteger": (1,), "MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,)}
    found = {inits[n.input[k]] for n in model.graph.node for k in slots.get(n.op_type, ())
             if len(n.input) > k and n.input[k] in inits}
    return found - {onnx.TensorProto.INT32}  # int32 biases are added after the accumulation


@pytest.mark.parametrize("precision", ["int8", "int8_dynamic"])
def test_int8_recipes_do_not_depend_on_the_cpu_int8_kernels(realistic_frame, tmp_path, precision):
    """u8 x u8 only: onnxruntime's x86 u8 x s8 path (VPMADDUBSW) saturates int16 pair sums on CPUs
    without VNNI, its u8 x u8 path does not. `session.x64quantprecision=1` makes onnxruntime
    convert s8 weights to u8 at load; on a u8-only model it must change nothing. (On a VNNI CPU
    both sessions are exact anyway; on an AVX2-only CPU, such as CI's, an s8 weight would differ.)"""
    import onnxruntime as ort

    graph, feeds, calib = realistic_frame
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / f"{precision}.onnx", precision,
                         calibration=calib if precision == "int8" else None)
    model = checked(result.path)
    assert integer_weight_types(model) == {onnx.TensorProto.UINT8}
    activations = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    activation_types = {inits[z] for z in activations if z in inits}
    assert activation_types == ({onnx.TensorProto.UINT8} if precision == "int8" else set())  # dynamic: at run time

    def run(precise: str):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.x64quantprecision", precise)
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        return [session.run(None, feed) for feed in feeds]

    for fast, precise in zip(run("0"), run("1")):
        for a, b in zip(fast, precise):
            np.testing.assert_array_equal(a, b)


def test_int8_keeps_the_warp_and_full_int8_is_caught(parity, realistic_frame, tmp_path):
    graph, feeds, calib = realistic_frame
    mixed = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "int8.onnx", "int8", calibration=calib)
    full = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "full.onnx", "int8_full", calibration=calib)
    mixed_model, full_model = checked(mixed.path), checked(full.path)
    # the recipe: Conv/MatMul/Gemm in int8, the sampling grid float
    assert sum(n.op_type == "QuantizeLinear" for n in mixed_model.graph.node) > 0
    assert {"GridSample", "Add", "Tanh"} <= set(mixed.float_ops), mixed.float_ops
    assert "Conv" not in mixed.float_ops or mixed.float_ops["Conv"] <= 1  # only the UV head may stay float
    assert grid_producer(mixed_model) != "DequantizeLinear"
    assert grid_producer(full_model) == "DequantizeLinear"  # full int8 quantizes the coordinates
    m_mixed = parity(graph, runner_of(mixed.path, graph, feeds), feeds)
    m_full = parity(graph, runner_of(full.path, graph, feeds), feeds)
    gate = THRESHOLDS_DB["int8"]
    assert m_mixed["image"]["psnr_db"] >= gate, m_mixed
    assert m_full["image"]["psnr_db"] < gate, f"full int8 of the warp was not caught: {m_full}"
    assert m_mixed["image"]["psnr_db"] > m_full["image"]["psnr_db"] + 3
    assert m_full["uv"]["uv_error_px"] > 1.5 * m_mixed["uv"]["uv_error_px"], (m_mixed["uv"], m_full["uv"])


# ------------------------------------------------------------------------------------------------
# API edges and the runner
# ------------------------------------------------------------------------------------------------
def test_bad_arguments(tiny_frame, tmp_path):
    graph, feeds = tiny_frame
    with pytest.raises(ExportError, match="precision 'int4'"):
        export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "x.onnx", "int4")
    calibrated = [p for p in PRECISIONS if needs_calibration(p)]
    assert "int8" in calibrated
    for precision in calibrated:
        with pytest.raises(ExportError, match="calibration"):
            export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "x.onnx", precision)
    assert not (tmp_path / "x.onnx").exists()


def test_runner_reports_io_and_rejects_bad_feeds(tiny_frame, tmp_path):
    graph, feeds = tiny_frame
    result = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "f.onnx", "fp32")
    runner = OnnxRuntimeRunner(result.path)
    # every input and output as the contract declares it (names in order, shapes, float32)
    for infos, specs in ((runner.inputs, graph.input_spec()), (runner.outputs, graph.output_spec())):
        assert [(i.name, i.shape, i.dtype) for i in infos] == [(t.name, t.shape, np.dtype(t.dtype)) for t in specs]
        assert not any(i.quantized for i in infos)
    assert {t.name: t.shape for t in runner.inputs}["texture"] == (1, 3, 256, 256)
    assert runner.infer(feeds[0])["uv"].shape == (1, 256, 256, 2)
    assert issubclass(FeedError, InputError)  # a user's error: the CLI prints it in one line
    with pytest.raises(FeedError, match=r"missing \['adaptive_params', 'texture'\]"):
        runner.infer({"keypoints": feeds[0]["keypoints"]})
    with pytest.raises(FeedError, match=r"unexpected \['extra'\]"):  # onnxruntime itself used to accept it
        runner.infer({**feeds[0], "extra": np.zeros((1,), np.float32)})
    with pytest.raises(FeedError, match="shape"):
        runner.infer(dict(feeds[0], texture=np.zeros((1, 3, 128, 128), np.float32)))
    with pytest.raises(FeedError, match="complex64"):
        runner.infer(dict(feeds[0], keypoints=feeds[0]["keypoints"].astype(np.complex64)))
    # a float64 feed of the right values is cast, not rejected
    np.testing.assert_array_equal(runner.infer(dict(feeds[0], keypoints=feeds[0]["keypoints"].astype(np.float64)))["image"],
                                  runner.infer(feeds[0])["image"])
    with pytest.raises(ModelFileError, match="does not exist"):
        OnnxRuntimeRunner(tmp_path / "missing.onnx")


# ------------------------------------------------------------------------------------------------
# paper size
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_frame_graph_fp32_and_int8(parity, default_model_paper, tmp_path):
    m = default_model_paper
    eval_clips, calib_clips = photo_clips(2, 2, seed=202), photo_clips(4, 2, seed=101)
    feeds, calib = frame_feeds(m, eval_clips), frame_feeds(m, calib_clips)
    state = m.init_identity(eval_clips[0].image[None], eval_clips[0].keypoints[None])
    graph = FrameGraph(m, adaptive_layout(state), debug_outputs=True).eval()
    fp32 = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "frame.onnx", "fp32")
    checked(fp32.path)
    metrics = parity(graph, runner_of(fp32.path, graph, feeds), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["fp32"], metrics
    int8 = export_onnx(graph, example(feeds[0]), output_names(graph), tmp_path / "frame_int8.onnx", "int8", calibration=calib)
    checked(int8.path)
    metrics = parity(graph, runner_of(int8.path, graph, feeds), feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["int8"], metrics
