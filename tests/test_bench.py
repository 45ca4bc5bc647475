"""`bilayer-mobile bench` end to end on the small bundle: the report files, the stage breakdown of
a driven frame, Android without a phone, `--compare`, and bad input. Nothing about speed."""
from __future__ import annotations

import json
import stat

import pytest

from bilayer_mobile.bench import BenchJob, run_bench
from bilayer_mobile.cli import main
from bilayer_mobile.reference.face_samples import photo_path
from bilayer_mobile.runtime_bench.benchmark import BenchSettings
from bilayer_mobile.runtime_bench.latency import SCHEMA, read_latency_document
from bilayer_mobile.runtime_bench.validate import load_manifest
from bilayer_mobile.stages import FRAME_STAGES, ONCE_STAGES, stage_breakdown

QUICK = ["--runs", "2", "--warmup", "0", "--identity-runs", "0", "--precisions", "fp32", "--no-memory",
         "--no-single-thread", "--stage-frames", "3", "--no-dlib"]


@pytest.fixture(scope="module")
def cli_report(bundle, tmp_path_factory, fake_adb_without_devices):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", str(bundle), "--no-reference", *QUICK, "--android", "--benchmark-model",
                 str(fake_adb_without_devices), "--adb", str(fake_adb_without_devices), "--out", str(out)])
    return code, out


