"""The latency schema: statistics, the JSON document, and `--compare`'s regression rule."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.runtime_bench.latency import (REGRESSION_FRACTION, LatencyRecord, LatencyStats, compare_records,
                                                  latency_document, read_latency_document)


def record(name: str, runs: list[float], **extra) -> LatencyRecord:
    fields = dict(kind="artifact", graph="frame", precision="fp32", runtime="litert", configuration="XNNPACK, 2 threads",
                  threads=2)
    fields.update(extra)
    return LatencyRecord.from_runs(runs, name=name, **fields)


def test_statistics_of_runs_are_numpys_percentiles():
    runs = list(np.random.default_rng(0).gamma(5.0, 10.0, size=101))
    s = LatencyStats.of_runs(runs)
    p25, p50, p75, p90, p99 = np.percentile(runs, [25, 50, 75, 90, 99])
    assert (s.count, s.min_ms, s.max_ms) == (101, min(runs), max(runs))
    assert (s.p50_ms, s.p90_ms, s.p99_ms) == pytest.approx((p50, p90, p99))
    assert s.spread == pytest.approx((p75 - p25) / p50)
    assert s.mean_ms == pytest.approx(np.mean(runs)) and s.stdev_ms == pytest.approx(np.std(runs))
    assert s.typical_ms == s.p50_ms and s.noise_ms == pytest.approx(p75 - p25)


def test_one_slow_run_moves_the_median_and_spread_little():
    calm = LatencyStats.of_runs([10.0] * 19 + [11.0])
    spiky = LatencyStats.of_runs([10.0] * 19 + [500.0])
    assert calm.p50_ms == spiky.p50_ms == 10.0 and calm.spread == spiky.spread == 0.0
    assert spiky.max_ms == 500.0 and spiky.mean_ms > 30


@pytest.mark.parametrize("runs", [[], [1.0, float("nan")], [float("inf")]])
def test_statistics_need_finite_runs(runs):
    with pytest.raises(ValueError):
        LatencyStats.of_runs(runs)


def test_a_printed_summary_has_no_median_and_uses_the_mean():
    s = LatencyStats.of_summary(count=50, mean_ms=58.1, min_ms=56.0, max_ms=63.4, stdev_ms=1.5)
    assert s.p50_ms is None and s.typical_ms == 58.1 and s.noise_ms == 1.5 and s.spread is None


def test_achieved_gflops_is_two_flops_per_mac_at_the_median():
    r = record("a", [40.0, 50.0, 60.0], macs=4_000_000_000)
    assert r.gflops == pytest.approx(2 * 4e9 / 0.050 / 1e9)
    assert record("b", [1.0]).gflops is None


def test_records_round_trip_through_the_json_document(tmp_path):
    records = [record("a", [1.0, 2.0, 3.0], macs=10, peak_memory_mb=12.5, notes=["x"]),
               LatencyRecord(name="phone", kind="device", graph="frame", precision="fp16", runtime="android litert",
                             configuration="GPU fp16", threads=None, device="Pixel 8",
                             stats=LatencyStats.of_summary(50, 20.0, 18.0))]
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(latency_document(records, {"cpu": "x"}, {"threads": 2})))
    document, again = read_latency_document(path)
    assert again == records and document["settings"] == {"threads": 2}


def test_record_names_must_be_unique_and_kinds_known():
    with pytest.raises(ValueError, match="unique"):
        latency_document([record("a", [1.0]), record("a", [2.0])], {}, {})
    with pytest.raises(ValueError, match="kind"):
        record("a", [1.0], kind="guess")


def test_a_slowdown_beyond_five_percent_and_the_noise_is_a_regression():
    old = [record("steady", [100.0] * 30), record("noisy", list(np.linspace(80, 120, 30))), record("gone", [5.0])]
    new = [record("steady", [100.0 * (1 + REGRESSION_FRACTION) + 1] * 30),  # +6%, no noise: flagged
           record("noisy", list(np.linspace(86, 126, 30))),  # +6% but the runs spread by 20%: not flagged
           record("new", [5.0])]
    regressions, unmatched = compare_records(old, new)
    assert [r.name for r in regressions] == ["steady"] and regressions[0].change == pytest.approx(0.06)
    assert unmatched == ["gone", "new"]


def test_a_faster_run_or_one_within_five_percent_is_not_a_regression():
    old = [record("a", [100.0] * 10), record("b", [100.0] * 10)]
    new = [record("a", [104.0] * 10), record("b", [50.0] * 10)]
    assert compare_records(old, new) == ([], [])


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"), ("{not json", "not JSON"), ('{"records": []}', "no \"schema\""),
    ('{"schema": "bilayer-mobile-latency", "schema_version": 99, "records": []}', "schema version 99"),
    ('{"schema": "bilayer-mobile-latency", "schema_version": 1, "records": [{"name": "a"}]}', "damaged record"),
])
def test_a_bad_latency_file_is_one_actionable_error(tmp_path, content, words):
    path = tmp_path / "old.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=words):
        read_latency_document(path)
