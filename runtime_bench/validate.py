"""`validate`: run every artifact of a bundle in its real runtime and gate on parity.

Order of work: every file's sha256 is checked against the manifest first (a tampered or
truncated model fails before anything runs); then each artifact runs on its golden inputs (real
faces) in its runtime (onnxruntime, the LiteRT interpreter) and every output is compared with
the PyTorch reference's output stored beside the inputs. An artifact passes when the PSNR of
its gated outputs (image for frame graphs, texture for identity graphs), worst sample, reaches
the threshold of its precision (`runtime_bench.compare.THRESHOLDS_DB`) and, for frame graphs,
its mean UV error stays within the precision's `UV_TOLERANCE` for the reference's own warp.

Every figure is recorded with the machine that measured it (`runtime_bench.machine`): a bundle's
manifest keeps the figures of its export, and `validate` elsewhere reports which of its own
figures moved by more than `FIGURE_DRIFT_DB` / `FIGURE_DRIFT_UV_PX` from them. Artifacts that
failed their gate at export are listed under `rejected` in the manifest (files in `rejected/`,
which an app need not ship); they are checked and gated again only when asked.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..reference.errors import BilayerError

from .compare import (FIGURE_DRIFT_DB, FIGURE_DRIFT_UV_PX, FIGURE_PSNR_CEILING_DB, GATED_OUTPUTS, THRESHOLDS_DB,
                      UV_TOLERANCE, OutputComparison, compare_output, warp_px)
from .machine import describe_machine, machine_line, same_kernels


class BundleError(BilayerError):
    """A bundle is missing, malformed, or a file does not match its manifest entry."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle: Path) -> dict:
    """The bundle's manifest.json as a dict with at least "artifacts" (a list) and "model".

    A missing, empty, binary, non-UTF-8 or invalid-JSON manifest, or one without those keys,
    raises `BundleError` naming the file and saying to re-export.
    """
    from ..reference.user_files import read_json_object

    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle} has no manifest.json; is it a bundle written by `bilayer-mobile export`?")
    fix = "the bundle is damaged: re-run `bilayer-mobile export` to write it again"
    manifest = read_json_object(path, "bundle manifest", BundleError, required=("artifacts", "model"), fix=fix)
    if not isinstance(manifest["artifacts"], list):
        raise BundleError(f"cannot read bundle manifest {path}: its 'artifacts' is not a list; {fix}")
    return manifest


def runnable_rejected(manifest: dict) -> list[dict]:
    """The rejected artifacts that have a file (a conversion that failed has none)."""
    return [a for a in manifest.get("rejected", []) if a.get("file")]


def check_integrity(bundle: Path, manifest: dict, include_rejected: bool = False) -> None:
    """Every published artifact (and rejected one, when asked) and its golden file exists and has
    the sha256 the manifest records. Rejected files are optional: an app ships without them."""
    for artifact in manifest["artifacts"] + (runnable_rejected(manifest) if include_rejected else []):
        for key in ("file", "golden"):
            rel = artifact[key]
            expected = artifact["sha256"] if key == "file" else manifest["golden"][rel]["sha256"]
            path = Path(bundle) / rel
            if not path.is_file():
                raise BundleError(f"{rel} (listed in manifest.json for artifact {artifact['name']}) is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(
                    f"{rel} does not match manifest.json (sha256 {actual[:12]}... != {expected[:12]}...): the file was "
                    "modified or truncated after export; re-run `bilayer-mobile export`"
                )


def make_runner(target: str, path: Path):
    """The runtime of a target: onnxruntime for ONNX, the LiteRT interpreter for TFLite."""
    if target == "onnx":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path)
    if target == "tflite":
        from .litert_runner import LiteRtRunner

        return LiteRtRunner(path)
    raise BundleError(f"no runtime on this machine for target {target!r}")


@dataclass
class ArtifactResult:
    name: str
    target: str
    precision: str
    graph: str
    threshold_db: float
    passed: bool
    outputs: dict[str, OutputComparison] = field(default_factory=dict)  # worst sample per output
    skipped: str | None = None
    # frame graphs: the reference's mean warp (px) and the UV error allowed for it
    warp_px: float | None = None
    uv_limit_px: float | None = None
    # failed int8 / int8_dynamic artifacts: per-tensor localisation against the fp32 artifact
    # (runtime_bench.localize.Localization.as_dict, or {"error": ...} when it could not run)
    localization: dict | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "precision": self.precision, "graph": self.graph,
                "threshold_db": self.threshold_db, "passed": self.passed, "skipped": self.skipped,
                "warp_px": self.warp_px, "uv_limit_px": self.uv_limit_px,
                "outputs": {k: v.as_dict() for k, v in self.outputs.items()}, "localization": self.localization}

    @property
    def gated_psnr_db(self) -> float:
        gated = [self.outputs[n].psnr_db for n in GATED_OUTPUTS[self.graph] if n in self.outputs]
        return min(gated) if gated else math.nan

    @property
    def uv_error_px(self) -> float | None:
        uv = self.outputs.get("uv")
        return None if uv is None else uv.uv_error_px

    def figures(self) -> dict:
        """The numbers a later `validate` compares with: gated PSNR, UV error, every output's PSNR."""
        psnr = lambda x: "inf" if math.isinf(x) else round(x, 2)
        return {"passed": self.passed, "gated_psnr_db": psnr(self.gated_psnr_db),
                "uv_error_px": None if self.uv_error_px is None else round(self.uv_error_px, 4),
                "uv_limit_px": None if self.uv_limit_px is None else round(self.uv_limit_px, 4),
                "outputs_psnr_db": {k: psnr(v.psnr_db) for k, v in self.outputs.items()}}


