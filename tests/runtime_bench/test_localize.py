"""Per-tensor localisation of a quantized artifact's divergence (runtime_bench.localize).

A small frame graph with a realistic warp (golden_tiny's architecture built with the default-model
recipe: standing statistics, ~3 px warp) is exported at fp32 and int8_full for both targets; the
int8_full artifact quantizes the sampling coordinates, and the localisation must point into the
warp (the ops from the grid add to the sampler), not into the conv stack. About a minute.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import pytest
import torch

from bilayer_mobile.export.calibration import frame_feeds, photo_clips
from bilayer_mobile.export.graphs import FrameGraph, adaptive_layout
from bilayer_mobile.export.onnx_export import export_onnx
from bilayer_mobile.export.target import output_names
from bilayer_mobile.export.targets import TARGETS
from bilayer_mobile.export.tflite import export_tflite
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB
from bilayer_mobile.runtime_bench.localize import FLOOR_DB, Localization, localize_divergence
from bilayer_mobile.runtime_bench.report import localization_line
from bilayer_mobile.runtime_bench.validate import localize_failure

RUNTIME = {name: TARGETS[name].runtime for name in ("onnx", "tflite")}  # the runtime that runs each target's files


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    from bilayer_mobile.reference.default_model import DefaultModelRecipe, build_default_model

    logging.disable(logging.WARNING)
    try:
        torch.manual_seed(0)
        model = build_default_model(tiny_model.config, DefaultModelRecipe(stats_identities=4, uv_identities=2,
                                                                           with_enhancer=False)).eval()
        evaluation, calibration = photo_clips(1, 2, seed=202), photo_clips(2, 2, seed=101)
        feeds, calib = frame_feeds(model, evaluation), frame_feeds(model, calibration)
        state = model.init_identity(evaluation[0].image[None], evaluation[0].keypoints[None])
        graph = FrameGraph(model, adaptive_layout(state), debug_outputs=True).eval()
        example = {k: torch.from_numpy(v) for k, v in feeds[0].items()}
        names = output_names(graph)
        out = tmp_path_factory.mktemp("localize")
        paths = {}
        for precision in ("fp32", "int8_full"):
            paths["onnx", precision] = export_onnx(graph, example, names, out / f"frame_{precision}.onnx",
                                                   precision, calibration=calib).path
        fp32 = export_tflite(graph, example, names, out / "frame_fp32.tflite", "fp32")
        paths["tflite", "fp32"] = fp32.path
        paths["tflite", "int8_full"] = export_tflite(graph, example, names, out / "frame_int8_full.tflite",
                                                     "int8_full", calibration=calib, float_model=fp32.path).path
    finally:
        logging.disable(logging.NOTSET)
    return paths, feeds, graph


def warp_and_image(graph) -> tuple[str, str]:
    """The names of the graph's sampling-grid output and of its gated image, from its contract."""
    specs = graph.output_spec()
    return next(t.name for t in specs if t.kind == "warp"), next(t.name for t in specs if t.gated)


