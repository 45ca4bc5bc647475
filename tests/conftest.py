"""Shared fixtures: paths of the official golden data (read from ../shared) and the real photos."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from bilayer_mobile.reference.face_samples import DEFAULT_MODEL_PHOTOS

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
SPEC = SHARED / "spec"
GOLDEN = SPEC / "golden_tiny"
GOLDEN_RUN = GOLDEN / "runs" / "bilayer_tiny"
MANIFEST = SPEC / "official_state_dict_manifest.json"
# The packaged photos the tests use (bilayer_mobile/reference/photos): the default model's two,
# by name; every loader that takes a photo directory takes these names too.
PHOTOS = DEFAULT_MODEL_PHOTOS
# Output texts of LiteRT's benchmark_model, ExecuTorch's executor_runner and adb, written from
# the tools' format strings (no phone ran them), read by the fake adb below.
ANDROID_DATA = PROJECT / "tests" / "runtime_bench" / "data" / "android"


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_dir():
        pytest.fail(f"{GOLDEN} is missing: the tests need ../shared/spec beside the project")
    with np.load(GOLDEN / "official_outputs.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def tiny_model():
    """The official golden_tiny run loaded in float32 (eval mode, enhancer on)."""
    from bilayer_mobile.reference import load_official_checkpoint

    return load_official_checkpoint(GOLDEN_RUN)


@pytest.fixture(scope="session")
def default_model_cache(tmp_path_factory) -> Path:
    """A fresh cache directory in which the built-in default model is built once per session."""
    return tmp_path_factory.mktemp("bilayer-cache")


@pytest.fixture(scope="session")
def default_model_paper(default_model_cache):
    """The built-in default model (paper config), built from scratch once per test session."""
    import os

    from bilayer_mobile.reference.default_model import default_model

    old = os.environ.get("BILAYER_MOBILE_CACHE")
    os.environ["BILAYER_MOBILE_CACHE"] = str(default_model_cache)
    try:
        return default_model()
    finally:
        if old is None:
            os.environ.pop("BILAYER_MOBILE_CACHE", None)
        else:
            os.environ["BILAYER_MOBILE_CACHE"] = old


@pytest.fixture(scope="session")
def golden_run() -> Path:
    """The official run directory of golden_tiny (read-only)."""
    return GOLDEN_RUN


@pytest.fixture(scope="session")
def manifest() -> dict:
    """The official state-dict manifest (paper configuration, both checkpoint forms)."""
    import json

    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="session")
def photos_dir() -> tuple[str, ...]:
    """The photos for `load_face_photos`, `photo_clips`, `measure_uv_displacement_px` (the name is
    historical: packaged photo names, not a directory)."""
    return PHOTOS


@pytest.fixture(scope="session")
def max_abs():
    """max |a - b| over two tensors/arrays, in float64."""

    def compute(a, b) -> float:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())

    return compute


@pytest.fixture(scope="session")
def parity():
    """parity(graph, runner, feeds) -> {output name: {"psnr_db", "max_abs", "cosine"[, "uv_error_px"]}}:
    a runtime runner against the PyTorch graph on every feed (outputs stacked), compared the way
    `validate` compares (runtime_bench.compare, kinds from the graph's own output spec). Also
    asserts that the runner's boundary is the graph's contract."""
    from bilayer_mobile.runtime_bench.compare import compare_output

    def measure(graph, runner, feeds, image_size: int | None = None) -> dict[str, dict[str, float]]:
        specs = graph.output_spec()
        declared_in = [t.as_dict() for t in graph.input_spec()]
        assert runner.check_contract(declared_in, [t.as_dict() for t in specs]) == []
        refs = {t.name: [] for t in specs}
        tests = {t.name: [] for t in specs}
        for feed in feeds:
            with torch.no_grad():
                out = graph(**{k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in feed.items()})
            got = runner.infer(feed)
            for spec, ref in zip(specs, out, strict=True):
                refs[spec.name].append(ref.numpy())
                tests[spec.name].append(got[spec.name])
        result = {}
        for spec in specs:
            c = compare_output(spec.name, np.concatenate(refs[spec.name]), np.concatenate(tests[spec.name]),
                               image_size or int(specs[0].shape[-1]), spec.kind)
            result[spec.name] = {k: v for k, v in c.as_dict().items() if k != "name" and v is not None}
            result[spec.name]["psnr_db"] = float(result[spec.name]["psnr_db"])
        return result

    return measure


@pytest.fixture(scope="session")
def realistic_tiny(tiny_model):
    """golden_tiny's architecture built with the default-model recipe: spectral-norm weights,
    standing BatchNorm statistics from real faces and a ~3 px warp (about 20 s)."""
    from bilayer_mobile.reference.default_model import DefaultModelRecipe, build_default_model, measure_uv_displacement_px

    torch.manual_seed(0)
    model = build_default_model(tiny_model.config, DefaultModelRecipe(stats_identities=8, uv_identities=4,
                                                                      with_enhancer=False)).eval()
    assert 2.5 < measure_uv_displacement_px(model, count=4) < 3.5
    return model


@pytest.fixture(scope="session")
def realistic_frame(realistic_tiny):
    """The frame graph of `realistic_tiny`, real-face feeds and calibration feeds (the clips of
    the ONNX tests' `clips`)."""
    from bilayer_mobile.export.calibration import frame_feeds, photo_clips
    from bilayer_mobile.export.graphs import FrameGraph, adaptive_layout

    clips = {"eval": photo_clips(2, 2, seed=202), "calib": photo_clips(4, 4, seed=101)}
    m = realistic_tiny
    state = m.init_identity(clips["eval"][0].image[None], clips["eval"][0].keypoints[None])
    graph = FrameGraph(m, adaptive_layout(state), debug_outputs=True).eval()
    return graph, frame_feeds(m, clips["eval"]), frame_feeds(m, clips["calib"])


# The small configuration of the pipeline tests: big enough to have every layer, small enough to
# export in seconds.
TINY_CONFIG = dict(emb_num_channels=8, emb_max_channels=64, tex_num_channels=8, tex_max_channels=64,
                   inf_num_channels=4, inf_max_channels=32, pse_num_channels=32, enh_num_channels=8,
                   enh_max_channels=16)


@pytest.fixture(scope="session")
def small_model():
    """The default-model recipe (standing statistics, 3 px warp) on a small configuration."""
    from bilayer_mobile.reference import BilayerConfig
    from bilayer_mobile.reference.default_model import DefaultModelRecipe, build_default_model

    recipe = DefaultModelRecipe(stats_identities=4, uv_identities=4, with_enhancer=False)
    # without the enhancer: converting its unrolled steps is slow, and tests/export/test_onnx.py
    # and test_tflite.py cover the identity graph with the enhancer
    return build_default_model(BilayerConfig(**TINY_CONFIG), recipe)


@pytest.fixture(scope="session")
def bundle(small_model, tmp_path_factory) -> Path:
    """The small model's bundle in ONNX and TFLite, fp32 and fp16, every graph (read-only: a test
    that changes a bundle changes a copy). Shared by the pipeline and the drive tests."""
    import io

    from bilayer_mobile.export.bundle import ExportConfig
    from bilayer_mobile.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "small"
    export_bundle(small_model, ExportConfig(out=out, targets=("onnx", "tflite"), precisions=("fp32", "fp16"),
                                            golden_identities=1, golden_frames=2, calibration_identities=2,
                                            calibration_frames=2),
                  "small default model", console=io.StringIO())
    return out


FAKE_ADB = r"""#!/bin/sh
for a in "$@"; do printf '%s\037' "$a" >> "$FAKE_ADB_LOG"; done
printf '\n' >> "$FAKE_ADB_LOG"
if [ "$1" = "-s" ]; then shift 2; fi
case "$1" in
  devices) cat "$FAKE_ADB_DEVICES" ;;
  push) echo "$2: 1 file pushed, 0 skipped. 41.3 MB/s (36953088 bytes in 0.853s)" ;;
  shell)
    shift
    case "$*" in
      "getprop ro.product.model") echo "Pixel 7" ;;
      "getprop ro.soc.model") echo "GS201" ;;
      "getprop ro.board.platform") echo "gs201" ;;
      "getprop ro.build.version.release") echo "14" ;;
      mkdir*|chmod*) ;;
      *benchmark_model*--use_gpu=true*) cat "$FAKE_ADB_DATA/benchmark_gpu.txt" ;;
      *benchmark_model*--use_nnapi=true*) cat "$FAKE_ADB_DATA/benchmark_nnapi_failed.txt"; exit 1 ;;
      *benchmark_model*) cat "$FAKE_ADB_DATA/benchmark_cpu.txt" ;;
      *executor_runner*) cat "$FAKE_ADB_DATA/executor_runner.txt" ;;
      *) echo "fake adb: unexpected shell command: $*" >&2; exit 2 ;;
    esac ;;
  *) echo "adb: unknown command $1" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    """A fake `adb` first on PATH that logs its arguments and answers with the committed tool
    outputs (tests/runtime_bench/data/android): `calls = fake_adb("adb_devices_one.txt")` attaches
    the devices that file lists; `calls()` is every logged command line as a list of words."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB)
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_DATA", str(ANDROID_DATA))

    def attach(devices_file: str):
        monkeypatch.setenv("FAKE_ADB_DEVICES", str(ANDROID_DATA / devices_file))
        return lambda: [line.split("\x1f")[:-1] for line in log.read_text().splitlines()] if log.exists() else []

    return attach
