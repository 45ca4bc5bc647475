"""The export pipeline, composed once, above the packages it uses:

    graphs -> convert -> candidate bundle          (export: write_candidate)
           -> run every artifact in its runtime    (runtime_bench: validate_bundle, the same
              and gate it on parity                 code `bilayer-mobile validate` runs)
           -> reject what failed, record figures   (export: record_verdicts)
           -> reports                              (runtime_bench: write_reports)
           -> publish atomically                   (reference.files: staging_directory)

`export` and `runtime_bench` never import each other; only this module (and the command line)
knows both. The candidate is written beside the destination and renamed when complete, so an
error or an interrupt leaves nothing behind; the converters' output goes to
reports/export.log inside it (beside the destination, `OUT.export.log`, when nothing is published).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bilayer_mobile.console import StepProgress, converter_chatter_to
from bilayer_mobile.export.bundle import ExportConfig, record_verdicts, write_candidate
from bilayer_mobile.export.errors import ExportError
from bilayer_mobile.reference.errors import BilayerError
from bilayer_mobile.reference.face_tracking import DRIVER_MODEL_NAMES
from bilayer_mobile.reference.files import staging_directory
from bilayer_mobile.reference.model import BilayerModel
from bilayer_mobile.runtime_bench.coverage import gpu_coverage, write_coverage
from bilayer_mobile.runtime_bench.report import results_table, write_reports
from bilayer_mobile.runtime_bench.validate import ValidationReport, validate_bundle

LOG_NAME = "reports/export.log"

# Relative cost of each step, for the time left: seconds measured by `make bundle` on 2 cores
# (AMD EPYC, AVX-512), mean of the two targets. The identity graph has 103 M parameters and an
# unrolled enhancer, the frame graphs ~5 M; calibrated int8 runs the graph on the calibration set.
STEP_COST = {
    ("prepare",): 25.0,  # real-face data, graphs and golden reference outputs
    ("convert", "identity"): 32.0, ("convert", "frame"): 8.0, ("convert", "baked_frame"): 8.0,
    ("convert", "split_frame"): 7.0,
    ("derive", "identity", "fp32"): 6.0, ("derive", "identity", "fp16"): 6.5,
    ("validate", "identity"): 6.5, ("validate", "frame"): 0.5, ("validate", "baked_frame"): 0.5,
    ("validate", "split_frame"): 0.5, ("validate", "shaders"): 1.0,
    **{("derive", g, p): c for g in ("frame", "baked_frame", "split_frame")
       for p, c in (("fp32", 0.2), ("fp16", 0.5), ("int8_dynamic", 0.5), ("int8", 2.5))},
    # LiteRT's GPU accelerator on lavapipe (software Vulkan): compile + a few golden samples
    **{("validate", g, "litert_gpu"): 3.0 for g in ("frame", "baked_frame", "split_frame")},
    # the driver models: copied, golden vectors from LiteRT's reference kernels, then validated
    ("driver",): 3.0,
    **{("validate", name): 0.3 for name in DRIVER_MODEL_NAMES},
    **{("validate", name, "litert_gpu"): 1.0 for name in DRIVER_MODEL_NAMES},
}
# Conversions and derivations that cost more than ONNX's and TFLite's (the table above), measured
# on the paper configuration (2 cores, Intel Xeon, 2026-12-02): ExecuTorch lowers every program
# anew (torch.export is cheap, to_edge_transform_and_lower is not; int8 also calibrates), Core ML
# converts once per precision.
TARGET_STEP_COST = {
    ("derive", "identity", "fp32", "executorch"): 160.0,
    **{("derive", g, p, "executorch"): c for g in ("frame", "baked_frame", "split_frame")
       for p, c in (("fp32", 20.0), ("int8", 40.0))},
    **{("derive", g, p, "coreml"): c for g in ("frame", "baked_frame", "split_frame")
       for p, c in (("fp32", 12.0), ("fp16", 4.0), ("int8_dynamic", 5.0))},
    **{("validate", g, "coreml"): 3.0 for g in ("frame", "baked_frame", "split_frame")},  # numpy MIL evaluation
}


def step_cost(step: tuple, target: str | None = None) -> float:
    """The relative cost of one step of an export, for `target` when it has its own figure."""
    return TARGET_STEP_COST.get(step + (target,), STEP_COST.get(step, 0.0)) if target else STEP_COST.get(step, 0.0)


class ValidationFailed(BilayerError):
    """Artifacts fell below their parity threshold (or could not be produced) and nothing was
    published: the export was strict, or nothing passed.

    Exits 1 like a failed `validate`: the input was fine, an artifact was not."""

    exit_code = 1


@dataclass
class ExportOutcome:
    """A published bundle: its manifest, the validation of every artifact it was exported with,
    and the names of the artifacts kept out of models/."""

    manifest: dict
    report: ValidationReport
    rejected: list[str]

    @property
    def failed_further_runs(self) -> list[str]:
        """Runs on the GPU accelerator or of the shaders that failed (their artifacts are kept:
        they pass in their own runtime)."""
        return self.report.failed_further_runs


def total_cost(config: ExportConfig) -> float:
    """The whole job's cost in `STEP_COST` units."""
    jobs = config.jobs()
    conversions = {(g, t) for g, t, _ in jobs}
    gpu_runs = [g for g, t, _ in jobs if t == "tflite" and g != "identity"]
    return (STEP_COST["prepare",] + sum(step_cost(("convert", g), t) for g, t in conversions)
            + sum(step_cost(("derive", g, p), t) + step_cost(("validate", g), t) for g, t, p in jobs)
            + sum(STEP_COST["validate", g, "litert_gpu"] for g in gpu_runs)
            + (STEP_COST["validate", "shaders"] * 4 if "split_frame" in config.graphs else 0.0)
            + (STEP_COST["driver",] + sum(STEP_COST["validate", name] + STEP_COST["validate", name, "litert_gpu"]
                                          for name in DRIVER_MODEL_NAMES) if config.driver_models else 0.0))