def warp_tensors(target: str, path, graph) -> tuple[set[str], str]:
    """Names of the uv tensor and of everything computed from it before the image output (the
    sampler), and the image output's name, in the float model."""
    uv, image = warp_and_image(graph)
    if target == "onnx":
        model = onnx.load(path)
        edges = [(list(n.input), list(n.output)) for n in model.graph.node]
    else:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        details = interp.get_tensor_details()
        name = lambda i: details[i]["name"]
        edges = [([name(i) for i in op["inputs"] if i >= 0], [name(i) for i in op["outputs"]])
                 for op in interp._get_ops_details()]
        outs = interp.get_signature_runner().get_output_details()
        uv, image = name(outs[uv]["index"]), name(outs[image]["index"])
    reached = {uv}
    for inputs, outputs in edges:  # execution order is topological
        if reached & set(inputs):
            reached |= set(outputs)
    return reached - {image}, image


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_int8_full_first_jump_is_in_the_warp(artifacts, target):
    paths, feeds, graph = artifacts
    loc = localize_divergence(RUNTIME[target], paths[target, "fp32"], paths[target, "int8_full"], feeds[0])
    assert isinstance(loc, Localization) and loc.runtime == RUNTIME[target]
    assert len(loc.drifts) > 100, loc.note  # intermediates were observed and matched, not just the outputs
    positions = [d.position for d in loc.drifts]
    assert positions == sorted(positions), "drifts are not in the float model's execution order"
    jump = loc.first_jump
    assert jump is not None, loc.note
    warp, image = warp_tensors(target, paths[target, "fp32"], graph)
    assert jump.name in warp, f"first jump {jump} is not in the warp ({loc.note})"
    # under the floor the rule uses by default, the int8 gate
    assert FLOOR_DB == THRESHOLDS_DB["int8"]
    assert jump.psnr_db < FLOOR_DB and jump.max_abs > 0
    # the coordinates themselves are still "good" by PSNR: the sampler is what amplifies their error
    by_name = {d.name: d for d in loc.drifts}
    uv_output = warp_and_image(graph)[0]
    uv = uv_output if target == "onnx" else next(n for n in warp if n.endswith(f"{uv_output}_output"))
    assert by_name[uv].psnr_db > jump.psnr_db + 10
    # every compute op of the conv stack (before the warp) stays above the jump
    assert all(d.psnr_db > jump.psnr_db for d in loc.drifts if d.position < by_name[uv].position and d.op_type in
               ("Conv", "MatMul", "Gemm", "CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")), loc.note
    assert by_name[image].psnr_db < THRESHOLDS_DB["int8"]  # and the failure shows at the output
    assert f"first jump: {jump.name}" in loc.note


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_same_float_model_twice_has_no_jump(artifacts, target):
    paths, feeds, _ = artifacts
    loc = localize_divergence(RUNTIME[target], paths[target, "fp32"], paths[target, "fp32"], feeds[0])
    assert loc.first_jump is None, loc.note
    assert len(loc.drifts) > 100
    assert all(math.isinf(d.psnr_db) and d.max_abs == 0 for d in loc.drifts)
    assert "no jump" in loc.note


def test_localisation_is_by_runtime_name(artifacts):
    """A runtime without per-tensor localisation, or a target's name passed by mistake, gives an
    empty localisation that says why (validate records it; the gate's verdict stands)."""
    paths, feeds, _ = artifacts
    for name in ("coreml", "onnx", "tflite"):
        loc = localize_divergence(name, paths["onnx", "fp32"], paths["onnx", "int8_full"], feeds[0])
        assert loc.runtime == name and loc.first_jump is None and loc.drifts == [] and repr(name) in loc.note, loc


def test_validate_attaches_the_localisation(artifacts, tmp_path):
    """validate's hook: the failed int8 artifact is localised against the bundle's fp32 artifact."""
    paths, feeds, _ = artifacts
    (tmp_path / "models").mkdir()
    (tmp_path / "golden").mkdir()
    for precision in ("fp32", "int8_full"):
        (tmp_path / "models" / paths["onnx", precision].name).write_bytes(paths["onnx", precision].read_bytes())
    np.savez(tmp_path / "golden" / "frame.npz", **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    inputs = [{"name": k} for k in feeds[0]]
    entry = lambda p, name: {"name": name, "graph": "frame", "target": "onnx", "runtime": RUNTIME["onnx"],
                             "precision": p, "inputs": inputs, "file": f"models/frame_{name}.onnx",
                             "golden": "golden/frame.npz"}
    failed = entry("int8", "int8_full")
    manifest = {"artifacts": [entry("fp32", "fp32"), failed]}
    loc = localize_failure(tmp_path, manifest, failed, 1)
    assert loc["first_jump"]["op_type"] == "GridSample" and loc["against"] == "fp32" and loc["sample"] == 1
    json.dumps(loc)  # parity.json must be able to hold it
    assert localization_line(loc).startswith("first divergence: grid_sampler (GridSample) at position ")
    # no fp32 artifact of that graph and target: nothing to compare with
    assert localize_failure(tmp_path, {"artifacts": [failed]}, failed, 0) is None
