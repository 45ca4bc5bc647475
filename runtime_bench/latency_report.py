"""The latency report people read: reports/latency.md with its plots, from `LatencyRecord`s.

Sections: the bar (the headline comparisons), host latency per graph side by side (with the
achieved GFLOP/s against the machine's GEMM rate and each artifact's ratio to the PyTorch eager
reference on the same machine), the stage breakdown of a driven frame, Android devices when any
ran, the roofline estimate for phone GPUs, and, with `--compare`, the regressions against an
earlier run. Plots: latency per artifact (p50 with the p10-p90 range), GFLOP/s against the GEMM
ceiling, the stage breakdown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..reference.files import atomic_write
from .gemm import gemm_limit_ms
from .latency import LatencyRecord, Regression
from .machine import machine_line

SPEEDUP_BAR = 2.0  # the best LiteRT frame artifact against the PyTorch eager reference (p50)
GEMM_BAR = 1.5  # the fp32 LiteRT frame graph against the frame's GEMM limit


def eager_reference(records: list[LatencyRecord], graph: str) -> LatencyRecord | None:
    """The PyTorch eager record an artifact of `graph` is compared with: the reference frame for
    every frame graph, the identity with the enhancer for the identity graph."""
    wanted = "reference frame @ torch eager" if graph != "identity" else "reference identity with enhancer @ torch eager"
    return next((r for r in records if r.name == wanted), None)


def _ratio(eager: LatencyRecord | None, r: LatencyRecord) -> str:
    """The eager reference's p50 over this record's, where both do the same work (same MACs):
    the identity without the enhancer is another computation, not a faster one."""
    if eager is None or (eager.macs and r.macs and eager.macs != r.macs):
        return "-"
    return f"{eager.stats.typical_ms / r.stats.typical_ms:.2f}x"


def _tail(x: float | None, count: int, needed: int) -> str:
    """A tail percentile, shown only when there are enough runs for it to be more than the
    largest run (p90 from 10 runs, p99 from 100)."""
    return _ms(x) if count >= needed else "-"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def headline(records: list[LatencyRecord], gemm: dict | None) -> list[dict]:
    """The issue's bar, measured: each line says what was compared, the figures and whether it holds."""
    lines = []
    eager = eager_reference(records, "frame")
    litert_frames = [r for r in records if r.kind == "artifact" and r.runtime == "litert" and r.graph == "frame"]
    if eager and litert_frames:
        best = min(litert_frames, key=lambda r: r.stats.typical_ms)
        ratio = eager.stats.typical_ms / best.stats.typical_ms
        lines.append({"what": f"best LiteRT frame artifact vs PyTorch eager (p50), bar {SPEEDUP_BAR:g}x",
                      "figures": f"{best.name}: {_ms(best.stats.typical_ms)} ms vs {_ms(eager.stats.typical_ms)} ms = {ratio:.2f}x",
                      "holds": ratio >= SPEEDUP_BAR})
    fp32 = [r for r in litert_frames if r.precision == "fp32" and r.macs]
    if gemm and fp32:
        best = min(fp32, key=lambda r: r.stats.typical_ms)
        for when in ("before", "after"):
            if when in gemm:
                limit = gemm_limit_ms(best.macs, gemm[when]["ceiling_gflops"])
                ratio = best.stats.typical_ms / limit
                lines.append({"what": f"fp32 LiteRT frame graph vs the frame's GEMM limit ({when} the runs), bar {GEMM_BAR:g}x",
                              "figures": f"{best.name}: {_ms(best.stats.typical_ms)} ms vs {2 * best.macs / 1e9:.2f} GFLOP / "
                                         f"{gemm[when]['ceiling_gflops']:.0f} GFLOP/s = {limit:.1f} ms: {ratio:.2f}x",
                              "holds": ratio <= GEMM_BAR})
    return lines