def export_bundle(model: BilayerModel, config: ExportConfig, model_description: str, console: TextIO,
                  gpu: str = "auto") -> ExportOutcome:
    """Export, validate and atomically publish a bundle at `config.out`.

    Artifacts below their gate go to `rejected/` and the rest is published; with
    `config.strict`, or when nothing passes, nothing is published and `ValidationFailed` is
    raised. One line per step goes to `console`; the converters' output to the bundle's log.
    `gpu` is validate's GPU mode (`runtime_bench.validate.GPU_MODES`).
    """
    out = Path(config.out)
    if out.exists():
        raise ExportError(f"output directory {out} already exists; choose another --out or remove it")
    with staging_directory(out) as staging:
        log = staging.path / LOG_NAME
        progress = None
        try:
            with converter_chatter_to(log) as real_console:
                progress = StepProgress(real_console, step_cost, total_cost(config), "export")
                candidate = write_candidate(model, config, staging.path, model_description, progress)
                produced = candidate.manifest["artifacts"]
                not_produced = "\n".join(f"  {a['name']}: {a['error']}" for a in candidate.not_produced)
                if not produced:
                    raise ValidationFailed(f"no artifact could be produced, bundle not written:\n{not_produced}")
                if candidate.not_produced and config.strict:
                    raise ValidationFailed(f"{len(candidate.not_produced)} artifact(s) could not be produced, bundle "
                                           f"not written (--strict):\n{not_produced}")
                report = validate_bundle(staging.path, progress=progress, gpu=gpu)
                progress.close()
            failed = report.failed_artifacts
            if failed and config.strict:
                raise ValidationFailed(f"{len(failed)} artifact(s) below threshold, bundle not written (--strict):\n"
                                       + results_table(report.results))
            if len(failed) == len(produced):
                raise ValidationFailed("every artifact is below its threshold, bundle not written:\n"
                                       + results_table(report.results))
            record_verdicts(candidate, failed, {r.name: r.figures() for r in report.results}, report.machine)
            report.rejected = candidate.manifest["rejected"]
            write_reports(staging.path, report)
            write_coverage(staging.path, gpu_coverage(staging.path, report))
        except BaseException:
            if progress is not None:
                progress.close()
            kept = keep_log(log, out)
            if kept:
                print(f"the converters' log of this export: {kept}", file=console)
            raise
        staging.publish()
    rejected = [a["name"] for a in candidate.manifest["rejected"]]
    return ExportOutcome(candidate.manifest, report, rejected)


def keep_log(log: Path, out: Path) -> Path | None:
    """Copy an unpublished export's log beside its destination (the staging directory goes)."""
    if not log.is_file():
        return None
    kept = out.parent / f"{out.name}.export.log"
    shutil.copyfile(log, kept)
    return kept
