"""`bilayer-mobile bench`: one benchmark run composed of its parts, written as one report.

    fp32 GEMM ceiling (before) -> host side by side (runtime_bench.benchmark) -> GEMM ceiling (after)
    -> stages of a driven frame (bilayer_mobile.stages) -> Android over adb (runtime_bench.android)
    -> roofline estimate (runtime_bench.roofline) -> reports/latency.{json,md} + plots

Each part gives `LatencyRecord`s (runtime_bench.latency) or a table; this module only chains
them and writes the report, so each part can be run and tested on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bilayer_mobile.reference.files import write_text_atomic
from bilayer_mobile.runtime_bench.android import (AndroidBenchmark, AndroidError, NoAndroidDevice, choose_device, device_info,
                                                 run_android_benchmarks)
from bilayer_mobile.runtime_bench.benchmark import BenchSettings, benchmark_bundle, check_model_matches
from bilayer_mobile.runtime_bench.gemm import sgemm_gflops
from bilayer_mobile.runtime_bench.latency import compare_records, latency_document, read_latency_document
from bilayer_mobile.runtime_bench.latency_report import (comparison_lines, latency_markdown, plot_gflops, plot_latency,
                                                         plot_stages)
from bilayer_mobile.runtime_bench.machine import describe_machine
from bilayer_mobile.runtime_bench.validate import check_format, check_integrity, load_manifest


@dataclass(frozen=True)
class StageJob:
    """The driven-frame breakdown: a source photo, driver frames, the graphs' runtime."""

    source: Path
    drivers: tuple[Path, ...]
    runtime: str = "litert"
    frames: int = 60
    dlib: bool = True


@dataclass(frozen=True)
class AndroidJob:
    """Which artifacts go to the phone, and how the tools run there."""

    config: AndroidBenchmark
    delegates: tuple[str, ...] = ("cpu", "gpu", "nnapi")
    graphs: tuple[str, ...] = ("frame", "baked_frame")


@dataclass(frozen=True)
class BenchJob:
    """What `bench` was asked to do."""

    bundle: Path
    out: Path  # directory for latency.{json,md}, the plots and bench.log
    settings: BenchSettings = field(default_factory=BenchSettings)
    stages: StageJob | None = None
    android: AndroidJob | None = None
    roofline: bool = True
    compare: Path | None = None


def android_benchmarks(job: AndroidJob, bundle: Path, manifest: dict, macs: dict, out: Path,
                       progress=None) -> tuple[list, dict]:
    """The bundle's .tflite (and, with an executor_runner, .pte) artifacts of `job.graphs` on the
    phone; no phone is a status line, not an error."""
    suffixes = (".tflite", ".pte") if job.config.executor_runner else (".tflite",)
    chosen = [(a["name"], Path(bundle) / a["file"], a["graph"], a["precision"], macs.get(a["graph"]))
              for a in manifest["artifacts"] if a["graph"] in job.graphs and a["file"].endswith(suffixes)]
    try:
        choose_device(job.config)  # no phone, no adb: a status line, not an error
        device = device_info(job.config)
        records, failures = run_android_benchmarks(job.config, chosen, job.delegates, out / "android", progress)
    except NoAndroidDevice as exc:
        return [], {"status": f"Not run: {exc}"}
    except AndroidError as exc:  # adb could not push or prepare: the host results still stand
        return [], {"status": f"Not run: {exc}"}
    return records, {"status": f"Ran on {device.describe()}", "device": device.__dict__, "failures": [f"{f.name} ({f.delegate}): {f.message}" for f in failures]}


def run_bench(job: BenchJob, model, progress=None) -> tuple[dict, str]:
    """Run the job (the PyTorch reference and the roofline need `model`, None skips them) and
    write its report; returns the JSON document and the Markdown."""
    manifest = load_manifest(job.bundle)
    check_format(manifest, job.bundle)
    check_integrity(job.bundle, manifest)
    if model is not None:
        check_model_matches(model, manifest)
    # everything that can be refused is refused before the long runs
    old = read_latency_document(job.compare) if job.compare else None
    if job.android is not None:
        try:
            choose_device(job.android.config)  # several phones and no --serial: refused now, not after the host runs
        except NoAndroidDevice:
            pass  # said in the report: no phone is not an error
    if job.stages is not None:
        from bilayer_mobile.stages import check_stages_possible

        check_stages_possible(job.bundle, manifest, job.stages.source, job.stages.drivers, job.stages.runtime)

    say = progress or (lambda line: None)
    say("fp32 GEMM ceiling (before)")
    gemm = {"before": sgemm_gflops(job.settings.threads)}
    run = benchmark_bundle(job.bundle, manifest, model, job.settings, progress)
    say("fp32 GEMM ceiling (after)")
    gemm["after"] = sgemm_gflops(job.settings.threads)
    records, notes = list(run.records), list(run.failures)
    frame_ms = None

    if job.stages is not None:
        from bilayer_mobile.stages import driven_frame_ms, stage_breakdown

        stage_records = stage_breakdown(job.bundle, manifest, job.stages.source, job.stages.drivers, job.stages.runtime,
                                   job.settings.threads, job.stages.frames, job.stages.dlib, progress)
        records += stage_records
        frame_ms = driven_frame_ms(stage_records)

    android_status = {"status": "Not run: no `--android` given (this machine's run is host-only)."}
    if job.android is not None:
        macs = {r.graph: r.macs for r in records if r.macs and r.kind == "artifact"}
        device_records, android_status = android_benchmarks(job.android, job.bundle, manifest, macs, job.out, progress)
        records += device_records
        notes += android_status.get("failures", [])

    roofline_md, roofline_doc = None, None
    if job.roofline and model is not None:
        from bilayer_mobile.runtime_bench import roofline

        say("roofline estimate")
        layers = roofline.frame_layers(model)
        estimates, skipped = roofline.estimate_devices(layers, roofline.DEVICES, roofline.TYPICAL_EFFICIENCY)
        job.out.mkdir(parents=True, exist_ok=True)
        roofline.plot_roofline(layers, roofline.DEVICES, job.out / "roofline.png")
        roofline_md = (roofline.roofline_table_markdown(estimates, paper_ms=roofline.PAPER_MS, skipped=skipped)
                       + "\n\n![roofline of the frame graph's layers](roofline.png)\n\nAssumptions and sources: docs/roofline.md.")
        roofline_doc = roofline.roofline_document(model, layers=layers)

    document = latency_document(records, describe_machine(), job.settings.as_dict(), gemm,
                                extra={"bundle": str(job.bundle), "model": manifest.get("model", {}).get("source"),
                                       "android": android_status, "roofline": roofline_doc, "notes": notes,
                                       "driven_frame_ms": frame_ms})
    comparison = None
    if old is not None:
        regressions, unmatched = compare_records(old[1], records)
        comparison = comparison_lines(regressions, unmatched, str(job.compare))
        document["compare"] = {"against": str(job.compare), "regressions": [r.__dict__ for r in regressions],
                               "unmatched": unmatched}
    markdown = latency_markdown(document, records, roofline_md, comparison, notes)

    import json

    job.out.mkdir(parents=True, exist_ok=True)
    plot_latency(records, job.out / "latency.png")
    plot_gflops(records, gemm, job.out / "gflops.png")
    if any(r.kind == "stage" for r in records):
        plot_stages(records, job.out / "stages.png")
    write_text_atomic(job.out / "latency.json", json.dumps(document, indent=2))
    write_text_atomic(job.out / "latency.md", markdown)
    return document, markdown