@pytest.fixture(scope="module")
def fake_adb_without_devices(tmp_path_factory):
    path = tmp_path_factory.mktemp("adb") / "adb"
    path.write_text("#!/bin/sh\nif [ \"$1\" = devices ]; then printf 'List of devices attached\\n\\n'; fi\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_bench_writes_the_report_and_says_android_was_not_run(cli_report):
    code, out = cli_report
    assert code == 0
    document, records = read_latency_document(out / "latency.json")
    assert document["schema"] == SCHEMA and document["gemm"]["before"]["ceiling_gflops"] > 0
    assert "after" in document["gemm"] and document["settings"]["threads"] == 2
    assert {r.kind for r in records} == {"artifact", "stage"}  # --no-reference: no torch records, no roofline
    assert "no Android device attached" in document["android"]["status"]
    markdown = (out / "latency.md").read_text()
    assert "no Android device attached" in markdown and "## Stages of a driven frame" in markdown
    assert all((out / f).is_file() for f in ("latency.png", "gflops.png", "stages.png", "bench.log"))


def test_compare_flags_a_record_that_got_slower_and_exits_1(cli_report, bundle, tmp_path, capsys):
    _, out = cli_report
    old = json.loads((out / "latency.json").read_text())
    victim = next(r for r in old["records"] if r["kind"] == "artifact")
    for key in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms"):
        victim["stats"][key] /= 10  # the old run was 10x faster
    victim["stats"]["spread"] = 0.0
    (tmp_path / "old.json").write_text(json.dumps(old))
    code = main(["bench", str(bundle), "--no-reference", *QUICK, "--no-stages", "--graphs", "frame",
                 "--compare", str(tmp_path / "old.json"), "--out", str(tmp_path / "new")])
    assert code == 1
    document = json.loads((tmp_path / "new" / "latency.json").read_text())
    assert victim["name"] in [r["name"] for r in document["compare"]["regressions"]]
    assert "## Compared with" in (tmp_path / "new" / "latency.md").read_text()


@pytest.mark.parametrize("args, words", [
    (["--compare", "{tmp}/missing.json"], "does not exist"),
    (["--android"], "--android needs --benchmark-model"),
    (["--android", "--benchmark-model", "{tmp}/none"], "does not exist"),
    (["--stage-runtime", "tvm"], "--stage-runtime 'tvm'"),
    (["--graphs", "frame,face"], "--graphs 'frame,face': unknown face"),
    (["--precisions", "int4"], "unknown int4"),
    (["--delegates", "npu"], "unknown npu"),
    (["--runtimes", "tvm"], "unknown tvm"),
    (["--runtimes", "onnxruntime", "--precisions", "int8", "--no-stages"], "nothing to time"),
])
def test_bad_options_are_one_line_and_exit_2(bundle, tmp_path, capsys, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["bench", str(bundle), "--no-reference", *QUICK, "--graphs", "frame", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_not_a_bundle_is_refused(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--no-reference"]) == 2
    assert "is not a bundle" in capsys.readouterr().err


def test_every_stage_of_a_driven_frame_is_its_own_record(bundle):
    frames = 3
    records = stage_breakdown(bundle, load_manifest(bundle), photo_path("source.jpg"), (photo_path("target.jpg"),) * frames,
                              runtime="litert", threads=1, max_frames=frames, dlib=True)
    by_stage = {r.graph: r for r in records}
    assert set(by_stage) == set(FRAME_STAGES) | set(ONCE_STAGES)
    assert all(r.kind == "stage" and r.stats.min_ms > 0 for r in records)
    for stage in FRAME_STAGES:
        if stage != "face detector (model)":
            assert by_stage[stage].stats.count == frames, stage
    assert 1 <= by_stage["face detector (model)"].stats.count <= frames  # tracked: detects only when it must
    assert all(by_stage[s].stats.count == 1 for s in ONCE_STAGES)
    assert by_stage["frame graph"].artifact == "frame_fp32_tflite"


def test_run_bench_with_the_reference_adds_the_roofline(bundle, small_model, tmp_path):
    settings = BenchSettings(runs=1, identity_runs=0, warmup=0, pause_s=0.0, graphs=("frame",), precisions=("fp32",),
                             runtimes=("onnxruntime",), reference_modes=("eager",), memory=False)
    document, markdown = run_bench(BenchJob(bundle, tmp_path, settings), small_model)
    assert "reference frame @ torch eager" in [r["name"] for r in document["records"]]
    roofline = document["roofline"]
    assert roofline["paper"]["ms"] == 42.0 and roofline["frame"]["macs"] == roofline["frame"]["pipeline_macs_frame"]
    assert "not a measurement" in markdown and "Adreno 640" in markdown and (tmp_path / "roofline.png").is_file()
    assert "vs PyTorch eager" not in markdown  # no LiteRT frame artifact was timed: no speedup line is made up


def test_a_bundle_the_stage_breakdown_cannot_run_on_is_refused_before_any_timing(bundle, tmp_path, capsys, monkeypatch):
    import shutil

    from bilayer_mobile.reference.face_tracking import DRIVER_MODEL_NAMES

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["graph"] not in DRIVER_MODEL_NAMES]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("bilayer_mobile.bench.benchmark_bundle", lambda *a, **k: pytest.fail("timed before refusing"))
    code = main(["bench", str(copy), "--no-reference", *QUICK, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no driver models" in err and "--no-stages" in err
    assert not (tmp_path / "o" / "latency.json").exists()


def test_bench_on_a_phone_over_adb_records_each_delegate_and_lists_failures(bundle, tmp_path, fake_adb):
    calls = fake_adb("adb_devices_one.txt")  # one phone; nnapi fails on it, cpu and gpu give timings
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake arm64 binary")
    out = tmp_path / "report"
    code = main(["bench", str(bundle), "--no-reference", *QUICK, "--no-stages", "--graphs", "frame", "--android",
                 "--benchmark-model", str(binary), "--android-graphs", "frame", "--taskset", "f0", "--out", str(out)])
    assert code == 0
    document, records = read_latency_document(out / "latency.json")
    phone = [r for r in records if r.kind == "device"]
    tflite_frames = [a["name"] for a in load_manifest(bundle)["artifacts"] if a["graph"] == "frame"
                     and a["file"].endswith(".tflite")]
    assert sorted({r.artifact for r in phone}) == sorted(tflite_frames)
    assert {r.configuration.split(",")[0].split(" ")[0] for r in phone} == {"XNNPACK", "GPU"}
    assert all(r.device == "Pixel 7" and r.stats.mean_ms > 0 for r in phone)
    assert document["android"]["status"].startswith("Ran on Pixel 7")
    assert any("nnapi" in note for note in document["notes"])  # the failed delegate is listed, not dropped
    shell = [c for c in calls() if "shell" in c and any(w.startswith("--graph") for w in c)]  # the timed runs
    assert shell and all(c[c.index("shell") + 1] == "taskset" for c in shell)
    assert f"| {tflite_frames[0]} | Pixel 7 |" in (out / "latency.md").read_text()  # the device table