def run_artifact(bundle: Path, artifact: dict, image_size: int) -> tuple[ArtifactResult, dict]:
    """Run one artifact on all its golden samples; returns the result and the worst sample's arrays."""
    runner = make_runner(artifact["target"], Path(bundle) / artifact["file"])
    with np.load(Path(bundle) / artifact["golden"]) as golden:
        data = {k: golden[k] for k in golden.files}
    input_names = [i["name"] for i in artifact["inputs"]]
    output_names = [o["name"] for o in artifact["outputs"]]
    samples = data[input_names[0]].shape[0]
    worst: dict[str, OutputComparison] = {}
    worst_arrays: dict = {}
    for k in range(samples):
        result = runner.run({name: data[name][k] for name in input_names})
        for name in output_names:
            comparison = compare_output(name, data[name][k], result[name], image_size)
            if name not in worst or comparison.psnr_db < worst[name].psnr_db:
                worst[name] = comparison
                if name in GATED_OUTPUTS[artifact["graph"]]:
                    worst_arrays = {"reference": data[name][k], "artifact": result[name], "output": name, "sample": k}
    precision = artifact["precision"]
    res = ArtifactResult(artifact["name"], artifact["target"], precision, artifact["graph"],
                         THRESHOLDS_DB[precision], False, worst)
    uv_ok = True
    if "uv" in worst:
        res.warp_px = warp_px(data["uv"], image_size)
        res.uv_limit_px = UV_TOLERANCE[precision].limit_px(res.warp_px)
        uv_ok = worst["uv"].uv_error_px <= res.uv_limit_px
    res.passed = bool(res.gated_psnr_db >= res.threshold_db and uv_ok)
    return res, worst_arrays


LOCALIZED_PRECISIONS = ("int8", "int8_dynamic")
LOCALIZATION_DRIFTS_KEPT = 20  # worst tensors kept in parity.json beside the first jump


def localize_failure(bundle: Path, manifest: dict, artifact: dict, sample: int) -> dict | None:
    """Per-tensor localisation of a failed quantized artifact against the fp32 artifact of the same
    graph and target, on golden sample `sample` (None when the bundle has no such fp32 artifact)."""
    reference = next((a for a in manifest["artifacts"] + runnable_rejected(manifest) if a["graph"] == artifact["graph"]
                      and a["target"] == artifact["target"] and a["precision"] == "fp32"), None)
    if reference is None:
        return None
    from .localize import localize_divergence

    try:
        with np.load(Path(bundle) / artifact["golden"]) as golden:
            feed = {i["name"]: golden[i["name"]][sample] for i in artifact["inputs"]}
        loc = localize_divergence(artifact["target"], Path(bundle) / reference["file"], Path(bundle) / artifact["file"],
                                  feed, floor_db=THRESHOLDS_DB[artifact["precision"]])
    except Exception as exc:  # the gate's verdict stands; say why there is no localisation
        return {"error": f"{type(exc).__name__}: {exc}", "against": reference["name"], "sample": sample}
    return {**loc.as_dict(max_drifts=LOCALIZATION_DRIFTS_KEPT), "against": reference["name"], "sample": sample}


@dataclass
class ValidationReport:
    """What `validate_bundle` found: one result per artifact run, the machine it ran on, the
    bundle's recorded figures and machine (None for a bundle being exported), the figures that
    moved from the recorded ones, and the artifacts rejected at export."""

    results: list[ArtifactResult]
    worst_case: dict
    machine: dict
    recorded_machine: dict | None = None
    drift: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[ArtifactResult]:
        return [r for r in self.results if not r.passed]


