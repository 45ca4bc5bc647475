"""Host latency of bundle artifacts, side by side in one run (`bilayer-mobile bench`, `make bench`).

Every artifact is timed in its own CPU runtime (LiteRT with XNNPACK, onnxruntime) with the same
thread count, on its first golden sample. The runs are interleaved round-robin (one timed call
of each artifact per round) so that whatever else the machine does affects all of them alike,
with a pause between calls: onnxruntime's worker threads spin for a while after a run, and
would otherwise slow whatever runs next (measured: a LiteRT graph timed right after an
onnxruntime run took 42 ms instead of 25 ms). LiteRT runs in two configurations: its default
and with XNNPACK's latest features. The report gives p50, p90 and the spread. Timings are host
numbers for comparing artifacts with each other on one machine, not phone numbers (phones:
Android over adb, not here). Nothing is asserted about time in tests: numbers live in the
reports this writes and in docs/.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..reference.files import atomic_write, write_text_atomic
from .litert_runner import LiteRtRunner
from .machine import describe_machine, machine_line
from .onnxruntime_runner import OnnxRuntimeRunner
from .native_output import native_output_captured
from .validate import check_format, check_integrity, load_manifest


PAUSE_S = 0.2  # between timed calls: longer than onnxruntime's spin-wait after a run


def _runtime_label(runtime: str, configuration: str) -> str:
    return runtime if configuration == "default" else f"{runtime} ({configuration})"


@dataclass
class Timing:
    """The latency of one artifact in one runtime: every run (ms) and its summary."""

    bundle: str
    artifact: str
    graph: str
    precision: str
    runtime: str
    configuration: str  # how the runtime was set up: "default", "XNNPACK latest features"
    warp: str | None
    runs_ms: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.runs_ms, 50))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.runs_ms, 90))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(p50_ms=round(self.p50_ms, 2), p90_ms=round(self.p90_ms, 2),
                 stdev_ms=round(statistics.pstdev(self.runs_ms), 2), runs_ms=[round(x, 2) for x in self.runs_ms])
        return d


# The configurations timed for each artifact of a runtime: (name, how to make its runner).
CONFIGURATIONS = {
    "litert": (("default", lambda path, threads: LiteRtRunner(path, num_threads=threads)),
               ("XNNPACK latest features",
                lambda path, threads: LiteRtRunner(path, num_threads=threads, xnnpack_latest_features=True))),
    "onnxruntime": (("default", lambda path, threads: OnnxRuntimeRunner(path, intra_op_threads=threads)),),
}


def _load_and_warm_up(bundles, graphs, precisions, threads: int, warmup: int) -> list[tuple]:
    """(runner, prepared feed, Timing) for each artifact and runtime configuration, each run
    `warmup` times."""
    entries = []
    for bundle in bundles:
        manifest = load_manifest(bundle)
        check_format(manifest, bundle)
        check_integrity(bundle, manifest)
        for a in manifest["artifacts"]:
            if a["graph"] in graphs and a["precision"] in precisions and a["runtime"] in CONFIGURATIONS:
                with np.load(Path(bundle) / a["golden"]) as golden:
                    feed = {i["name"]: golden[i["name"]][0] for i in a["inputs"]}
                for configuration, make_runner in CONFIGURATIONS[a["runtime"]]:
                    runner = make_runner(Path(bundle) / a["file"], threads)
                    timing = Timing(str(bundle), a["name"], a["graph"], a["precision"], a["runtime"], configuration,
                                    a.get("warp"))
                    entries.append((runner, runner.prepare(feed), timing))
    for _ in range(warmup):
        for runner, feed, _timing in entries:
            runner._infer(feed)
    return entries


def benchmark_bundles(bundles: list[Path], graphs: tuple[str, ...], precisions: tuple[str, ...], threads: int,
                      runs: int, warmup: int, progress=None, pause_s: float = PAUSE_S) -> list[Timing]:
    """Time every published artifact of `graphs` x `precisions` in `bundles`, interleaved, with
    `pause_s` between calls."""
    with native_output_captured():  # the runtimes' C++ banners and notices: to the log, not the console
        entries = _load_and_warm_up(bundles, graphs, precisions, threads, warmup)
    time.sleep(pause_s)
    for k in range(runs):
        for runner, feed, timing in entries:
            start = time.perf_counter()
            runner._infer(feed)  # the prepared feed: time the runtime, not the feed check
            timing.runs_ms.append((time.perf_counter() - start) * 1e3)
            time.sleep(pause_s)
        if progress:
            progress(f"round {k + 1}/{runs}")
    return [t for _, _, t in entries]


def benchmark_markdown(timings: list[Timing], machine: dict, threads: int) -> str:
    """The side-by-side table, fastest first within each graph and precision."""
    lines = ["# Host latency, side by side", "", f"Machine: {machine_line(machine)}; {threads} threads per runtime; "
             f"{len(timings[0].runs_ms) if timings else 0} interleaved runs each.", "",
             "| graph | precision | runtime | warp | p50 (ms) | p90 (ms) | artifact (bundle) |", "|---|---|---|---|---|---|---|"]
    for t in sorted(timings, key=lambda t: (t.graph, t.precision, t.p50_ms)):
        lines.append(f"| {t.graph} | {t.precision} | {_runtime_label(t.runtime, t.configuration)} | {t.warp or '-'} | {t.p50_ms:.1f} | {t.p90_ms:.1f} | "
                     f"{t.artifact} ({Path(t.bundle).name}) |")
    lines += ["", "![p50 latency per artifact](benchmark.png)", ""]
    return "\n".join(lines)


def plot_timings(timings: list[Timing], path: Path) -> None:
    """Box plot of every artifact's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(timings, key=lambda t: (t.graph, t.precision, t.p50_ms))
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(ordered) + 1.2))
    ax.boxplot([t.runs_ms for t in ordered], vert=False, showfliers=False)
    ax.set_yticks(range(1, len(ordered) + 1),
                  [f"{t.graph} {t.precision} {_runtime_label(t.runtime, t.configuration)} ({t.warp or '-'})" for t in ordered], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency per frame (ms)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def write_benchmark(out: Path, timings: list[Timing], threads: int) -> None:
    """out/benchmark.json, out/benchmark.md and out/benchmark.png."""
    machine = describe_machine()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "benchmark.json", json.dumps(
        {"machine": machine, "threads": threads, "timings": [t.as_dict() for t in timings]}, indent=2))
    plot_timings(timings, out / "benchmark.png")
    write_text_atomic(out / "benchmark.md", benchmark_markdown(timings, machine, threads))
