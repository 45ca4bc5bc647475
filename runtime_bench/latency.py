"""The latency result schema: one `LatencyRecord` per thing timed, wherever it was timed.

Host benchmarks (`benchmark.py`), the per-stage breakdown of a driven frame and Android runs
over adb (`android.py`) all produce `LatencyRecord`s, so one report, one JSON file and one
`--compare` read them all. A record holds every timed run when the runs were seen (host), or
only the summary a tool printed (LiteRT's `benchmark_model` prints count, min, max, avg and
std, not each run); `stats` is filled either way, and fields a source cannot know stay None.

Statistics are of wall-clock milliseconds per call. The spread is the interquartile range
relative to the median: robust to the one slow run a loaded machine throws in, and the measure
`compare` uses to decide whether a difference is larger than the noise.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..reference.errors import InputError

SCHEMA = "bilayer-mobile-latency"
SCHEMA_VERSION = 1
KINDS = ("artifact", "reference", "stage", "device")
REGRESSION_FRACTION = 0.05  # `--compare` flags a slowdown beyond 5% of the old median ...
NOISE_FACTOR = 1.0  # ... that also exceeds the two runs' spreads (in ms) combined


@dataclass
class LatencyStats:
    """Summary of one record's runs, in milliseconds."""

    count: int
    min_ms: float
    p50_ms: float | None  # None where a tool printed only mean and deviation
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    max_ms: float | None
    stdev_ms: float | None
    spread: float | None  # (p75 - p25) / p50; None without runs

    @classmethod
    def of_runs(cls, runs_ms: list[float]) -> "LatencyStats":
        """Statistics of a non-empty list of runs."""
        runs = np.asarray(runs_ms, dtype=np.float64)
        if runs.size == 0 or not np.all(np.isfinite(runs)):
            raise ValueError("latency statistics need at least one finite run")
        p25, p50, p75, p90, p99 = np.percentile(runs, [25, 50, 75, 90, 99])
        return cls(count=int(runs.size), min_ms=float(runs.min()), p50_ms=float(p50), p90_ms=float(p90),
                   p99_ms=float(p99), mean_ms=float(runs.mean()), max_ms=float(runs.max()),
                   stdev_ms=float(runs.std()), spread=float((p75 - p25) / p50) if p50 > 0 else 0.0)

    @classmethod
    def of_summary(cls, count: int, mean_ms: float, min_ms: float, max_ms: float | None = None,
                   stdev_ms: float | None = None) -> "LatencyStats":
        """Statistics from a tool's printed summary (no individual runs)."""
        return cls(count=int(count), min_ms=float(min_ms), p50_ms=None, p90_ms=None, p99_ms=None,
                   mean_ms=float(mean_ms), max_ms=None if max_ms is None else float(max_ms),
                   stdev_ms=None if stdev_ms is None else float(stdev_ms), spread=None)

    @property
    def typical_ms(self) -> float:
        """The figure reports and comparisons use: the median, or the mean where no median is known."""
        return self.p50_ms if self.p50_ms is not None else self.mean_ms

    @property
    def noise_ms(self) -> float:
        """How far apart two medians may be by chance, in ms: the interquartile range, or the
        standard deviation where only a summary is known."""
        if self.spread is not None and self.p50_ms is not None:
            return self.spread * self.p50_ms
        return self.stdev_ms or 0.0


@dataclass
class LatencyRecord:
    """One thing timed: an artifact in a runtime configuration, the PyTorch reference, a stage
    of a driven frame, or an artifact on an Android device."""

    name: str  # unique within a report, e.g. "frame_fp32_tflite @ litert xnnpack 2 threads"
    kind: str  # one of KINDS
    graph: str | None  # frame, baked_frame, identity, ...; the stage's name for kind "stage"
    precision: str | None
    runtime: str  # litert, onnxruntime, executorch, torch, android litert, ...
    configuration: str  # how the runtime was set up, in words ("XNNPACK, 2 threads", "GPU fp16", ...)
    threads: int | None
    stats: LatencyStats
    runs_ms: list[float] | None = None
    artifact: str | None = None  # the manifest's artifact name
    model_bytes: int | None = None
    macs: int | None = None  # multiply-accumulates of one call
    peak_memory_mb: float | None = None  # resident memory the model and its calls added
    first_run_ms: float | None = None  # the first call after loading (initialisation included)
    load_ms: float | None = None
    device: str | None = None  # "host" or the Android device's model
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @classmethod
    def from_runs(cls, runs_ms: list[float], **fields_) -> "LatencyRecord":
        """A record with its runs and their statistics."""
        return cls(stats=LatencyStats.of_runs(runs_ms), runs_ms=[float(r) for r in runs_ms], **fields_)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s at the typical latency (2 FLOPs per MAC), or None without MACs."""
        if not self.macs or self.stats.typical_ms <= 0:
            return None
        return 2.0 * self.macs / (self.stats.typical_ms * 1e-3) / 1e9

    def as_dict(self) -> dict:
        d = asdict(self)
        d["gflops"] = None if self.gflops is None else round(self.gflops, 2)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyRecord":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["stats"] = LatencyStats(**d["stats"])
        return cls(**values)


@dataclass(frozen=True)
class Regression:
    """A record that got slower between two reports by more than the threshold and the noise."""

    name: str
    old_ms: float
    new_ms: float
    noise_ms: float

    @property
    def change(self) -> float:
        return self.new_ms / self.old_ms - 1.0


def compare_records(old: list[LatencyRecord], new: list[LatencyRecord],
                    fraction: float = REGRESSION_FRACTION) -> tuple[list[Regression], list[str]]:
    """Regressions of `new` against `old`, matched by name, and the names found in only one.

    A record regressed when its typical latency grew by more than `fraction` of the old one and
    by more than both runs' noise together (so a 6% change in runs that spread by 20% is not
    called a regression: the measurement cannot tell).
    """
    old_by_name = {r.name: r for r in old}
    new_by_name = {r.name: r for r in new}
    regressions = []
    for name in sorted(old_by_name.keys() & new_by_name.keys()):
        a, b = old_by_name[name].stats, new_by_name[name].stats
        growth = b.typical_ms - a.typical_ms
        noise = NOISE_FACTOR * (a.noise_ms + b.noise_ms)
        if growth > fraction * a.typical_ms and growth > noise:
            regressions.append(Regression(name, a.typical_ms, b.typical_ms, noise))
    unmatched = sorted(old_by_name.keys() ^ new_by_name.keys())
    return regressions, unmatched


def latency_document(records: list[LatencyRecord], machine: dict, settings: dict, gemm: dict | None = None,
                     extra: dict | None = None) -> dict:
    """The JSON document of a benchmark run (reports/latency.json)."""
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise ValueError("latency record names must be unique within a report")
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "machine": machine, "settings": settings,
            "gemm": gemm, "records": [r.as_dict() for r in records], **(extra or {})}


def read_latency_document(path: Path) -> tuple[dict, list[LatencyRecord]]:
    """A latency.json written by `bench`, or an InputError naming what is wrong with it."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"latency report {path} does not exist; give the latency.json of an earlier `bench` run") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a latency report (not JSON: {exc}); give the latency.json `bench` wrote") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InputError(f"{path} is not a latency report (no \"schema\": \"{SCHEMA}\"); give the latency.json `bench` wrote")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path} has latency schema version {document.get('schema_version')}, this tool reads "
                         f"{SCHEMA_VERSION}; re-run `bench` with this version to compare")
    try:
        records = [LatencyRecord.from_dict(r) for r in document["records"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path} has a damaged record ({type(exc).__name__}: {exc}); re-run `bench`") from None
    return document, records