def host_table(records: list[LatencyRecord], gemm: dict | None) -> list[str]:
    ceiling = gemm["before"]["ceiling_gflops"] if gemm and "before" in gemm else None
    lines = []
    host = [r for r in records if r.kind in ("artifact", "reference")]
    for graph in dict.fromkeys(r.graph for r in host):
        rows = sorted((r for r in host if r.graph == graph), key=lambda r: r.stats.typical_ms)
        eager = eager_reference(records, graph)
        lines += [f"### {graph}", "",
                  "| what | runtime | configuration | precision | min | p50 | p90 | p99 | spread | first call | peak memory (MB) | size (MB) | GFLOP/s | of GEMM | vs eager |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            s = r.stats
            gflops = r.gflops
            lines.append(
                f"| {r.artifact or r.name} | {r.runtime} | {r.configuration} | {r.precision or '-'} | {_ms(s.min_ms)} | "
                f"**{_ms(s.p50_ms)}** | {_tail(s.p90_ms, s.count, 10)} | {_tail(s.p99_ms, s.count, 100)} | "
                f"{'-' if s.spread is None else f'{s.spread:.0%}'} | "
                f"{_ms(r.first_run_ms)} | {'-' if r.peak_memory_mb is None else f'{r.peak_memory_mb:.0f}'} | "
                f"{'-' if r.model_bytes is None else f'{r.model_bytes / 2**20:.1f}'} | {'-' if gflops is None else f'{gflops:.0f}'} | "
                f"{'-' if gflops is None or not ceiling else f'{gflops / ceiling:.0%}'} | "
                f"{_ratio(eager, r)} |")
        lines.append("")
    return lines


def stage_table(records: list[LatencyRecord], driven_frame_ms: float | None) -> list[str]:
    stages = [r for r in records if r.kind == "stage"]
    if not stages:
        return []
    lines = ["| stage | runtime | calls | p50 (ms) | p90 (ms) | what a call is |", "|---|---|---|---|---|---|"]
    for r in stages:
        lines.append(f"| {r.graph} | {r.runtime} | {r.stats.count} | {_ms(r.stats.p50_ms)} | "
                     f"{_tail(r.stats.p90_ms, r.stats.count, 10)} | {r.configuration} |")
    if driven_frame_ms is not None:
        lines += ["", f"A driven frame (mesh front end, frame graph), mean per frame: **{driven_frame_ms:.1f} ms** "
                      "(detector calls spread over the frames they served; the split variant and dlib are alternatives, not added).", ""]
    return lines


def device_table(records: list[LatencyRecord]) -> list[str]:
    devices = [r for r in records if r.kind == "device"]
    if not devices:
        return []
    lines = ["| artifact | device | configuration | avg (ms) | min (ms) | std (ms) | first (ms) | init (ms) | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in devices:
        s = r.stats
        lines.append(f"| {r.artifact or r.name} | {r.device} | {r.configuration} | {_ms(s.mean_ms)} | {_ms(s.min_ms)} | "
                     f"{_ms(s.stdev_ms)} | {_ms(r.first_run_ms)} | {_ms(r.load_ms)} | "
                     f"{'-' if r.peak_memory_mb is None else f'{r.peak_memory_mb:.0f}'} |")
    return lines + [""]


def comparison_lines(regressions: list[Regression], unmatched: list[str], old_path: str) -> list[str]:
    lines = [f"## Compared with {old_path}", ""]
    if regressions:
        lines += ["| record | old (ms) | new (ms) | change | noise (ms) |", "|---|---|---|---|---|"]
        lines += [f"| {r.name} | {r.old_ms:.1f} | {r.new_ms:.1f} | {r.change:+.0%} | {r.noise_ms:.1f} |" for r in regressions]
    else:
        lines.append("No regression beyond 5% that the runs' spread allows calling one.")
    if unmatched:
        lines += ["", "In only one of the two runs: " + ", ".join(unmatched)]
    return lines + [""]


def latency_markdown(document: dict, records: list[LatencyRecord], roofline_md: str | None = None,
                     comparison: list[str] | None = None, notes: list[str] | None = None) -> str:
    """reports/latency.md."""
    gemm, settings = document.get("gemm"), document["settings"]
    lines = ["# Latency", "",
             f"Machine: {machine_line(document['machine'])}.",
             f"Settings: {settings['threads']} threads per runtime, {settings['runs']} interleaved rounds of the frame graphs, "
             f"{settings['identity_runs']} of the identity graphs, {settings['warmup']} warm-up calls, "
             f"{settings['pause_s']} s between calls; OMP_WAIT_POLICY={settings['omp_wait_policy']}.",
             "Tools: " + ", ".join(f"{k} {v}" for k, v in document["machine"].get("runtimes", {}).items()) + ".", ""]
    if gemm:
        lines.append("fp32 GEMM ceiling (best of numpy and torch SGEMM at "
                     + ", ".join(str(s["n"]) for s in gemm["before"]["sizes"]) + "): "
                     + "; ".join(f"{when} the runs {gemm[when]['ceiling_gflops']:.0f} GFLOP/s "
                                 f"(numpy {gemm[when]['numpy_gflops']:.0f}, torch {gemm[when]['torch_gflops']:.0f})"
                                 for when in ("before", "after") if when in gemm) + ".")
        lines.append("")
    bar = headline(records, gemm)
    if bar:
        lines += ["## The bar", "", "| comparison | measured | holds |", "|---|---|---|"]
        lines += [f"| {b['what']} | {b['figures']} | {'yes' if b['holds'] else '**no**'} |" for b in bar]
        lines.append("")
    lines += ["## Host latency, side by side (ms)", "",
              "Every figure is of wall-clock ms per call on this machine's CPU, one golden sample; spread = "
              "interquartile range / median; p90 is shown from 10 runs, p99 from 100. GFLOP/s = 2 x MACs / p50; 'of GEMM' compares it with the ceiling "
              "above (an fp32 ceiling: int8 rows can exceed it); 'vs eager' is the PyTorch eager reference's p50 over "
              "this row's, for the same work. Peak memory: resident memory "
              "the model and its calls added, measured in a process of its own.", "",
              "![p50 latency per artifact](latency.png)", "", "![achieved GFLOP/s](gflops.png)", ""]
    lines += host_table(records, gemm)
    stages = stage_table(records, document.get("driven_frame_ms"))
    if stages:
        lines += ["## Stages of a driven frame", "", "![stage breakdown](stages.png)", ""] + stages
    lines += ["## Android devices", ""]
    devices = device_table(records)
    lines += devices or [(document.get("android") or {}).get("status", "Not run (no `--android`)."), ""]
    if roofline_md:
        lines += ["## Phone GPUs and NPUs: a roofline estimate", "", roofline_md, ""]
    if comparison:
        lines += comparison
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)


def plot_latency(records: list[LatencyRecord], path: Path) -> None:
    """p50 per host record (log scale), with the p10-p90 range, grouped by graph."""
    plt = _plt()
    host = [r for r in records if r.kind in ("artifact", "reference") and r.runs_ms]
    host.sort(key=lambda r: (r.graph, r.stats.typical_ms))
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(host) + 1.3))
    colours = {"litert": "tab:blue", "onnxruntime": "tab:orange", "executorch": "tab:green", "torch": "tab:red"}
    for i, r in enumerate(host):
        lo, hi = np.percentile(r.runs_ms, [10, 90])
        ax.barh(i, r.stats.typical_ms, color=colours.get(r.runtime, "grey"))
        ax.plot([lo, hi], [i, i], color="black", linewidth=1)
    ax.set_yticks(range(len(host)), [f"{r.graph} {r.precision or ''} {r.runtime} ({r.configuration})" for r in host], fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("p50 latency per call (ms, log scale); line: p10-p90")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_gflops(records: list[LatencyRecord], gemm: dict | None, path: Path) -> None:
    """Achieved GFLOP/s of each host record, against the GEMM ceiling."""
    plt = _plt()
    host = sorted((r for r in records if r.kind in ("artifact", "reference") and r.gflops), key=lambda r: -r.gflops)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(host) + 1.3))
    ax.barh(range(len(host)), [r.gflops for r in host], color="tab:blue")
    if gemm and "before" in gemm:
        ax.axvline(gemm["before"]["ceiling_gflops"], color="tab:red", linestyle="--",
                   label=f"fp32 SGEMM {gemm['before']['ceiling_gflops']:.0f} GFLOP/s")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(host)), [f"{r.graph} {r.precision or ''} {r.runtime} ({r.configuration})" for r in host], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("achieved GFLOP/s (2 x MACs / p50)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_stages(records: list[LatencyRecord], path: Path) -> None:
    """p50 per stage of a driven frame."""
    plt = _plt()
    stages = [r for r in records if r.kind == "stage"]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(stages) + 1.2))
    ax.barh(range(len(stages)), [r.stats.typical_ms for r in stages],
            color=["tab:grey" if "once" in r.configuration else "tab:green" for r in stages])
    ax.set_yticks(range(len(stages)), [r.graph for r in stages], fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("p50 per call (ms, log scale); grey: once per identity")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
