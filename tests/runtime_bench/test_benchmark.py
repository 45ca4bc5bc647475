"""Host benchmark: who is timed, how the rounds interleave, what each record says, the GEMM
ceiling and the report's bar. No test asserts anything about how fast something is."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from bilayer_mobile.reference.summary import pipeline_macs
from bilayer_mobile.runtime_bench.benchmark import (BenchSettings, Contestant, benchmark_bundle, check_model_matches,
                                                    configurations, time_interleaved)
from bilayer_mobile.runtime_bench.gemm import gemm_limit_ms, sgemm_gflops
from bilayer_mobile.runtime_bench.latency import LatencyRecord
from bilayer_mobile.runtime_bench.latency_report import headline, host_table, latency_markdown, plot_gflops, plot_latency
from bilayer_mobile.runtime_bench.validate import BundleError, load_manifest

QUICK = dict(runs=2, identity_runs=1, warmup=0, pause_s=0.0)


@pytest.fixture(scope="module")
def bench_run(bundle, small_model):
    settings = BenchSettings(**QUICK, graphs=("frame", "identity"), precisions=("fp32",),
                             reference_modes=("eager", "channels_last", "compile"))
    return benchmark_bundle(bundle, load_manifest(bundle), small_model, settings)


def test_every_selected_artifact_is_timed_in_every_configuration_of_its_runtime(bench_run, bundle):
    manifest = load_manifest(bundle)
    expected = {(a["name"], configuration) for a in manifest["artifacts"]
                if a["graph"] in ("frame", "identity") and a["precision"] == "fp32"
                and a["runtime"] in ("litert", "onnxruntime")
                for configuration, _ in configurations(a["runtime"], BenchSettings())}
    timed = {(r.artifact, r.configuration) for r in bench_run.records if r.kind == "artifact"}
    assert timed == expected
    assert {"XNNPACK, 1 thread", "XNNPACK, 2 threads"} <= {c for _, c in timed}  # LiteRT at 1 and N threads


def test_the_reference_is_timed_in_each_mode_and_the_identity_with_and_without_the_enhancer(bench_run):
    names = {r.name for r in bench_run.records if r.kind == "reference"}
    assert {"reference frame @ torch eager", "reference frame @ torch channels_last",
            "reference frame @ torch compile", "reference identity without enhancer @ torch eager"} <= names
    # the small model has no enhancer: no "with enhancer" record rather than a mislabelled one
    assert "reference identity with enhancer @ torch eager" not in names


def test_records_carry_runs_macs_sizes_and_memory(bench_run, small_model):
    frame_macs = pipeline_macs(small_model)["frame"]
    for r in bench_run.records:
        runs = QUICK["identity_runs"] if r.graph == "identity" else QUICK["runs"]
        assert len(r.runs_ms) == runs and r.stats.count == runs and r.stats.min_ms > 0
        assert r.first_run_ms > 0 and r.device == "host"
        if r.graph != "identity":
            assert r.macs == frame_macs
            assert r.gflops == pytest.approx(2 * frame_macs / (r.stats.p50_ms * 1e-3) / 1e9)
        if r.kind == "artifact":
            assert r.model_bytes > 0 and r.load_ms > 0
            assert r.peak_memory_mb is not None and r.peak_memory_mb > 0
    assert bench_run.failures == []


def test_rounds_interleave_every_contestant_and_warm_up_first():
    calls = []
    contestants = [Contestant(call=lambda n=n: calls.append(n), record={}) for n in "abc"]
    time_interleaved(contestants, runs=3, warmup=1, pause_s=0.0)
    # one warm-up round, then three timed rounds of one call each, each starting one later
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert all(len(c.runs_ms) == 3 for c in contestants)


def test_a_model_other_than_the_bundles_is_refused(small_model, bundle):
    other = copy.deepcopy(small_model)
    other.config = type(other.config)(**{**other.config.__dict__, "inf_num_channels": 8})
    with pytest.raises(BundleError, match="configuration the bundle was exported from"):
        check_model_matches(other, load_manifest(bundle))
    check_model_matches(small_model, load_manifest(bundle))


def test_the_gemm_ceiling_is_the_best_measured_rate():
    gemm = sgemm_gflops(threads=1, sizes=(128, 256), repeats=2)
    rates = [s[k] for s in gemm["sizes"] for k in ("numpy_gflops", "torch_gflops")]
    assert gemm["ceiling_gflops"] == max(rates) > 0 and [s["n"] for s in gemm["sizes"]] == [128, 256]
    assert gemm_limit_ms(4_300_000_000, 200.0) == pytest.approx(43.0)


def _synthetic(eager_ms: float, litert_ms: float) -> list[LatencyRecord]:
    base = dict(graph="frame", precision="fp32", threads=2, macs=4_300_000_000)
    return [LatencyRecord.from_runs([eager_ms] * 3, name="reference frame @ torch eager", kind="reference",
                                    runtime="torch", configuration="eager, 2 threads", **base),
            LatencyRecord.from_runs([litert_ms] * 3, name="frame_fp32_tflite @ litert XNNPACK, 2 threads", kind="artifact",
                                    runtime="litert", configuration="XNNPACK, 2 threads", artifact="frame_fp32_tflite", **base)]


@pytest.mark.parametrize("eager, litert, speedup_holds, gemm_holds", [
    (130.0, 60.0, True, True), (100.0, 60.0, False, True), (200.0, 70.0, True, False)])
def test_the_bar_lines_compare_what_the_issue_asks(eager, litert, speedup_holds, gemm_holds):
    gemm = {"before": {"ceiling_gflops": 200.0}, "after": {"ceiling_gflops": 200.0}}  # limit 43 ms, 1.5x = 64.5 ms
    lines = headline(_synthetic(eager, litert), gemm)
    assert [line["holds"] for line in lines] == [speedup_holds, gemm_holds, gemm_holds]
    assert f"{eager / litert:.2f}x" in lines[0]["figures"]


def test_table_rows_compare_with_eager_only_for_the_same_work_and_with_the_gemm_rate():
    records = _synthetic(120.0, 60.0)
    other_work = LatencyRecord.from_runs([30.0] * 3, name="reference identity without enhancer @ torch eager",
                                         kind="reference", graph="frame", precision="fp32", runtime="torch",
                                         configuration="eager", threads=2, macs=1_000_000_000)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in host_table(records + [other_work], {"before": {"ceiling_gflops": 286.7}}) if line.startswith("| ")}
    litert = rows["frame_fp32_tflite"]
    assert litert[-1].rstrip(" |") == "2.00x"  # eager 120 ms over 60 ms
    assert litert[-2] == f"{2 * 4.3e9 / 0.060 / 1e9 / 286.7:.0%}"  # 143 GFLOP/s of the 286.7 GFLOP/s rate
    assert rows["reference identity without enhancer @ torch eager"][-1].rstrip(" |") == "-"  # other work: no ratio
    assert litert[6] == "-" and litert[7] == "-"  # 3 runs: no p90, no p99


def test_the_report_has_its_sections_and_plots(bench_run, tmp_path):
    gemm = {"before": sgemm_gflops(1, (128,), 1), "after": sgemm_gflops(1, (128,), 1)}
    document = {"machine": {"cpu": "test cpu", "arch": "x86_64", "cores": 2, "runtimes": {"torch": "x"}},
                "settings": bench_run.settings.as_dict(), "gemm": gemm}
    markdown = latency_markdown(document, bench_run.records)
    for heading in ("## The bar", "## Host latency, side by side", "### frame", "### identity", "## Android devices"):
        assert heading in markdown
    assert "OMP_WAIT_POLICY=" in markdown and "vs eager" in markdown
    plot_latency(bench_run.records, tmp_path / "latency.png")
    plot_gflops(bench_run.records, gemm, tmp_path / "gflops.png")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("latency.png", "gflops.png"))
    json.dumps([r.as_dict() for r in bench_run.records])  # every record is JSON as it stands
    assert np.isfinite([r.stats.p50_ms for r in bench_run.records]).all()
