"""Reports of a validation that people read: the parity table, reports/parity.{md,json} and
plots of every artifact's margin over its gate and of the worst artifact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reference.files import atomic_write, write_text_atomic
from .compare import THRESHOLDS_DB, UV_TOLERANCE
from .machine import machine_line
from .results import ArtifactResult
from .validate import ValidationReport


def uv_limit_text(r: ArtifactResult) -> str:
    if r.uv_error_px is None:
        return "-"
    return f"{r.uv_error_px:.3f} " + ("(reported)" if r.uv_limit_px is None else f"(max {r.uv_limit_px:.3f})")


def results_table(results: list[ArtifactResult], rejected: set[str] = frozenset()) -> str:
    """A Markdown table of every artifact: gated PSNR vs threshold and the other outputs.
    Artifacts named in `rejected` are marked as kept out of the bundle."""
    lines = ["| artifact | runtime | precision | graph | gated PSNR (dB) | threshold (dB) | UV error (px) | result | other outputs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        others = []
        for name, c in r.outputs.items():
            if name in r.gated_outputs:
                continue
            text = f"{name} {c.psnr_db:.1f} dB"
            if c.uv_error_px is not None:
                text += f" ({c.uv_error_px:.3f} px)"
            others.append(text)
        verdict = "PASS" if r.passed else "**FAIL**"
        if r.gpu is not None:
            verdict += ", " + ("fully accelerated" if r.gpu["fully_accelerated"] else "**not fully accelerated**")
        if (r.artifact or r.name) in rejected:
            verdict += " (rejected/)"
        runtime = r.runtime + (f" ({r.samples} samples)" if r.gpu is not None else "")
        lines.append(f"| {r.name} | {runtime} | {r.precision} | {r.graph} | {r.gated_psnr_db:.1f} | "
                     f"{r.threshold_db:.0f} | {uv_limit_text(r)} | {verdict} | {', '.join(others)} |")
    return "\n".join(lines)


def checked_where(results: list[ArtifactResult], bundle: Path) -> list[str]:
    """The "what was checked where" section: what each runtime that ran establishes, then what
    each target of the bundle leaves unchecked (its manifest limitations)."""
    from .runners import RUNNERS, STAND_INS

    runners = {cls.runtime: cls for cls in list(RUNNERS.values()) + list(STAND_INS.values())}
    used = sorted({r.runtime for r in results if r.runtime in runners})
    lines = ["## What was checked where", "", "| runtime | what its runs establish |", "|---|---|"]
    lines += [f"| {runtime} | {runners[runtime].checks} |" for runtime in used]
    try:
        targets = json.loads((Path(bundle) / "manifest.json").read_text()).get("targets", {})
    except (OSError, ValueError):
        targets = {}
    if targets:
        lines += ["", "Not checked here, per target (the manifest's `targets.<name>.limitations`):", ""]
        for name, target in targets.items():
            lines += [f"- {name}: {key}: {why}" for key, why in target.get("limitations", {}).items()]
    return lines + [""]


def gate_description() -> str:
    """The gates in one paragraph (printed by `validate`, written into parity.md)."""
    psnr = ", ".join(f"{k} >= {v:.0f} dB" for k, v in THRESHOLDS_DB.items())
    uv = ", ".join(f"{k} <= {t.floor_px} px + {t.share_of_warp:.4g} x warp" for k, t in UV_TOLERANCE.items())
    return (f"gated output PSNR vs the PyTorch reference (worst sample): {psnr}; frame-graph mean UV error: {uv} "
            "(warp = the reference's mean texel displacement on the golden set)")


def write_reports(bundle: Path, report: ValidationReport) -> None:
    """reports/parity.json, reports/parity.md, a plot of every artifact's margin over its gate
    and a picture of the worst artifact."""
    reports = Path(bundle) / "reports"
    reports.mkdir(exist_ok=True)
    rejected = {a["name"] for a in report.rejected}
    write_text_atomic(reports / "parity.json", json.dumps({
        "machine": report.machine,
        "thresholds_db": THRESHOLDS_DB,
        "uv_tolerance": {k: {"floor_px": t.floor_px, "share_of_warp": t.share_of_warp} for k, t in UV_TOLERANCE.items()},
        "artifacts": [r.as_dict() for r in report.results],
        "rejected": sorted(rejected),
        "drift_from_recorded": report.drift,
        "not_run": report.not_run,
    }, indent=2))
    md = ["# Parity of every artifact against the PyTorch reference", "",
          f"Measured on: {machine_line(report.machine)}.", "",
          "Each artifact ran in its real runtime on the bundle's golden inputs (real faces). PSNR uses the "
          "reference's range as peak; the worst sample is reported. Gates: " + gate_description() + ".", "",
          results_table(report.results, rejected), "",
          "Runs on LiteRT's GPU accelerator (`@litert_gpu`) use its default fp16 mode, on a few golden samples, and "
          "are gated at the looser of the artifact's gate and fp16's; reports/coverage.md has the accelerator's "
          "verdict for every TFLite artifact. Shader rows run the bundle's compositing shaders on this machine's GPU "
          "driver (manual sampling gated at fp32, hardware sampling at fp16).", ""]
    md += checked_where(report.results, bundle)
    if report.not_run:
        md += ["## Not run on this machine", ""] + [f"- {line}" for line in report.not_run] + [""]
    if rejected:
        md += ["## Rejected artifacts", "",
               "These failed their gate at export (or could not be produced) and are kept out of `models/`: their "
               "files are in `rejected/` for inspection, listed under `rejected` in manifest.json (figures under "
               "`validation.figures`). Do not ship them.", ""]
        md += [f"- {a['name']}" + (f": could not be produced ({a['error'].splitlines()[0]})" if a.get("error") else "")
               for a in sorted(report.rejected, key=lambda a: a["name"])] + [""]
    if report.drift:
        md += ["## Figures that moved from the bundle's recorded ones", "",
               f"Recorded on: {machine_line(report.recorded_machine or {})}.", ""]
        md += [f"- {line}" for line in report.drift] + [""]
    failed = [r for r in report.results if r.localization]
    if failed:
        md += ["## Where the failed quantized artifacts diverge", "",
               "Per-tensor comparison with the fp32 artifact of the same graph and target on the worst golden sample "
               "(`runtime_bench/localize.py`: first op whose output falls more than 10 dB below its inputs and under "
               "the gate).", ""]
        for r in failed:
            md.append(f"- {r.name}: {localization_line(r.localization)}")
        md.append("")
    if report.results:
        plot_margins(report.results, reports / "margins.png")
        md += ["## Margin over the gate", "", "![gated PSNR minus threshold per artifact](margins.png)", ""]
    if report.worst_case:
        plot_worst_case(report.worst_case, reports / "worst_artifact.png")
        md += [f"## Worst artifact: {report.worst_case['artifact_name']} ({report.worst_case['output']})", "",
               "![reference vs artifact vs error](worst_artifact.png)", ""]
    write_text_atomic(reports / "parity.md", "\n".join(md))


def plot_margins(results: list[ArtifactResult], path: Path) -> None:
    """Horizontal bars: gated PSNR minus threshold (capped at 40 dB), green pass / red fail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    margins = [min(r.gated_psnr_db - r.threshold_db, 40.0) for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(results) + 1.2))
    ax.barh(range(len(results)), margins, color=["tab:green" if r.passed else "tab:red" for r in results])
    ax.set_yticks(range(len(results)), [r.name for r in results], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("gated PSNR minus the precision's threshold (dB, capped at 40)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def localization_line(loc: dict) -> str:
    if "error" in loc:
        return f"localisation failed ({loc['error']})"
    jump = loc.get("first_jump")
    if not jump:
        return f"no single-op jump found ({loc.get('note', '')})"
    psnr = jump["psnr_db"]
    psnr = f"{psnr:.1f}" if isinstance(psnr, (int, float)) else psnr
    return f"first divergence: {jump['name']} ({jump['op_type']}) at position {jump['position']}, PSNR {psnr} dB"


def plot_worst_case(case: dict, path: Path) -> None:
    """Reference, artifact and |error| heat-map side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, art = np.asarray(case["reference"], np.float64)[0], np.asarray(case["artifact"], np.float64)[0]
    to_rgb = lambda x: np.clip((x.transpose(1, 2, 0) + 1) / 2, 0, 1) if x.shape[0] == 3 else x[0]
    error = np.abs(ref - art).max(axis=0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(to_rgb(ref))
    axes[0].set_title("reference (PyTorch)")
    axes[1].imshow(to_rgb(art))
    axes[1].set_title(case["artifact_name"])
    im = axes[2].imshow(error, cmap="inferno")
    axes[2].set_title("|error| (max over channels)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
