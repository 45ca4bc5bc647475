"""`validate`: run every artifact of a bundle in its real runtime and gate on parity.

Order of work: every file's sha256 is checked against the manifest first (a tampered or
truncated model fails before anything runs); then each artifact runs on its golden inputs (real
faces) in its runtime (onnxruntime, the LiteRT interpreter) and every output is compared with
the PyTorch reference's output stored beside the inputs. An artifact passes when the PSNR of
its gated outputs (image for frame graphs, texture for identity graphs), worst sample, reaches
the threshold of its precision (`runtime_bench.compare.THRESHOLDS_DB`) and, for frame graphs,
its mean UV error stays within `MAX_UV_ERROR_PX`.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.errors import BilayerError

from .compare import GATED_OUTPUTS, MAX_UV_ERROR_PX, THRESHOLDS_DB, OutputComparison, compare_output


class BundleError(BilayerError):
    """A bundle is missing, malformed, or a file does not match its manifest entry."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle: Path) -> dict:
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle} has no manifest.json; is it a bundle written by `bilayer-mobile export`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None


def check_integrity(bundle: Path, manifest: dict) -> None:
    """Every artifact and golden file exists and has the sha256 the manifest records."""
    for artifact in manifest["artifacts"]:
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
    # failed int8 / int8_dynamic artifacts: per-tensor localisation against the fp32 artifact
    # (runtime_bench.localize.Localization.as_dict, or {"error": ...} when it could not run)
    localization: dict | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "precision": self.precision, "graph": self.graph,
                "threshold_db": self.threshold_db, "passed": self.passed, "skipped": self.skipped,
                "outputs": {k: v.as_dict() for k, v in self.outputs.items()}, "localization": self.localization}

    @property
    def gated_psnr_db(self) -> float:
        gated = [self.outputs[n].psnr_db for n in GATED_OUTPUTS[self.graph] if n in self.outputs]
        return min(gated) if gated else math.nan


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
    threshold = THRESHOLDS_DB[artifact["precision"]]
    res = ArtifactResult(artifact["name"], artifact["target"], artifact["precision"], artifact["graph"],
                         threshold, False, worst)
    uv_ok = "uv" not in worst or worst["uv"].uv_error_px <= MAX_UV_ERROR_PX[artifact["precision"]]
    res.passed = bool(res.gated_psnr_db >= threshold and uv_ok)
    return res, worst_arrays


LOCALIZED_PRECISIONS = ("int8", "int8_dynamic")
LOCALIZATION_DRIFTS_KEPT = 20  # worst tensors kept in parity.json beside the first jump


def localize_failure(bundle: Path, manifest: dict, artifact: dict, sample: int) -> dict | None:
    """Per-tensor localisation of a failed quantized artifact against the fp32 artifact of the same
    graph and target, on golden sample `sample` (None when the bundle has no such fp32 artifact)."""
    reference = next((a for a in manifest["artifacts"] if a["graph"] == artifact["graph"]
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


def validate_bundle(bundle: Path | str, progress=None) -> tuple[list[ArtifactResult], dict]:
    """Check integrity, then run and compare every artifact. Returns results and the worst case's arrays."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    manifest = load_manifest(bundle)
    check_integrity(bundle, manifest)
    image_size = manifest["model"]["config"]["image_size"]
    results, worst_case, worst_margin = [], {}, math.inf
    for i, artifact in enumerate(manifest["artifacts"], 1):
        if progress:
            progress(f"[{i}/{len(manifest['artifacts'])}] {artifact['name']}")
        result, arrays = run_artifact(bundle, artifact, image_size)
        if not result.passed and artifact["precision"] in LOCALIZED_PRECISIONS and "sample" in arrays:
            result.localization = localize_failure(bundle, manifest, artifact, arrays["sample"])
        results.append(result)
        margin = result.gated_psnr_db - result.threshold_db
        if arrays and margin < worst_margin:
            worst_margin, worst_case = margin, {**arrays, "artifact_name": artifact["name"]}
    return results, worst_case


def results_table(results: list[ArtifactResult]) -> str:
    """A Markdown table of every artifact: gated PSNR vs threshold and the other outputs."""
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
        uv = r.outputs.get("uv")
        uv_text = f"{uv.uv_error_px:.3f} (max {MAX_UV_ERROR_PX[r.precision]})" if uv is not None else "-"
        lines.append(f"| {r.name} | {r.target} | {r.precision} | {r.graph} | {r.gated_psnr_db:.1f} | "
                     f"{r.threshold_db:.0f} | {uv_text} | {verdict} | {', '.join(others)} |")
    return "\n".join(lines)


def write_reports(bundle: Path, results: list[ArtifactResult], worst_case: dict) -> None:
    """reports/parity.json, reports/parity.md and a picture of the worst artifact."""
    reports = Path(bundle) / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "parity.json").write_text(json.dumps({
        "thresholds_db": THRESHOLDS_DB,
        "max_uv_error_px": MAX_UV_ERROR_PX,
        "gated_outputs": GATED_OUTPUTS,
        "artifacts": [r.as_dict() for r in results],
    }, indent=2))
    md = ["# Parity of every artifact against the PyTorch reference", "",
          "Each artifact ran in its real runtime on the bundle's golden inputs (real faces). PSNR uses the "
          "reference's range as peak; the worst sample is reported. Thresholds per precision: "
          + ", ".join(f"{k} >= {v:.0f} dB" for k, v in THRESHOLDS_DB.items()) + ".", "", results_table(results), ""]
    failed = [r for r in results if r.localization]
    if failed:
        md += ["## Where the failed quantized artifacts diverge", "",
               "Per-tensor comparison with the fp32 artifact of the same graph and target on the worst golden sample "
               "(`runtime_bench/localize.py`: first op whose output falls more than 10 dB below its inputs and under "
               "the gate).", ""]
        for r in failed:
            md.append(f"- {r.name}: {localization_line(r.localization)}")
        md.append("")
    if worst_case:
        plot_worst_case(worst_case, reports / "worst_artifact.png")
        md += [f"## Worst artifact: {worst_case['artifact_name']} ({worst_case['output']})", "",
               "![reference vs artifact vs error](worst_artifact.png)", ""]
    (reports / "parity.md").write_text("\n".join(md))


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
