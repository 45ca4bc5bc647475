"""`export` writes a self-describing bundle whose every artifact runs from the manifest alone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bilayer_mobile.cli import main
from export.bundle import ExportConfig, ExportError, export_bundle
from runtime_bench.validate import BundleError, make_runner, sha256_file, validate_bundle

TINY_CONFIG = dict(emb_num_channels=8, emb_max_channels=64, tex_num_channels=8, tex_max_channels=64,
                   inf_num_channels=4, inf_max_channels=32, pse_num_channels=32, enh_num_channels=8,
                   enh_max_channels=16)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The default-model recipe (standing statistics, 3 px warp) on a small configuration."""
    from reference import BilayerConfig
    from reference.default_model import DefaultModelRecipe, build_default_model

    recipe = DefaultModelRecipe(stats_identities=4, uv_identities=4, with_enhancer=False)
    # without the enhancer: converting its unrolled steps is slow, and tests/export/test_onnx.py
    # and test_tflite.py cover the identity graph with the enhancer
    return build_default_model(BilayerConfig(**TINY_CONFIG), recipe)


@pytest.fixture(scope="module")
def bundle(small_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "small"
    export_bundle(small_model, ExportConfig(out=out, precisions=("fp32", "fp16"), golden_identities=1,
                                            golden_frames=2, calibration_identities=2, calibration_frames=2),
                  "small default model", progress=lambda m: None)
    return out


def test_manifest_describes_every_file_truthfully(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {(a["graph"], a["target"], a["precision"]) for a in manifest["artifacts"]}
    assert names == {(g, t, p) for g in ("identity", "frame", "baked_frame") for t in ("onnx", "tflite")
                     for p in ("fp32", "fp16")}
    for artifact in manifest["artifacts"]:
        path = bundle / artifact["file"]
        assert sha256_file(path) == artifact["sha256"] and path.stat().st_size == artifact["size_bytes"]
        runner = make_runner(artifact["target"], path)  # run it from the manifest alone
        with np.load(bundle / artifact["golden"]) as golden:
            feed = {i["name"]: golden[i["name"]][0] for i in artifact["inputs"]}
            for i in artifact["inputs"]:
                assert list(golden[i["name"]].shape[1:]) == i["shape"], (artifact["name"], i["name"])
            outputs = runner.run(feed)
            for o in artifact["outputs"]:
                assert list(outputs[o["name"]].shape) == o["shape"] == list(golden[o["name"]].shape[1:])
                assert np.abs(outputs[o["name"]] - golden[o["name"]][0]).max() < 0.05, (artifact["name"], o["name"])
    layout = manifest["adaptive_params_layout"]
    assert len(layout) == 18 and layout[-1]["offset"] + sum(
        np.prod(layout[-1][k]) for k in ("weight_shape", "bias_shape")) == manifest["artifacts"][0]["outputs"][1]["shape"][1]
    assert (bundle / "reports" / "parity.md").is_file() and (bundle / "reports" / "worst_artifact.png").is_file()


def test_validate_passes_and_reports(bundle, capsys):
    assert main(["validate", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "fp32 >= 60 dB" in out and "PASS: 12 artifacts" in out
    report = json.loads((bundle / "reports" / "parity.json").read_text())
    for artifact in report["artifacts"]:
        gated = "texture" if artifact["graph"] == "identity" else "image"
        assert float(artifact["outputs"][gated]["psnr_db"]) >= artifact["threshold_db"]


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
        export_bundle(small_model, ExportConfig(out=bundle), "x", progress=lambda m: None)
    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_failed_export_leaves_no_half_bundle(small_model, tmp_path, monkeypatch):
    import export.bundle as bundle_module

    def broken_exporter(target):
        def export(*args, **kwargs):
            raise RuntimeError("converter crashed")
        return export

    monkeypatch.setattr(bundle_module, "_exporter", broken_exporter)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_bundle(small_model, ExportConfig(out=tmp_path / "b", precisions=("fp32",), golden_identities=1,
                                                golden_frames=1, calibration_identities=1, calibration_frames=1),
                      "x", progress=lambda m: None)
    assert list(tmp_path.iterdir()) == []
