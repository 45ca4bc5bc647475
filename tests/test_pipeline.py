"""The export pipeline (export -> runtime_bench validation -> publish): a self-describing
bundle whose every artifact runs from the manifest alone, with failures rejected, not published."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bilayer_mobile.cli import main
from bilayer_mobile.export.bundle import ExportConfig
from bilayer_mobile.export.errors import ExportError
from bilayer_mobile.export.graphs import BakedFrameGraph, FrameGraph, IdentityGraph
from bilayer_mobile.export.onnx_export import OnnxTarget
from bilayer_mobile.export.targets import TARGETS
from bilayer_mobile.pipeline import ValidationFailed, export_bundle
from bilayer_mobile.reference.face_tracking import DRIVER_MODEL_NAMES
from bilayer_mobile.reference.files import sha256_file, sha256_tree
from bilayer_mobile.runtime_bench.runners import make_runner
from bilayer_mobile.runtime_bench.validate import BundleError, validate_bundle


@pytest.fixture(scope="module")
def mobile_bundle(small_model, tmp_path_factory) -> Path:
    """The frame graphs through the other three targets: Core ML (fp32, fp16), ExecuTorch (fp32;
    its int8 is tests/export/test_executorch.py's) and the NNAPI profile (baked frame, fp32)."""
    out = tmp_path_factory.mktemp("bundles") / "mobile"
    export_bundle(small_model, ExportConfig(out=out, targets=("coreml", "executorch", "nnapi"),
                                            precisions=("fp32", "fp16"), graphs=("frame", "baked_frame"),
                                            golden_identities=1, golden_frames=2, driver_models=False),
                  "small default model", console=io.StringIO(), gpu="off")
    return out


def test_manifest_describes_every_file_truthfully(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {(a["graph"], a["target"], a["precision"]) for a in manifest["artifacts"]}
    driver = {(name, "mediapipe", "fp32") for name in DRIVER_MODEL_NAMES}  # the face models, as published
    assert names == driver | {(g, t, p) for g in ("identity", "frame", "baked_frame", "split_frame")
                              for t in ("onnx", "tflite") for p in ("fp32", "fp16")}
    assert set(manifest["driver"]["models"]) == set(DRIVER_MODEL_NAMES) and len(manifest["driver"]["ibug68"]["rows"]) == 68
    # the split graph's shaders are shipped, hashed, and its golden file holds what composites it
    assert set(manifest["shaders"]) == {"shaders/composite.frag", "shaders/composite.wgsl"}
    for rel, entry in manifest["shaders"].items():
        assert sha256_file(bundle / rel) == entry["sha256"]
    with np.load(bundle / "golden" / "split_frame.npz") as golden:
        assert {"keypoints", "adaptive_params", "uv", "lowfreq", "mask", "texture", "image"} <= set(golden.files)
    for artifact in manifest["artifacts"]:
        path = bundle / artifact["file"]
        assert sha256_file(path) == artifact["sha256"] and path.stat().st_size == artifact["size_bytes"]
        runner = make_runner(artifact["runtime"], path)  # run it from the manifest alone
        with np.load(bundle / artifact["golden"]) as golden:
            feed = {i["name"]: golden[i["name"]][0] for i in artifact["inputs"]}
            for i in artifact["inputs"]:
                assert list(golden[i["name"]].shape[1:]) == i["shape"], (artifact["name"], i["name"])
            outputs = runner.infer(feed)
            for o in artifact["outputs"]:
                assert list(outputs[o["name"]].shape) == o["shape"] == list(golden[o["name"]].shape[1:])
                assert np.abs(outputs[o["name"]] - golden[o["name"]][0]).max() < 0.05, (artifact["name"], o["name"])
    layout = manifest["adaptive_params_layout"]
    assert len(layout) == 18 and layout[-1]["offset"] + sum(
        np.prod(layout[-1][k]) for k in ("weight_shape", "bias_shape")) == manifest["artifacts"][0]["outputs"][1]["shape"][1]
    assert (bundle / "reports" / "parity.md").is_file() and (bundle / "reports" / "worst_artifact.png").is_file()
    assert (bundle / "reports" / "margins.png").is_file()
    assert manifest["rejected"] == [] and not (bundle / "rejected").exists()
    log = (bundle / "reports" / "export.log").read_text()  # the converters' chatter is kept, with the tool's log
    # C++ lines (written to file descriptor 2 directly, with their source location) and the tool's
    # own log record; which C++ INFO lines appear depends on what ran before in the process (the
    # converter's "Estimated count of arithmetic ops" is there when this file runs alone, absent
    # after the whole suite), so no particular one is asserted; tests/test_console.py holds the
    # mechanism to every kind of writer
    assert re.search(r"\w+\.cc:\d+\]", log) and "[bilayer_mobile.export.tflite] converting FrameGraph" in log


def test_manifest_contracts_are_the_graphs_own(bundle, small_model):
    """Every artifact's inputs and outputs in the manifest are its graph's declared spec, and the
    runtime model honours them (names, shapes, dtypes)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    layout = [dict(e) for e in manifest["adaptive_params_layout"]]
    from bilayer_mobile.export.graphs import AdaptiveEntry

    entries = [AdaptiveEntry(e["index"], e["kind"], tuple(e["weight_shape"]), tuple(e["bias_shape"]), e["offset"])
               for e in layout]
    specs = {"identity": IdentityGraph(small_model, entries), "frame": FrameGraph(small_model, entries, True)}
    for name, graph in specs.items():
        assert manifest["graphs"][name]["inputs"] == [t.as_dict() for t in graph.input_spec()]
        assert manifest["graphs"][name]["outputs"] == [t.as_dict() for t in graph.output_spec()]
    for artifact in manifest["artifacts"]:
        graph = manifest["graphs"][artifact["graph"]]
        assert (artifact["inputs"], artifact["outputs"]) == (graph["inputs"], graph["outputs"])
        runner = make_runner(artifact["runtime"], bundle / artifact["file"])
        assert runner.check_contract(artifact["inputs"], artifact["outputs"]) == [], artifact["name"]
        published = artifact["target"] == "mediapipe"  # the driver models, shipped as published
        assert artifact["runtime"] == ("litert" if published else TARGETS[artifact["target"]].runtime)
    assert manifest["data"]["golden"]["identities"] and manifest["data"]["calibration"]["identities"]


def test_manifest_and_report_name_the_machine_of_every_figure(bundle):
    from bilayer_mobile.runtime_bench.machine import describe_machine

    manifest = json.loads((bundle / "manifest.json").read_text())
    machine = manifest["validation"]["machine"]
    assert machine["kernel_features"] == describe_machine()["kernel_features"]
    assert machine["runtimes"]["onnxruntime"] and machine["runtimes"]["ai-edge-litert"]
    figures = manifest["validation"]["figures"]
    gpu_runs = {f"{a['name']}@litert_gpu" for a in manifest["artifacts"]  # the frame graphs and driver models
                if a["runtime"] == "litert" and a["graph"] != "identity"}
    shaders = {f"{rel} ({mode} sampling)" for rel in manifest["shaders"] for mode in ("manual", "hardware")}
    assert set(figures) == {a["name"] for a in manifest["artifacts"]} | gpu_runs | shaders
    assert all(f["passed"] for f in figures.values())
    assert figures["frame_fp32_onnx"]["uv_limit_px"] > 0 and figures["identity_fp32_onnx"]["uv_error_px"] is None
    report = json.loads((bundle / "reports" / "parity.json").read_text())
    assert report["machine"]["cpu"] == machine["cpu"]
    assert machine["cpu"] in (bundle / "reports" / "parity.md").read_text()


def test_validate_reports_figures_that_moved_from_the_recorded_ones(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert main(["validate", str(copy), "--gpu", "off"]) == 0  # drift is a CPU matter: no GPU runs needed
    assert "every figure is within the drift tolerance" in capsys.readouterr().out
    # as if the bundle had been exported on a machine where frame_fp16_tflite measured 45 dB
    manifest["validation"]["figures"]["frame_fp16_tflite"]["gated_psnr_db"] = 45.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", str(copy), "--gpu", "off"]) == 0  # drift is reported, the gate decides
    out = capsys.readouterr().out
    assert "figures that differ from the bundle's recorded ones" in out
    assert "frame_fp16_tflite: image 45.0 ->" in out and "frame_fp32_onnx:" not in out


def test_validate_passes_and_reports(bundle, capsys):
    assert main(["validate", str(bundle)]) == 0
    out = capsys.readouterr().out
    # 16 avatar artifacts and 3 driver models; 16 + 3 runs in their runtime, 6 frame graphs and 3
    # driver models again on the GPU accelerator, 4 shader runs
    assert "fp32 >= 60 dB" in out and "PASS: 19 artifacts in 32 runs" in out
    report = json.loads((bundle / "reports" / "parity.json").read_text())
    for artifact in report["artifacts"]:
        gated = {"identity": ["texture"]}.get(artifact["graph"], ["image"])
        if artifact["graph"] in DRIVER_MODEL_NAMES:
            gated = artifact["gated_outputs"]
            assert len(gated) == (2 if "detector" in artifact["graph"] else 1)
        for name in gated:
            assert float(artifact["outputs"][name]["psnr_db"]) >= artifact["threshold_db"]


def test_tampered_model_is_caught_before_running(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    model = copy / "models" / "frame_fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="frame_fp32.onnx does not match manifest.json"):
        validate_bundle(copy)
    assert main(["validate", str(copy)]) == 2
    assert "was modified or truncated" in capsys.readouterr().err


def test_bad_options_and_existing_output_leave_nothing(small_model, bundle, tmp_path, capsys):
    with pytest.raises(ExportError, match="unknown precision 'int4'"):
        ExportConfig(out=tmp_path / "x", precisions=("int4",))
    assert main(["export", "--targets", "onnx,caffe", "--out", str(tmp_path / "y")]) == 2
    assert "unknown target 'caffe'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(small_model, ExportConfig(out=bundle), "x", console=io.StringIO())
    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class CrashingOnnx(OnnxTarget):
    """The ONNX target with a converter that crashes on some precisions (or on every graph)."""

    def __init__(self, precisions=(), float_conversion=False):
        self.crash_precisions, self.crash_float = set(precisions), float_conversion

    def convert_float(self, graph, example_inputs):
        if self.crash_float:
            raise RuntimeError("converter crashed")
        return super().convert_float(graph, example_inputs)

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None):
        if precision in self.crash_precisions:
            raise RuntimeError("converter crashed")
        return super().export(graph, example_inputs, precision, path, calibration, float_model)


def test_an_artifact_that_cannot_be_produced_is_rejected_and_a_total_failure_writes_nothing(
        small_model, tmp_path, monkeypatch):
    small = dict(golden_identities=1, golden_frames=1, calibration_identities=1, calibration_frames=1,
                 driver_models=False)
    monkeypatch.setitem(TARGETS, "onnx", CrashingOnnx(precisions={"fp16"}))
    result = export_bundle(small_model, ExportConfig(out=tmp_path / "b", targets=("onnx",), precisions=("fp32", "fp16"),
                                                     graphs=("identity", "frame"), **small), "x", console=io.StringIO())
    assert sorted(result.rejected) == ["frame_fp16_onnx", "identity_fp16_onnx"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [a["precision"] for a in manifest["artifacts"]] == ["fp32"] * 2
    assert all(a["file"] is None and "converter crashed" in a["error"] for a in manifest["rejected"])
    assert "could not be produced (RuntimeError: converter crashed)" in (tmp_path / "b" / "reports" / "parity.md").read_text()
    assert main(["validate", str(tmp_path / "b")]) == 0
    assert main(["validate", str(tmp_path / "b"), "--include-rejected"]) == 1

    monkeypatch.setitem(TARGETS, "onnx", CrashingOnnx(float_conversion=True))
    console = io.StringIO()
    with pytest.raises(ValidationFailed, match="no artifact could be produced"):
        export_bundle(small_model, ExportConfig(out=tmp_path / "c", targets=("onnx",), precisions=("fp32",), **small),
                      "x", console=console)
    # nothing published, no temporary directory left; the log of the failed export is kept beside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c.export.log"]
    assert "c.export.log" in console.getvalue()


def test_a_bundle_without_its_rejected_files_still_validates(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    moved = dict(manifest["artifacts"][-1], file="rejected/gone.tflite")
    manifest["rejected"] = [moved]  # as if one artifact had been rejected and rejected/ not shipped
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert len(validate_bundle(copy, gpu="off").results) == len(manifest["artifacts"])
    with pytest.raises(BundleError, match="rejected/gone.tflite .* is missing"):
        validate_bundle(copy, include_rejected=True)


class FullInt8AsInt8Onnx(OnnxTarget):
    """The ONNX target whose `int8` is the diagnostic full int8 (warp quantized): a deliberately
    failing artifact among passing ones."""

    def export(self, graph, example_inputs, precision, path, calibration=None, float_model=None):
        precision = "int8_full" if precision == "int8" else precision
        return super().export(graph, example_inputs, precision, path, calibration, float_model)


@pytest.fixture
def full_int8_as_int8(monkeypatch):
    monkeypatch.setitem(TARGETS, "onnx", FullInt8AsInt8Onnx())


@pytest.fixture
def small_source(small_model, monkeypatch):
    """`bilayer-mobile export` without a checkpoint exports the small model (not the paper-size one)."""
    from bilayer_mobile import cli

    monkeypatch.setattr(cli.ModelSource, "load", lambda self: small_model)


def test_a_failing_artifact_is_rejected_and_the_rest_published(small_source, full_int8_as_int8, tmp_path, capsys):
    out = tmp_path / "partial"
    code = main(["export", "--targets", "onnx", "--precisions", "fp32,int8", "--graphs", "identity,frame,baked_frame",
                 "--no-driver-models", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAIL: 2 artifact(s) below their gate" in captured.err and str(out / "rejected") in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    published = {a["name"] for a in manifest["artifacts"]}
    rejected = {a["name"] for a in manifest["rejected"]}
    assert published == {"identity_fp32_onnx", "frame_fp32_onnx", "baked_frame_fp32_onnx"}
    assert rejected == {"frame_int8_onnx", "baked_frame_int8_onnx"}
    assert sorted(p.name for p in (out / "models").iterdir()) == ["baked_frame_fp32.onnx", "frame_fp32.onnx",
                                                                 "identity_fp32.onnx"]
    assert sorted(p.name for p in (out / "rejected").iterdir()) == ["baked_frame_int8.onnx", "frame_int8.onnx"]
    figures = manifest["validation"]["figures"]
    assert not figures["frame_int8_onnx"]["passed"] and figures["frame_fp32_onnx"]["passed"]
    parity = (out / "reports" / "parity.md").read_text()
    assert "## Rejected artifacts" in parity and "frame_int8_onnx | onnxruntime | int8 | frame" in parity
    assert "**FAIL** (rejected/)" in parity
    # the published bundle validates: its models pass; the rejected ones are named, and fail when run
    assert main(["validate", str(out)]) == 0
    assert "rejected at export (not run; --include-rejected runs them): " in capsys.readouterr().out
    assert main(["validate", str(out), "--include-rejected"]) == 1
    # no temporary directory left; the converters' output is in the bundle's reports/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]
    assert (out / "reports" / "export.log").is_file()
    assert "converter output" in captured.err and len(captured.err.splitlines()) < 40  # no converter chatter


def test_strict_export_publishes_nothing(small_source, full_int8_as_int8, tmp_path, capsys):
    out = tmp_path / "strict"
    code = main(["export", "--targets", "onnx", "--precisions", "int8", "--graphs", "frame", "--strict",
                 "--no-driver-models", "--out", str(out)])
    assert code == 1
    assert "bundle not written (--strict)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["strict.export.log"]


def test_large_warp_checkpoint_in_the_official_layout_exports_every_fp16_artifact(golden_run, tmp_path, capsys):
    """golden_tiny is an official run (args.txt, spectral-norm checkpoints) with randomly
    initialised weights: it moves texels by tens of pixels, not the ~3 px of a trained model. Its
    fp16 frame artifacts keep the displacement to the same relative precision as any fp16 model,
    which is more than the fixed 0.05 px floor in pixels; the warp-scaled UV gate passes them, and
    the image gate still decides. The targets are those whose fp16 artifacts compute in float32 or
    mixed precision on the host (ONNX, TFLite); Core ML's fp16 program computes in fp16 throughout
    and, like the GPU runs below, falls under the image gate on this model (37.4 dB)."""
    from bilayer_mobile.runtime_bench.compare import UV_TOLERANCE

    out = tmp_path / "tiny"
    code = main(["export", str(golden_run), "--no-enhancer", "--targets", "onnx,tflite", "--precisions", "fp16",
                 "--graphs", "frame,baked_frame,split_frame", "--no-driver-models", "--out", str(out)])
    err = capsys.readouterr().err
    # fp16 *compute* on the GPU accelerator is another matter for this model: its random weights
    # move the UV by ~1.2 px in fp16 arithmetic (28.6 dB, the same with the warp on the CPU), so the
    # GPU runs fail, and say so, while the artifacts, right on the CPU, are published
    assert code == 1 and "run(s) on the GPU below their gate" in err, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejected"] == [] and len(manifest["artifacts"]) == 6
    figures = manifest["validation"]["figures"]
    gpu_runs = [name for name in figures if name.endswith("@litert_gpu")]
    assert len(gpu_runs) == 3 and not any(figures[name]["passed"] for name in gpu_runs)
    assert all(name in err for name in gpu_runs)
    report = {a["name"]: a for a in json.loads((out / "reports" / "parity.json").read_text())["artifacts"]}
    fp16_frames = [a for a in report.values() if a["precision"] == "fp16"
                   and a["name"] == a["artifact"]]  # the artifacts in their own runtime
    assert len(fp16_frames) == 6
    for a in fp16_frames:
        assert a["warp_px"] > 20, a["warp_px"]
        assert a["uv_limit_px"] == pytest.approx(UV_TOLERANCE["fp16"].limit_px(a["warp_px"]))
        assert float(a["outputs"]["image"]["psnr_db"]) >= a["threshold_db"]
    # at least one of them needs the warp-scaled allowance: the fixed floor alone would reject it
    assert max(a["outputs"]["uv"]["uv_error_px"] for a in fp16_frames) > UV_TOLERANCE["fp16"].floor_px


@pytest.mark.parametrize("damage, words", [
    (lambda m: m["artifacts"][0].pop("sha256"), "lacks sha256"),
    (lambda m: m["model"]["config"].pop("image_size"), "image_size is missing"),
    (lambda m: m["artifacts"].__setitem__(0, "frame.onnx"), "artifacts[0] is not an object"),
    (lambda m: m["golden"].clear(), "is not listed under 'golden'"),
    (lambda m: m.__setitem__("format_version", 2), "format version 2"),
    (lambda m: m["artifacts"][0].__setitem__("runtime", "coreml"), "is not a .mlpackage file"),
])
def test_a_damaged_manifest_is_one_line_and_exit_2(bundle, tmp_path, capsys, damage, words):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------------------------ the GPU
def test_every_tflite_frame_artifact_is_fully_accelerated_in_the_coverage_report(bundle):
    coverage = json.loads((bundle / "reports" / "coverage.json").read_text())
    entries = {e["artifact"]: e for e in coverage["artifacts"]}
    frames = [name for name, e in entries.items() if e["graph"] in ("frame", "baked_frame", "split_frame")]
    assert len(frames) == 6 and coverage["devices"]
    for name in frames:
        gpu, parity = entries[name]["gpu"], entries[name]["gpu_parity"]
        assert gpu["fully_accelerated"] and gpu["cpu_ops"] == 0 and not gpu["rejected"], (name, gpu)
        assert parity["passed"] and parity["samples"] == 2, (name, parity)
        assert {o["op"] for o in entries[name]["ops"]} >= {"GATHER"} or entries[name]["graph"] == "split_frame"
        assert "GATHER_ND" not in {o["op"] for o in entries[name]["ops"]}
        nnapi = entries[name]["nnapi"]  # the NNAPI rule table takes the fused-warp frame graphs whole
        assert nnapi["whole"] and nnapi["partitions"] == 1 and "not run" in nnapi["checked"], (name, nnapi)
    assert entries["identity_fp32_tflite"]["gpu"] is None  # the identity graph runs once, on the CPU
    for name in DRIVER_MODEL_NAMES:  # the face models run every frame too: on the GPU, in fp16, right
        gpu, parity = entries[name]["gpu"], entries[name]["gpu_parity"]
        assert gpu["fully_accelerated"] and gpu["cpu_ops"] == 0 and parity["passed"], (name, gpu, parity)
    assert (bundle / "reports" / "coverage.png").is_file()
    assert "fully accelerated" in (bundle / "reports" / "coverage.md").read_text()


def test_the_decomposed_warp_is_reported_as_not_accelerated_naming_gather_nd(small_source, tmp_path, capsys):
    out = tmp_path / "decomposed"
    code = main(["export", "--targets", "tflite", "--precisions", "fp32", "--graphs", "frame", "--warp", "decomposed",
                 "--no-driver-models", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["warp"] for a in manifest["artifacts"]] == ["decomposed"]
    capsys.readouterr()
    assert main(["coverage", str(out), "--json"]) == 0  # the warp's ops fall back to the CPU: still right
    coverage = json.loads(capsys.readouterr().out)
    (entry,) = coverage["artifacts"]
    assert not entry["gpu"]["fully_accelerated"] and entry["gpu"]["cpu_ops"] > 0
    assert "GATHER_ND" in {r["op"] for r in entry["gpu"]["rejected"]}
    assert not entry["nnapi"]["whole"] and "GATHER_ND" in {r["op"] for r in entry["nnapi"]["refused"]}
    report = (out / "reports" / "coverage.md").read_text()
    assert "**NOT fully accelerated**" in report and "Refused by the NNAPI rule table" in report


def test_without_a_gpu_validate_says_what_was_not_run_and_require_fails(bundle):
    import os
    import subprocess
    import sys

    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json", "EGL_PLATFORM": "surfaceless",
           "LIBGL_DRIVERS_PATH": "/nonexistent"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "bilayer_mobile.cli", "validate", str(bundle), *args],
                                       env=env, capture_output=True, text=True, timeout=1200)
    auto = run()
    assert auto.returncode == 0, auto.stdout[-3000:] + auto.stderr[-3000:]
    assert "not run here: frame_fp32_tflite on litert_gpu" in auto.stdout and "lavapipe" in auto.stdout
    required = run("--gpu", "require")
    assert required.returncode == 2 and "lavapipe" in required.stderr
    assert "Traceback" not in required.stderr


def test_every_target_is_in_the_bundle_with_what_checked_it(mobile_bundle):
    manifest = json.loads((mobile_bundle / "manifest.json").read_text())
    names = {(a["graph"], a["target"], a["precision"]) for a in manifest["artifacts"]}
    assert names == {("frame", "coreml", "fp32"), ("frame", "coreml", "fp16"), ("baked_frame", "coreml", "fp32"),
                     ("baked_frame", "coreml", "fp16"), ("frame", "executorch", "fp32"),
                     ("baked_frame", "executorch", "fp32"), ("baked_frame", "nnapi", "fp32")}
    assert manifest["rejected"] == []
    # what a target does not export is said, with the reason
    assert "executorch fp16" in manifest["not_exported"] and "nnapi fp16" in manifest["not_exported"]
    assert manifest["targets"]["nnapi"]["graphs"] == ["baked_frame"]
    for artifact in manifest["artifacts"]:  # a package is a directory: hashed and sized as a tree
        path = mobile_bundle / artifact["file"]
        assert path.is_dir() == (artifact["target"] == "coreml"), artifact["file"]
        assert sha256_tree(path) == artifact["sha256"]
    figures = manifest["validation"]["figures"]
    report = json.loads((mobile_bundle / "reports" / "parity.json").read_text())
    runtimes = {r["name"]: r["runtime"] for r in report["artifacts"]}
    # Core ML cannot predict here: its MIL program is evaluated on the host, and labelled so
    assert {runtimes[a["name"]] for a in manifest["artifacts"] if a["target"] == "coreml"} == {"coreml_mil_host"}
    assert {runtimes[a["name"]] for a in manifest["artifacts"] if a["target"] == "executorch"} == {"executorch"}
    assert set(figures) == {a["name"] for a in manifest["artifacts"]} and all(f["passed"] for f in figures.values())
    parity = (mobile_bundle / "reports" / "parity.md").read_text()
    assert "MIL program evaluated on host; Core ML runtime not run" in parity
    assert "What was checked where" in parity and "ExecuTorch runtime" in parity


def test_the_nnapi_profile_is_whole_by_the_rule_table(mobile_bundle):
    report = json.loads((mobile_bundle / "reports" / "parity.json").read_text())
    (result,) = [r for r in report["artifacts"] if r["target"] == "nnapi"]
    assert result["passed"] and result["nnapi"]["whole"] and result["nnapi"]["delegable_percent"] == 100.0
    # no per-identity BATCH_MATMUL and no int32 RESHAPE: Android 11, not 13 like the TFLite frame graphs
    assert result["nnapi"]["min_feature_level"] == 4 and result["nnapi"]["partitions"] == 1
    coverage = json.loads((mobile_bundle / "reports" / "coverage.json").read_text())
    (entry,) = coverage["artifacts"]
    assert entry["artifact"] == "baked_frame_fp32_nnapi" and entry["gpu"] is None and "NNAPI" in entry["not_run"]


def test_coverage_reports_executorch_delegation_and_core_ml_placement(mobile_bundle):
    coverage = json.loads((mobile_bundle / "reports" / "coverage.json").read_text())
    programs = {p["artifact"]: p for p in coverage["executorch"]}
    assert set(programs) == {"frame_fp32_executorch", "baked_frame_fp32_executorch"}
    for p in programs.values():
        assert p["partitions"] >= 1 and p["delegated_nodes"] > p["portable_nodes"] > 0
        assert p["ops"]["aten_convolution_default"]["portable"] == 0, "XNNPACK takes every convolution"
        # what XNNPACK 1.5.1 leaves to the portable kernels: the warp and the nearest upsampling
        assert "aten_grid_sampler_2d_default" in p["portable_ops"], p
        assert any("upsample_nearest2d" in op for op in p["portable_ops"]), p
    packages = {p["artifact"]: p for p in coverage["coreml"]}
    assert packages["frame_fp32_coreml"]["compute_units_eligible"] == "GPU, CPU"
    assert "Neural Engine" in packages["frame_fp16_coreml"]["compute_units_eligible"]
    for p in packages.values():
        (resample,) = p["resample"]  # the reference's convention: bilinear, zero padding, align_corners False
        assert {k: v for k, v in resample.items() if k != "name"} == {
            "sampling_mode": "bilinear", "padding_mode": "constant", "padding_value": 0.0,
            "coordinates_mode": "normalized_minus_one_to_one", "align_corners": False}, p
        assert p["ane_notes"] and all(n["source"] for n in p["ane_notes"].values())
    text = (mobile_bundle / "reports" / "coverage.md").read_text()
    assert "ExecuTorch programs" in text and "Core ML packages" in text

