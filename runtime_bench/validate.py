"""`validate`: run every artifact of a bundle in its real runtime and gate on parity.

Order of work: every file's sha256 is checked against the manifest first (a tampered or
truncated model fails before anything runs); then each artifact is loaded in the runtime its
manifest entry names (`runtime_bench.runners`), its boundary is held against the contract the
manifest declares for it, it runs on its golden inputs (real faces) and every output is compared
with the PyTorch reference's output stored beside the inputs. An artifact passes when the PSNR
of its gated outputs (the contract marks them: image for frame graphs, texture for identity
graphs), worst sample, reaches the threshold of its precision (`runtime_bench.compare`) and,
for outputs that are sampling grids, its mean UV error stays within the precision's
`UV_TOLERANCE` for the reference's own warp.

Every figure is recorded with the machine that measured it (`runtime_bench.machine`): a bundle's
manifest keeps the figures of its export, and `validate` elsewhere reports which of its own
figures moved by more than `FIGURE_DRIFT_DB` / `FIGURE_DRIFT_UV_PX` from them. Artifacts that
failed their gate at export are listed under `rejected` in the manifest (files in `rejected/`,
which an app need not ship); they are checked and gated again only when asked.

This module reads bundles; it never writes one (`runtime_bench.report` writes the reports).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..reference.errors import BilayerError
from ..reference.face_tracking import DRIVER_MODEL_NAMES
from ..reference.files import sha256_tree
from .compare import (FIGURE_DRIFT_DB, FIGURE_DRIFT_UV_PX, FIGURE_PSNR_CEILING_DB, THRESHOLDS_DB, UV_TOLERANCE,
                      RUNTIME_COMPUTE_PRECISION, OutputComparison, compare_output, gate_precision, warp_px)
from .machine import describe_machine
from .results import ArtifactResult
from .runner import Runner
from .runners import RuntimeUnavailable, make_runner

# The manifest layout this reader understands (export/bundle.py writes it).
FORMAT = "bilayer-mobile-bundle"
FORMAT_VERSION = 6
ARTIFACT_KEYS = ("name", "graph", "target", "runtime", "precision", "file", "sha256", "golden", "inputs", "outputs")
# The NNAPI profile's artifacts (export.nnapi) also pass only when the NNAPI rule table takes them whole.
NNAPI_TARGET = "nnapi"


class BundleError(BilayerError):
    """A bundle is missing, malformed, or a file does not match its manifest entry."""


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


def check_format(manifest: dict, bundle: Path) -> None:
    """The manifest is a bundle manifest of the version this reader understands."""
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{bundle}/manifest.json is not a bilayer-mobile bundle manifest (format "
                          f"{manifest.get('format')!r}); point validate at a directory written by `bilayer-mobile export`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{bundle} is a bundle of format version {manifest.get('format_version')}, this tool reads "
                          f"version {FORMAT_VERSION}; re-export it with this version of `bilayer-mobile export`")
    damaged = f"{bundle}/manifest.json is damaged"
    fix = "re-run `bilayer-mobile export` to write the bundle again"
    if not isinstance(manifest.get("model", {}).get("config", {}).get("image_size"), int):
        raise BundleError(f"{damaged}: model.config.image_size is missing or not an integer; {fix}")
    if not isinstance(manifest.get("golden"), dict):
        raise BundleError(f"{damaged}: 'golden' is missing or not an object; {fix}")
    for where in ("artifacts", "rejected"):
        for i, entry in enumerate(manifest.get(where, [])):
            if not isinstance(entry, dict):
                raise BundleError(f"{damaged}: {where}[{i}] is not an object; {fix}")
            needed = ARTIFACT_KEYS if where == "artifacts" or entry.get("file") else ("name",)
            missing = [k for k in needed if k not in entry]
            if missing:
                raise BundleError(f"{damaged}: {where}[{i}] ({entry.get('name', '?')}) lacks {', '.join(missing)}; {fix}")
            if entry.get("file") and entry["golden"] not in manifest["golden"]:
                raise BundleError(f"{damaged}: {entry['name']}'s golden file {entry['golden']} is not listed under "
                                  f"'golden'; {fix}")
            for side in ("inputs", "outputs"):
                if entry.get("file") and not all(isinstance(t, dict) and {"name", "shape", "dtype"} <= set(t)
                                                 for t in entry[side]):
                    raise BundleError(f"{damaged}: {entry['name']}'s {side} lack name, shape or dtype; {fix}")


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
            if not path.exists():
                raise BundleError(f"{rel} (listed in manifest.json for artifact {artifact['name']}) is missing")
            actual = sha256_tree(path)
            if actual != expected:
                raise BundleError(
                    f"{rel} does not match manifest.json (sha256 {actual[:12]}... != {expected[:12]}...): the file was "
                    "modified or truncated after export; re-run `bilayer-mobile export`"
                )


def load_artifact(bundle: Path, artifact: dict, runtime: str | None = None, threads: int | None = None) -> Runner:
    """The artifact's model loaded in `runtime` (default: the one its manifest entry names) with
    `threads` CPU threads (default: the runtime's), its boundary held against the contract the
    manifest declares for it."""
    runner = make_runner(runtime or artifact["runtime"], Path(bundle) / artifact["file"], threads)
    problems = runner.check_contract(artifact["inputs"], artifact["outputs"])
    if problems:
        raise BundleError(f"{artifact['file']} does not honour its contract in manifest.json: {'; '.join(problems)}")
    return runner


def run_artifact(bundle: Path, artifact: dict, image_size: int, runtime: str | None = None,
                 samples: int | None = None) -> tuple[ArtifactResult, dict]:
    """Run one artifact on its golden samples (the first `samples` of them when given) in
    `runtime` (default: the one its manifest entry names); returns the result and the worst
    sample's arrays. A runtime that computes at a lower precision is gated at the looser gate
    (`compare.gate_precision`)."""
    precision = artifact["precision"]
    if precision not in THRESHOLDS_DB:
        raise BundleError(f"artifact {artifact['name']} has precision {precision!r}, which has no parity gate "
                          f"(gated: {', '.join(THRESHOLDS_DB)}); re-export it with a shipping precision")
    runtime = runtime or artifact["runtime"]
    gate = gate_precision(precision, runtime)
    runner = load_artifact(bundle, artifact, runtime)
    try:
        with np.load(Path(bundle) / artifact["golden"], allow_pickle=False) as golden:
            data = {k: golden[k] for k in golden.files}
    except Exception as exc:  # its sha256 matched, so the bundle was written this way: say so
        raise BundleError(f"cannot read {artifact['golden']} of {bundle}: {type(exc).__name__}: {exc}; "
                          "re-run `bilayer-mobile export`") from None
    composited = artifact.get("composited") or {}
    extra = [t for t in artifact.get("composite_inputs", [])]
    missing = [t["name"] for t in artifact["inputs"] + artifact["outputs"] + extra if t["name"] not in data]
    if missing:
        raise BundleError(f"{artifact['golden']} lacks {', '.join(missing)} that {artifact['name']} needs; "
                          "re-run `bilayer-mobile export`")
    outputs = {o["name"]: o for o in artifact["outputs"] + [t for t in extra if t["name"] in composited]}
    gated = tuple(name for name, spec in outputs.items() if spec.get("gated"))
    total = data[artifact["inputs"][0]["name"]].shape[0]
    count = total if samples is None else min(samples, total)
    worst: dict[str, OutputComparison] = {}
    worst_arrays: dict = {}
    for k in range(count):
        result = runner.infer({i["name"]: data[i["name"]][k] for i in artifact["inputs"]})
        for name, sources in composited.items():  # what an app composites from the outputs (split graph)
            from .compositor import composite_numpy

            known = {**{n: data[n][k] for n in data}, **result}
            result[name] = composite_numpy(known[sources["lowfreq"]], known[sources["texture"]], known[sources["uv"]])
        for name, spec in outputs.items():
            comparison = compare_output(name, data[name][k], result[name], image_size, spec.get("kind", ""))
            if name not in worst or comparison.psnr_db < worst[name].psnr_db:
                worst[name] = comparison
                if name in gated:
                    worst_arrays = {"reference": data[name][k], "artifact": result[name], "output": name, "sample": k}
    primary = runtime == artifact["runtime"]
    res = ArtifactResult(artifact["name"] if primary else f"{artifact['name']}@{runtime}", artifact["target"],
                         precision, artifact["graph"], THRESHOLDS_DB[gate], False, worst, gated,
                         artifact=artifact["name"], runtime=runner.runtime, samples=count)
    verdict = getattr(runner, "verdict", None)
    if verdict is not None:
        res.gpu = verdict.as_dict()
    uv_ok = True
    warps = [name for name, spec in outputs.items() if spec.get("kind") == "warp"]
    if warps:
        res.warp_px = max(warp_px(data[name], image_size) for name in warps)
        if runtime not in RUNTIME_COMPUTE_PRECISION:  # fp16 compute: reported, gated by the image
            res.uv_limit_px = UV_TOLERANCE[gate].limit_px(res.warp_px)
            uv_ok = res.uv_error_px <= res.uv_limit_px
    delegable = True
    if artifact["target"] == NNAPI_TARGET and primary:  # the profile's promise: the delegate takes it whole
        from .nnapi_profile import nnapi_verdict

        res.nnapi = nnapi_verdict(Path(bundle) / artifact["file"])
        delegable = res.nnapi["whole"]
    res.passed = bool(res.gated_psnr_db >= res.threshold_db and uv_ok and delegable)
    return res, worst_arrays


# LiteRT's GPU accelerator runs every TFLite artifact of these graphs (the frame graphs and the
# driver models: what runs per camera frame) a second time, on this many golden samples (lavapipe, the software Vulkan driver, takes seconds per frame on a CPU host).
GPU_RUNTIME = "litert_gpu"
GPU_GRAPHS = ("frame", "baked_frame", "split_frame", *DRIVER_MODEL_NAMES)
GPU_SAMPLES = 2
GPU_MODES = ("auto", "require", "off")  # auto: run when the machine has a Vulkan device


def further_runtimes(artifact: dict) -> list[str]:
    """The runtimes besides its own that an artifact is validated in: the GPU accelerator for the
    TFLite frame graphs (not the NNAPI profile's, which is made for the NNAPI delegate in float32)."""
    gpu = artifact["runtime"] == "litert" and artifact["graph"] in GPU_GRAPHS and artifact["target"] != NNAPI_TARGET
    return [GPU_RUNTIME] if gpu else []


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
        loc = localize_divergence(artifact["runtime"], Path(bundle) / reference["file"], Path(bundle) / artifact["file"],
                                  feed, floor_db=THRESHOLDS_DB[artifact["precision"]])
    except Exception as exc:  # the gate's verdict stands; say why there is no localisation
        return {"error": f"{type(exc).__name__}: {exc}", "against": reference["name"], "sample": sample}
    return {**loc.as_dict(max_drifts=LOCALIZATION_DRIFTS_KEPT), "against": reference["name"], "sample": sample}


@dataclass
class ValidationReport:
    """What `validate_bundle` found: one result per artifact and runtime (and per shipped shader),
    the machine it ran on, the bundle's recorded figures and machine (None for a bundle being
    exported), the figures that moved from the recorded ones, the artifacts rejected at export,
    and what could not be run on this machine and why."""

    results: list[ArtifactResult]
    worst_case: dict
    machine: dict
    recorded_machine: dict | None = None
    drift: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ArtifactResult]:
        return [r for r in self.results if not r.passed]

    @property
    def failed_artifacts(self) -> set[str]:
        """The manifest entries that failed in their own runtime (what export rejects)."""
        return {r.artifact for r in self.failed if r.name == r.artifact}

    @property
    def failed_further_runs(self) -> list[str]:
        """Failed runs beyond the artifacts' own runtimes: GPU accelerator runs and shaders. An
        artifact that passes in its own runtime and fails on the GPU in fp16 is kept (it is right
        on the CPU) and named here, so that export and validate still exit 1."""
        return [r.name for r in self.failed if r.name != r.artifact]


def verdict_line(r: ArtifactResult) -> str:
    """PASS/FAIL with the gated PSNR and UV error, e.g. `PASS 35.7 dB (>= 30), UV 0.291 px (<= 0.54)`."""
    text = f"{'PASS' if r.passed else 'FAIL'} {r.gated_psnr_db:.1f} dB (>= {r.threshold_db:.0f})"
    if r.uv_error_px is not None:
        text += f", UV {r.uv_error_px:.3f} px" + (f" (<= {r.uv_limit_px:.3f})" if r.uv_limit_px is not None else " (reported)")
    if r.gpu is not None:
        text += ", " + ("fully accelerated" if r.gpu["fully_accelerated"] else "NOT fully accelerated")
    if r.nnapi is not None:
        text += (f", NNAPI rule table: whole from feature level {r.nnapi['min_feature_level']}" if r.nnapi["whole"]
                 else f", NNAPI rule table: NOT whole ({r.nnapi['delegable_percent']:g}%)")
    return text


def validate_bundle(bundle: Path | str, progress=None, include_rejected: bool = False, gpu: str = "auto",
                    gpu_samples: int = GPU_SAMPLES, runtimes: tuple[str, ...] | None = None) -> ValidationReport:
    """Check integrity, then run and compare every published artifact (and the rejected ones too
    when `include_rejected`) in its runtime, and the TFLite frame graphs also on the GPU
    accelerator and run the bundle's compositing shaders on the GPU driver (`gpu`: "auto" when
    the machine has them, "require", "off"); compare the figures with those the bundle recorded.
    `runtimes` keeps only the runs in those runtimes (e.g. ("litert_gpu",) for `coverage`).

    progress(step, line, target=...) is called after each run with the step `("validate", graph)` and a
    line that gives its verdict and time."""
    if gpu not in GPU_MODES:
        raise BundleError(f"unknown GPU mode {gpu!r}; choose from {', '.join(GPU_MODES)}")
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle directory {bundle} does not exist")
    manifest = load_manifest(bundle)
    check_format(manifest, bundle)
    check_integrity(bundle, manifest, include_rejected)
    image_size = manifest["model"]["config"]["image_size"]
    artifacts = manifest["artifacts"] + (runnable_rejected(manifest) if include_rejected else [])
    if not artifacts:
        raise BundleError(f"{bundle} lists no artifact to validate (manifest.json 'artifacts' is empty); "
                          "re-run `bilayer-mobile export`")
    runs = [(a, a["runtime"], None) for a in artifacts]
    if gpu != "off":
        runs += [(a, r, gpu_samples) for a in artifacts for r in further_runtimes(a)]
    if runtimes is not None:
        runs = [run for run in runs if run[1] in runtimes]
    results, worst_case, worst_margin, not_run = [], {}, math.inf, []
    for artifact, runtime, samples in runs:
        started = time.perf_counter()
        try:
            result, arrays = run_artifact(bundle, artifact, image_size, runtime, samples)
        except RuntimeUnavailable as exc:
            if gpu == "require" or runtime == artifact["runtime"]:
                raise
            not_run.append(f"{artifact['name']} on {runtime}: {exc}")
            if progress:
                progress(("validate", artifact["graph"]), f"{artifact['name']}@{runtime}: not run: {exc}")
            continue
        if not result.passed and artifact["precision"] in LOCALIZED_PRECISIONS and "sample" in arrays \
                and runtime == artifact["runtime"]:
            result.localization = localize_failure(bundle, manifest, artifact, arrays["sample"])
        results.append(result)
        margin = result.gated_psnr_db - result.threshold_db
        if arrays and margin < worst_margin:
            worst_margin, worst_case = margin, {**arrays, "artifact_name": result.name}
        if progress:
            step = ("validate", artifact["graph"]) + (() if runtime == artifact["runtime"] else (runtime,))
            progress(step, f"{result.name}: {verdict_line(result)} "
                           f"(validated in {time.perf_counter() - started:.1f} s)", target=artifact["target"])
    if manifest.get("shaders") and runtimes is None and gpu != "off":
        from .shader_check import shader_results

        shader_runs, unavailable = shader_results(bundle, manifest, image_size, gpu == "require")
        results += shader_runs
        not_run += unavailable
        for r in shader_runs:
            if progress:
                progress(("validate", "shaders"), f"{r.name}: {verdict_line(r)}")
    recorded = manifest.get("validation")
    report = ValidationReport(results, worst_case, describe_machine(),
                              recorded_machine=recorded["machine"] if recorded else None,
                              rejected=manifest.get("rejected", []), not_run=not_run)
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
            moved.append(f"{'/'.join(r.gated_outputs)} {old_db:.1f} -> {new_db:.1f} dB")
        if before.get("uv_error_px") is not None and r.uv_error_px is not None:
            if abs(r.uv_error_px - before["uv_error_px"]) > FIGURE_DRIFT_UV_PX:
                moved.append(f"UV {before['uv_error_px']:.3f} -> {r.uv_error_px:.3f} px")
        if bool(before.get("passed")) != r.passed:
            moved.append("verdict " + ("PASS -> FAIL" if before.get("passed") else "FAIL -> PASS"))
        if moved:
            lines.append(f"{r.name}: " + ", ".join(moved))
    return lines