def validate_bundle(bundle: Path | str, progress=None, include_rejected: bool = False) -> ValidationReport:
    """Check integrity, then run and compare every published artifact (and the rejected ones too
    when `include_rejected`); compare the figures with those the bundle recorded."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    manifest = load_manifest(bundle)
    check_integrity(bundle, manifest, include_rejected)
    image_size = manifest["model"]["config"]["image_size"]
    artifacts = manifest["artifacts"] + (runnable_rejected(manifest) if include_rejected else [])
    if not artifacts:
        raise BundleError(f"{bundle} lists no artifact to validate (manifest.json 'artifacts' is empty); "
                          "re-run `bilayer-mobile export`")
    results, worst_case, worst_margin = [], {}, math.inf
    for i, artifact in enumerate(artifacts, 1):
        if progress:
            progress(f"[{i}/{len(artifacts)}] validating {artifact['name']}")
        result, arrays = run_artifact(bundle, artifact, image_size)
        if not result.passed and artifact["precision"] in LOCALIZED_PRECISIONS and "sample" in arrays:
            result.localization = localize_failure(bundle, manifest, artifact, arrays["sample"])
        results.append(result)
        margin = result.gated_psnr_db - result.threshold_db
        if arrays and margin < worst_margin:
            worst_margin, worst_case = margin, {**arrays, "artifact_name": artifact["name"]}
    recorded = manifest.get("validation")
    report = ValidationReport(results, worst_case, describe_machine(),
                              recorded_machine=recorded["machine"] if recorded else None,
                              rejected=manifest.get("rejected", []))
    if recorded:
        report.drift = figure_drift(results, recorded["figures"])
    return report


def figure_drift(results: list[ArtifactResult], recorded: dict[str, dict]) -> list[str]:
    """One line per artifact whose gated PSNR, UV error or verdict moved from its recorded figures
    by more than the drift tolerances (`runtime_bench.compare.FIGURE_DRIFT_*`)."""
    capped = lambda x: min(float(x), FIGURE_PSNR_CEILING_DB)
    lines = []
    for r in results:
        before = recorded.get(r.name)
        if before is None:
            lines.append(f"{r.name}: no recorded figures in the manifest")
            continue
        moved = []
        old_db, new_db = capped(before["gated_psnr_db"]), capped(r.gated_psnr_db)
        if abs(new_db - old_db) > FIGURE_DRIFT_DB:
            moved.append(f"{GATED_OUTPUTS[r.graph][0]} {old_db:.1f} -> {new_db:.1f} dB")
        if before.get("uv_error_px") is not None and r.uv_error_px is not None:
            if abs(r.uv_error_px - before["uv_error_px"]) > FIGURE_DRIFT_UV_PX:
                moved.append(f"UV {before['uv_error_px']:.3f} -> {r.uv_error_px:.3f} px")
        if bool(before.get("passed")) != r.passed:
            moved.append("verdict " + ("PASS -> FAIL" if before.get("passed") else "FAIL -> PASS"))
        if moved:
            lines.append(f"{r.name}: " + ", ".join(moved))
    return lines


def uv_limit_text(r: ArtifactResult) -> str:
    return "-" if r.uv_error_px is None else f"{r.uv_error_px:.3f} (max {r.uv_limit_px:.3f})"


def results_table(results: list[ArtifactResult], rejected: set[str] = frozenset()) -> str:
    """A Markdown table of every artifact: gated PSNR vs threshold and the other outputs.
    Artifacts named in `rejected` are marked as kept out of the bundle."""
    lines = ["| artifact | target | precision | graph | gated PSNR (dB) | threshold (dB) | UV error (px) | result | other outputs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        others = []
        for name, c in r.outputs.items():
            if name in GATED_OUTPUTS[r.graph]:
                continue
            text = f"{name} {c.psnr_db:.1f} dB"
            if c.uv_error_px is not None:
                text += f" ({c.uv_error_px:.3f} px)"
            others.append(text)
        verdict = "skipped: " + r.skipped if r.skipped else ("PASS" if r.passed else "**FAIL**")
        if r.name in rejected:
            verdict += " (rejected/)"
        lines.append(f"| {r.name} | {r.target} | {r.precision} | {r.graph} | {r.gated_psnr_db:.1f} | "
                     f"{r.threshold_db:.0f} | {uv_limit_text(r)} | {verdict} | {', '.join(others)} |")
    return "\n".join(lines)


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
    (reports / "parity.json").write_text(json.dumps({
        "machine": report.machine,
        "thresholds_db": THRESHOLDS_DB,
        "uv_tolerance": {k: {"floor_px": t.floor_px, "share_of_warp": t.share_of_warp} for k, t in UV_TOLERANCE.items()},
        "gated_outputs": GATED_OUTPUTS,
        "artifacts": [r.as_dict() for r in report.results],
        "rejected": sorted(rejected),
        "drift_from_recorded": report.drift,
    }, indent=2))
    md = ["# Parity of every artifact against the PyTorch reference", "",
          f"Measured on: {machine_line(report.machine)}.", "",
          "Each artifact ran in its real runtime on the bundle's golden inputs (real faces). PSNR uses the "
          "reference's range as peak; the worst sample is reported. Gates: " + gate_description() + ".", "",
          results_table(report.results, rejected), ""]
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
    (reports / "parity.md").write_text("\n".join(md))


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
    fig.savefig(path, dpi=90)
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
    fig.savefig(path, dpi=90)
    plt.close(fig)
