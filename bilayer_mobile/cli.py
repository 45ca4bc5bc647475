"""`bilayer-mobile`: the command-line front door of the toolchain.

Subcommands:
  export    model -> validated on-device bundle (ONNX, TFLite/LiteRT; fp32, fp16, int8):
            bilayer_mobile.pipeline composes export and runtime_bench
  validate  run every artifact of a bundle in its runtime (TFLite frame graphs also on LiteRT's
            GPU accelerator), gate on parity with the reference
  coverage  which ops of each TFLite artifact the GPU accelerator takes, and its fp16 parity
  contract  the graphs' tensor contract as Markdown tables (docs/contract.md)
  info    config, networks, parameter counts, MACs and warp size of a checkpoint (or the
          built-in default model)
  render  the PyTorch reference end to end on real photos: source photo + driver photos or
          keypoint files -> rendered frames, a strip and a GIF of a driven sequence
  drive   an avatar driven by a video through a bundle's driver models and graphs
  bench   latency: every artifact beside the PyTorch reference on the host, the stages of a
          driven frame, phones over adb, a roofline estimate (bilayer_mobile.bench composes it)

Every error the user can cause exits non-zero with one line that names the problem and the fix.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bilayer_mobile.reference.errors import BilayerError, InputError
from bilayer_mobile.reference.files import staging_directory, write_text_atomic


class OutputExistsError(BilayerError):
    """The output directory exists and is not empty."""


# ------------------------------------------------------------------------------ model loading
@dataclass
class ModelSource:
    """Which weights to use: an official run directory, or the built-in default model."""

    checkpoint: Path | None = None
    epoch: str | None = None
    enhancer_run: Path | None = None
    no_enhancer: bool = False

    def load(self):
        from bilayer_mobile.reference import load_official_checkpoint
        from bilayer_mobile.reference.default_model import default_model

        if self.checkpoint is None:
            if self.enhancer_run is not None or self.epoch is not None:
                raise InputError("--epoch and --enhancer-run need --checkpoint RUN_DIR")
            model = default_model(progress=_progress("building the default model (standing statistics)"))
            if self.no_enhancer:
                model.has_enhancer = False
            return model
        return load_official_checkpoint(self.checkpoint, epoch=self.epoch, enhancer_run=self.enhancer_run,
                                        with_enhancer=not self.no_enhancer)

    def describe(self) -> str:
        if self.checkpoint is None:
            return "built-in default model (paper architecture, seeded UNTRAINED weights)"
        return str(self.checkpoint)


def _progress(label: str):
    interactive = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if interactive:
            print(f"\r{label}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:  # logs and CI: one line per step
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _add_model_args(parser: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        parser.add_argument("checkpoint", nargs="?", type=Path,
                            help="official run directory runs/<experiment>/ (default: the built-in default model)")
    else:
        parser.add_argument("--checkpoint", type=Path,
                            help="official run directory runs/<experiment>/ (default: the built-in default model)")
    parser.add_argument("--epoch", help="checkpoint epoch (default: the latest in checkpoints/)")
    parser.add_argument("--enhancer-run", type=Path,
                        help="run directory holding the texture enhancer, when it is not in the main run")
    parser.add_argument("--no-enhancer", action="store_true", help="do not use the texture enhancer")


def _model_source(args) -> ModelSource:
    return ModelSource(args.checkpoint, args.epoch, args.enhancer_run, args.no_enhancer)


# ------------------------------------------------------------------------------ info
def cmd_info(args) -> int:
    from bilayer_mobile.reference.default_model import measure_uv_displacement_px
    from bilayer_mobile.reference.summary import network_costs, pipeline_macs

    source = _model_source(args)
    model = source.load()
    costs = network_costs(model)
    totals = pipeline_macs(model)
    uv_px = measure_uv_displacement_px(model)
    report = {
        "model": source.describe(),
        "config": asdict(model.config),
        "enhancer": model.has_enhancer,
        "networks": [asdict(c) for c in costs],
        "macs_per_identity": totals["identity"],
        "macs_per_frame": totals["frame"],
        "mean_uv_displacement_px": uv_px,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model: {report['model']}")
    print(f"texture enhancer: {'on' if model.has_enhancer else 'off'}")
    print("config:")
    for key, value in report["config"].items():
        print(f"  {key}: {value}")
    print(f"\n{'network':32s} {'parameters':>12s} {'GMAC':>9s}  runs")
    for c in costs:
        print(f"{c.name:32s} {c.parameters:12,d} {c.macs / 1e9:9.3f}  {c.runs}")
    print(f"\nonce per identity (as run): {totals['identity'] / 1e9:.2f} GMAC at {model.config.image_size}x{model.config.image_size}")
    print(f"once per frame: {totals['frame'] / 1e9:.3f} GMAC")
    print(f"mean |delta UV| on real-face keypoints: {uv_px:.2f} px")
    return 0


# ------------------------------------------------------------------------------ contract
DOC_BEGIN = "<!-- generated by `bilayer-mobile contract --update-doc` from export/graphs.py: do not edit by hand -->"
DOC_END = "<!-- end of the generated tables -->"


def cmd_contract(args) -> int:
    from bilayer_mobile.export.graphs import contract_graphs, contract_tables
    from bilayer_mobile.reference import BilayerConfig, BilayerModel

    if args.checkpoint is None:  # the contract depends on the configuration only: no weights needed
        model, what = BilayerModel(BilayerConfig.paper()).eval(), "the paper configuration"
    else:
        source = _model_source(args)
        model, what = source.load(), source.describe()
    tables = contract_tables(contract_graphs(model))
    if args.update_doc is None:
        print(f"Tensor contract of the exported graphs of {what} (image size {model.config.image_size}):\n")
        print(tables)
        return 0
    doc = args.update_doc
    if not doc.is_file():
        raise InputError(f"{doc} does not exist; --update-doc rewrites the generated tables of an existing document")
    text = doc.read_text(encoding="utf-8")
    if DOC_BEGIN not in text or DOC_END not in text:
        raise InputError(f"{doc} has no generated block; add the two marker lines {DOC_BEGIN!r} and {DOC_END!r}")
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    write_text_atomic(doc, f"{head}{DOC_BEGIN}\n\n{tables}\n{DOC_END}{tail}")
    print(f"updated the contract tables of {doc} ({what})")
    return 0


# ------------------------------------------------------------------------------ render
@dataclass
class RenderJob:
    """Inputs of `render`, checked and resolved."""

    source: Path
    drivers: list[Path]
    out: Path
    source_landmarks: Path | None = None
    keypoints_size: int | None = None
    sequence_frames: int = 24
    force: bool = False
    crop: bool = True


def _check_output(out: Path, force: bool) -> None:
    """Refuse an output that is a file, or a non-empty directory without --force, before any work."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"output directory {out} exists and is not empty; choose another --out or pass --force")


def _source_face(path: Path, landmarks_path: Path | None, image_size: int, crop: bool, image=None):
    from bilayer_mobile.reference.landmarks import detect_landmarks
    from bilayer_mobile.reference.preprocessing import FaceCrop, crop_face, image_to_tensor, load_landmarks_npy, load_rgb, normalise_keypoints

    image = load_rgb(path, what="source image") if image is None else image
    if not crop and image.shape[:2] != (image_size, image_size):
        raise InputError(f"{path} is {image.shape[1]}x{image.shape[0]}, but --no-crop needs {image_size}x{image_size} "
                         "face crops; drop --no-crop to crop it the official way")
    landmarks = load_landmarks_npy(landmarks_path) if landmarks_path else detect_landmarks(image)
    if crop:
        return crop_face(image, landmarks, image_size)
    return FaceCrop(image_to_tensor(image), normalise_keypoints(landmarks, image_size), (0, 0, image_size, image_size))


def _driver_keypoints(path: Path, image_size: int, keypoints_size: int | None, crop: bool):
    """Keypoints [136] of a driver: a photo (landmarks detected, cropped) or a .npy file."""
    import numpy as np
    import torch

    from bilayer_mobile.reference.preprocessing import load_landmarks_npy, normalise_keypoints
    from bilayer_mobile.reference.user_files import load_npy_array

    # an .npz is keypoints in the wrong container, not a photo: say so instead of "not an image"
    if path.suffix.lower() in (".npy", ".npz"):
        if not path.exists():
            raise InputError(f"driver keypoints {path} do not exist")
        raw = load_npy_array(path, "driver keypoints", InputError)
        if raw.shape == (136,):
            kp = torch.from_numpy(raw.astype(np.float32))
            if not torch.isfinite(kp).all():
                raise InputError(f"driver keypoints {path} contain NaN or infinite values")
            return kp
        points = load_landmarks_npy(path)
        return normalise_keypoints(points, keypoints_size or image_size)
    return _source_face(path, None, image_size, crop).keypoints


def cmd_render(args) -> int:
    import imageio.v3 as iio
    import numpy as np
    import torch

    from bilayer_mobile.reference.face_samples import driving_sequence
    from bilayer_mobile.reference.preprocessing import draw_stickmen, tensor_to_image

    job = RenderJob(args.source, args.driver, args.out, args.source_landmarks, args.keypoints_size,
                    args.sequence_frames, args.force, not args.no_crop)
    from bilayer_mobile.reference.preprocessing import load_rgb

    if not job.source.is_file():
        raise InputError(f"source image {job.source} does not exist")
    source_image = load_rgb(job.source, what="source image")  # a bad photo fails before the model loads
    _check_output(job.out, job.force)
    with staging_directory(job.out, replace=job.force) as staging:
        tmp = staging.path
        model = _model_source(args).load()
        size = model.config.image_size
        face = _source_face(job.source, job.source_landmarks, size, job.crop, source_image)
        drivers = torch.stack([_driver_keypoints(p, size, job.keypoints_size, job.crop) for p in job.drivers])
        print(f"identity: {job.source.name} ({'with' if model.has_enhancer else 'without'} texture enhancer)", file=sys.stderr)
        state = model.init_identity(face.image[None], face.keypoints[None])
        frames = model.render(state, drivers)
        (tmp / "frames").mkdir()
        stickmen = draw_stickmen(drivers, size)
        for i, path in enumerate(job.drivers):
            iio.imwrite(tmp / "frames" / f"{i:03d}_{path.stem}.png", tensor_to_image(frames.image[i]))
        strip_rows = [np.concatenate([tensor_to_image(face.image)] + [tensor_to_image(x) for x in stickmen], 1),
                      np.concatenate([tensor_to_image(state.texture[0])] + [tensor_to_image(x) for x in frames.image], 1)]
        iio.imwrite(tmp / "drivers_strip.png", np.concatenate(strip_rows, 0))
        if job.sequence_frames > 0:
            sequence = driving_sequence(face.keypoints, drivers[0], job.sequence_frames)
            images = []
            for start in range(0, len(sequence), 8):
                images += [tensor_to_image(x) for x in model.render(state, sequence[start:start + 8]).image]
                _progress("rendering the driven sequence")(min(start + 8, len(sequence)), len(sequence))
            iio.imwrite(tmp / "sequence.gif", np.stack(images), duration=80, loop=0)
            step = max(1, len(images) // 8)
            iio.imwrite(tmp / "sequence_strip.png", np.concatenate(images[::step][:8], 1))
            np.save(tmp / "sequence_keypoints.npy", sequence.numpy())
        meta = {"model": _model_source(args).describe(), "source": str(job.source),
                "drivers": [str(p) for p in job.drivers], "enhancer": model.has_enhancer,
                "image_size": size, "sequence_frames": job.sequence_frames}
        (tmp / "render.json").write_text(json.dumps(meta, indent=2))
        staging.publish()
    print(f"wrote {job.out}/: frames/ ({len(job.drivers)} PNG), drivers_strip.png"
          + (", sequence.gif, sequence_strip.png" if job.sequence_frames > 0 else ""))
    return 0


def cmd_drive(args) -> int:
    from bilayer_mobile.drive import DriveJob, print_summary, run_drive, side_by_side_path

    job = DriveJob(args.source, tuple(args.driver), args.bundle, args.out, args.runtime, args.precision,
                   args.identity_precision, args.fps, smooth=not args.no_smoothing)
    for path in (job.out, side_by_side_path(job.out)):
        if path.exists() and not args.force:
            raise OutputExistsError(f"{path} exists; choose another --out or pass --force")
    summary = run_drive(job, progress=_progress("driving"))
    print_summary(summary)
    print(f"wrote {summary['outputs'][0]} and {summary['outputs'][1]}")
    return 0


# ------------------------------------------------------------------------------ export / validate
def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_export(args) -> int:
    from bilayer_mobile.export.bundle import ExportConfig
    from bilayer_mobile.pipeline import LOG_NAME, export_bundle
    from bilayer_mobile.runtime_bench.machine import machine_line
    from bilayer_mobile.runtime_bench.report import results_table

    config = ExportConfig(out=args.out, targets=_csv(args.targets), precisions=_csv(args.precisions),
                          data_root=args.data_root, strict=args.strict, warp=args.warp,
                          graphs=_csv(args.graphs), driver_models=not args.no_driver_models)  # checks the choices first
    if args.out.exists():
        raise OutputExistsError(f"output directory {args.out} already exists; choose another --out or remove it")
    source = _model_source(args)
    model = source.load()
    print(f"exporting {len(config.jobs())} artifacts of {source.describe()} to {args.out} "
          f"(converter output: {args.out / LOG_NAME})", file=sys.stderr, flush=True)
    bundle = export_bundle(model, config, source.describe(), console=sys.stderr, gpu=args.gpu)
    print(results_table(bundle.report.results, set(bundle.rejected)))
    print(f"measured on: {machine_line(bundle.report.machine)}")
    published = len(bundle.manifest["artifacts"])
    print(f"wrote {args.out}: {published} artifacts in models/ (report: {args.out / 'reports' / 'parity.md'})")
    status = 0
    if bundle.rejected:
        print(f"FAIL: {len(bundle.rejected)} artifact(s) below their gate or not produced, kept out of models/ "
              f"(files in {args.out / 'rejected'}, figures in {args.out / 'reports' / 'parity.md'}): "
              f"{', '.join(bundle.rejected)}", file=sys.stderr)
        status = 1
    if bundle.failed_further_runs:
        print(f"FAIL: {len(bundle.failed_further_runs)} run(s) on the GPU below their gate (the artifacts pass on the "
              f"CPU and are published; on the GPU run them with GpuOptions(enforce_f32=True) or not at all; "
              f"{args.out / 'reports' / 'coverage.md'}): {', '.join(bundle.failed_further_runs)}", file=sys.stderr)
        status = 1
    return status


def _add_gpu_arg(parser) -> None:
    parser.add_argument("--gpu", choices=("auto", "require", "off"), default="auto",
                        help="also run the TFLite frame graphs on LiteRT's real GPU accelerator (fp16) and the "
                             "bundle's compositing shaders on the GPU driver: auto (default: when this machine has "
                             "a Vulkan device / EGL, else say so), require (fail without one), off")


def cmd_bench(args) -> int:
    from bilayer_mobile.bench import BenchJob, StageJob, run_bench
    from bilayer_mobile.console import converter_chatter_to
    from bilayer_mobile.runtime_bench.benchmark import BenchSettings

    if not (args.bundle / "manifest.json").is_file():
        raise InputError(f"{args.bundle} is not a bundle (no manifest.json); pass a directory written by `export`")
    from bilayer_mobile.runtime_bench.android import DELEGATES
    from bilayer_mobile.runtime_bench.benchmark import FRAME_GRAPHS, IDENTITY_GRAPHS, REFERENCE_MODES, RUNTIMES
    from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB

    for option, given, known in (("--graphs", args.graphs, FRAME_GRAPHS + IDENTITY_GRAPHS),
                                 ("--precisions", args.precisions, tuple(THRESHOLDS_DB)),
                                 ("--runtimes", args.runtimes, RUNTIMES),
                                 ("--reference-modes", args.reference_modes, REFERENCE_MODES),
                                 ("--delegates", args.delegates, DELEGATES),
                                 ("--android-graphs", args.android_graphs, FRAME_GRAPHS + IDENTITY_GRAPHS)):
        unknown = [x for x in _csv(given) if x not in known]
        if unknown or not _csv(given):
            raise InputError(f"{option} {given!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
                             f"choose from {', '.join(known)}")
    settings = BenchSettings(threads=args.threads, runs=args.runs, identity_runs=args.identity_runs, warmup=args.warmup,
                             graphs=_csv(args.graphs), precisions=_csv(args.precisions), runtimes=_csv(args.runtimes),
                             single_thread=not args.no_single_thread, reference_modes=_csv(args.reference_modes),
                             memory=not args.no_memory)
    stages = None
    if not args.no_stages:
        drivers = tuple(args.driver) or (_packaged_photo("target.jpg"),) * args.stage_frames  # a still face
        stages = StageJob(args.source or _packaged_photo("source.jpg"), drivers, args.stage_runtime, args.stage_frames,
                          dlib=not args.no_dlib)
    android = _android_config(args) if args.android else None
    out = args.out or args.bundle / "reports"
    job = BenchJob(args.bundle, out, settings, stages, android, roofline=not args.no_roofline, compare=args.compare)
    model = None if args.no_reference else _model_source(args).load()
    with converter_chatter_to(out / "bench.log") as console:  # the runtimes' native output
        log = lambda line: print(f"\rbench: {line[:100]:100s}", end="", file=console, flush=True)
        document, markdown = run_bench(job, model, progress=log)
        print(file=console)
    print(markdown)
    print(f"bench: {out / 'latency.md'} ({len(document['records'])} records; every run in {out / 'latency.json'})",
          file=sys.stderr)
    regressions = (document.get("compare") or {}).get("regressions")
    return 1 if regressions else 0


def _add_android_args(parser) -> None:
    group = parser.add_argument_group("Android over adb (binaries you provide; nothing is downloaded)")
    group.add_argument("--android", action="store_true",
                       help="also run the bundle's .tflite frame graphs on the attached phone with LiteRT's benchmark_model "
                            "(no phone attached: said in the report, exit 0)")
    group.add_argument("--benchmark-model", type=Path, help="host path of LiteRT's benchmark_model built for the phone's ABI")
    group.add_argument("--executor-runner", type=Path,
                       help="host path of ExecuTorch's executor_runner for the phone (then the .pte programs run too)")
    group.add_argument("--adb", default="adb", help="adb executable (default: adb on PATH)")
    group.add_argument("--serial", help="device serial when several are attached (adb -s)")
    group.add_argument("--delegates", default="cpu,gpu,nnapi", help="comma-separated: cpu (XNNPACK), gpu, nnapi (default all)")
    group.add_argument("--android-graphs", default="frame,baked_frame", help="graphs run on the phone (default frame,baked_frame)")
    group.add_argument("--android-threads", type=_positive_int, default=4, help="CPU threads on the phone (default 4)")
    group.add_argument("--android-runs", type=_positive_int, default=50, help="timed runs per delegate (default 50)")
    group.add_argument("--android-warmup", type=_non_negative_int, default=5, help="warm-up runs (default 5)")
    group.add_argument("--taskset", metavar="MASK", help="pin to these cores, e.g. f0 for the big cores of a 4+4 SoC")
    group.add_argument("--gpu-fp32", action="store_true", help="disallow the GPU delegate's fp16 (default: fp16 allowed)")
    group.add_argument("--op-profiling", action="store_true", help="per-op timings from benchmark_model (in the saved outputs)")


def _android_config(args):
    from bilayer_mobile.bench import AndroidJob
    from bilayer_mobile.runtime_bench.android import AndroidBenchmark

    if args.benchmark_model is None:
        raise InputError("--android needs --benchmark-model PATH: LiteRT's benchmark_model for the phone's ABI "
                         "(built from LiteRT's tflite/tools/benchmark or taken from its releases; this tool downloads nothing)")
    for path in (args.benchmark_model, args.executor_runner):
        if path is not None and not path.is_file():
            raise InputError(f"{path} does not exist; give the host path of the binary built for the phone")
    config = AndroidBenchmark(benchmark_model=args.benchmark_model, executor_runner=args.executor_runner, adb=args.adb,
                              serial=args.serial, threads=args.android_threads, warmup_runs=args.android_warmup,
                              num_runs=args.android_runs, cpu_mask=args.taskset,
                              gpu_precision_loss_allowed=not args.gpu_fp32, op_profiling=args.op_profiling)
    return AndroidJob(config, _csv(args.delegates), _csv(args.android_graphs))


def _packaged_photo(name: str) -> Path:
    from bilayer_mobile.reference.face_samples import photo_path

    return photo_path(name)


def cmd_coverage(args) -> int:
    from bilayer_mobile.runtime_bench.coverage import coverage_markdown, gpu_coverage, write_coverage
    from bilayer_mobile.runtime_bench.validate import validate_bundle

    log = lambda step, line, target=None: print(line, file=sys.stderr, flush=True)
    report = validate_bundle(args.bundle, progress=log, gpu="require", runtimes=("litert_gpu",))
    coverage = gpu_coverage(args.bundle, report)
    if args.write_reports:
        write_coverage(args.bundle, coverage)
    print(json.dumps(coverage, indent=2) if args.json else coverage_markdown(coverage))
    return 0 if all(r.passed for r in report.results) else 1


def cmd_validate(args) -> int:
    from bilayer_mobile.runtime_bench.machine import machine_line, same_kernels
    from bilayer_mobile.runtime_bench.report import gate_description, localization_line, results_table, write_reports
    from bilayer_mobile.runtime_bench.validate import validate_bundle

    log = lambda step, line, target=None: print(line, file=sys.stderr, flush=True)
    # a rewritten report covers every artifact the bundle holds, rejected ones included
    include_rejected = args.include_rejected or args.write_reports
    report = validate_bundle(args.bundle, progress=log, include_rejected=include_rejected, gpu=args.gpu)
    if args.write_reports:
        write_reports(args.bundle, report)
    print(gate_description())
    print(results_table(report.results, {a["name"] for a in report.rejected}))
    print(f"measured on: {machine_line(report.machine)}")
    for entry in report.rejected:
        if entry.get("error"):
            print(f"{entry['name']}: rejected at export, could not be produced: {entry['error']}")
    for r in report.results:
        if r.localization:
            print(f"{r.name}: {localization_line(r.localization)}")
    if report.recorded_machine is not None:
        where = ("the same kernels as" if same_kernels(report.machine, report.recorded_machine)
                 else "another machine than")
        print(f"recorded at export on: {machine_line(report.recorded_machine)} ({where} this one)")
        if report.drift:
            print("figures that differ from the bundle's recorded ones:")
            for line in report.drift:
                print(f"  {line}")
        else:
            print("every figure is within the drift tolerance of the bundle's recorded one")
    if report.rejected and not include_rejected:
        print(f"rejected at export (not run; --include-rejected runs them): "
              f"{', '.join(a['name'] for a in report.rejected)}")
    # the verdict is on the published artifacts; rejected ones count only when asked for
    rejected = {a["name"] for a in report.rejected}
    for line in report.not_run:
        print(f"not run here: {line}")
    failed = [r.name for r in report.failed if args.include_rejected or r.artifact not in rejected]
    if args.include_rejected:
        failed += [a["name"] for a in report.rejected if a.get("error")]
    if failed:
        print(f"FAIL: {len(failed)} artifact(s) below threshold or missing: {', '.join(failed)}", file=sys.stderr)
        return 1
    artifacts = {r.artifact for r in report.results if r.artifact}
    print(f"PASS: {len(artifacts)} artifacts in {len(report.results)} runs (GPU accelerator and shaders included)")
    return 0


# ------------------------------------------------------------------------------ entry point
def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from bilayer_mobile.export.precisions import DEFAULT_PRECISIONS, SHIPPING_PRECISIONS
    from bilayer_mobile.export.bundle import GRAPH_NAMES
    from bilayer_mobile.export.warp import WARPS
    from bilayer_mobile.export.targets import TARGETS

    target_names = tuple(TARGETS)
    parser = argparse.ArgumentParser(
        prog="bilayer-mobile",
        description="Turn the bi-layer one-shot head-avatar model into validated on-device bundles. "
                    "Without a checkpoint, commands use the built-in default model: the paper architecture "
                    "with deterministic UNTRAINED weights (for demos, tests and benchmarks).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="config, parameters, MACs per network and warp size of a model")
    _add_model_args(info, positional=True)
    info.add_argument("--json", action="store_true", help="print a JSON report")
    info.set_defaults(func=cmd_info)

    contract = sub.add_parser("contract", help="the tensor contract (inputs and outputs) of every exported graph")
    _add_model_args(contract, positional=True)
    contract.add_argument("--update-doc", type=Path, metavar="DOC",
                          help="rewrite the generated tables in DOC (docs/contract.md) instead of printing them")
    contract.set_defaults(func=cmd_contract)

    render = sub.add_parser("render", help="run the PyTorch reference on real photos")
    render.add_argument("--source", type=Path, required=True, help="source photo (the identity)")
    render.add_argument("--source-landmarks", type=Path, help="68x2 pixel landmarks of the source (.npy); default: detected with dlib")
    render.add_argument("--driver", type=Path, nargs="+", required=True,
                        help="driver photos (landmarks detected) or keypoint files: .npy of 68x2 pixels or 136 normalised values")
    render.add_argument("--keypoints-size", type=_positive_int,
                        help="image size that pixel .npy driver keypoints refer to (default: the model's image size, "
                             "as for official dataset crops)")
    render.add_argument("--no-crop", action="store_true", help="inputs are already face crops of the model's size")
    render.add_argument("--sequence-frames", type=_non_negative_int, default=24,
                        help="frames of the driven demo sequence (source pose to first driver and back); 0 = none")
    render.add_argument("--out", type=Path, required=True, help="output directory (written atomically)")
    render.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    _add_model_args(render, positional=False)
    render.set_defaults(func=cmd_render)
    drive = sub.add_parser("drive", help="drive a bundle's avatar by a video: face mesh -> 68 landmarks -> filter -> frame graph",
                           description="Detects and tracks the driver's face with MediaPipe's face detector and mesh, maps the "
                                       "mesh to 68 landmarks, steadies them with the One Euro filter, and runs the bundle's "
                                       "identity graph (once) and frame graph (every frame) in the named runtime. Writes the "
                                       "driven video OUT and OUT's -side-by-side twin (driver crop with landmarks | avatar).")
    drive.add_argument("--source", type=Path, required=True, help="source photo (the identity)")
    drive.add_argument("--driver", type=Path, nargs="+", required=True,
                       help="a driving video (.mp4, .mov, .webm, ...), image files, or a folder of images")
    drive.add_argument("--bundle", type=Path, required=True, help="bundle directory written by `export`")
    drive.add_argument("--out", type=Path, required=True, help="output video, .mp4 or .gif")
    drive.add_argument("--runtime", choices=("litert", "onnxruntime", "executorch"), default="litert",
                       help="runtime of the graphs (default litert)")
    drive.add_argument("--precision", default="fp32", help="precision of the frame graph, by name (default fp32)")
    drive.add_argument("--identity-precision", default="fp32", help="precision of the identity graph (default fp32)")
    drive.add_argument("--fps", type=float, default=25.0, help="frame rate of an image sequence (default 25)")
    drive.add_argument("--no-smoothing", action="store_true", help="do not filter the landmarks (for comparison)")
    drive.add_argument("--force", action="store_true", help="replace existing output files")
    drive.set_defaults(func=cmd_drive)

    export = sub.add_parser("export", help="export a model to a validated on-device bundle (ONNX, TFLite)",
                            description="Export the identity, frame and baked frame graphs to every target at every "
                                        "precision, run each artifact in its runtime, gate it on parity with the "
                                        "PyTorch reference and publish the bundle atomically. The converters' own "
                                        "output goes to OUT/reports/export.log.")
    _add_model_args(export, positional=True)
    export.add_argument("--targets", default=",".join(target_names),
                        help=f"comma-separated: {', '.join(target_names)} (default: all)")
    export.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS),
                        help=f"comma-separated: {', '.join(SHIPPING_PRECISIONS)} (int8: calibrated static, mixed); "
                             f"default {','.join(DEFAULT_PRECISIONS)}")
    export.add_argument("--data-root", type=Path,
                        help="calibration/golden data in the official dataset layout (default: the packaged photos, "
                             "augmented)")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to create (must not exist)")
    export.add_argument("--warp", choices=WARPS, default="fused",
                        help="the TFLite frame graphs' warp: fused (default; runs entirely on LiteRT's GPU accelerator "
                             "and on XNNPACK) or decomposed (torch's grid_sample as litert-torch lowers it: GATHER_ND "
                             "and rank-5 ops, which no GPU delegate takes; for comparison). ONNX keeps its native "
                             "GridSample")
    export.add_argument("--graphs", default=",".join(GRAPH_NAMES),
                        help=f"comma-separated: {', '.join(GRAPH_NAMES)} (default: all)")
    export.add_argument("--no-driver-models", action="store_true",
                        help="leave out the driving front end's models (MediaPipe's face detectors and face mesh, "
                             "driver/; `drive` needs them)")
    _add_gpu_arg(export)
    export.add_argument("--strict", action="store_true",
                        help="publish nothing when any artifact fails its parity gate (default: publish the "
                             "passing ones, move the failing ones to rejected/, exit 1)")
    export.set_defaults(func=cmd_export)

    validate = sub.add_parser("validate", help="run every artifact of a bundle in its runtime and gate on parity")
    validate.add_argument("bundle", type=Path, help="bundle directory written by `export`")
    validate.add_argument("--write-reports", action="store_true", help="rewrite the bundle's reports/ with these results")
    validate.add_argument("--include-rejected", action="store_true",
                          help="also run the artifacts rejected at export (in rejected/)")
    _add_gpu_arg(validate)
    validate.set_defaults(func=cmd_validate)

    coverage = sub.add_parser("coverage", help="which ops of each TFLite artifact LiteRT's GPU accelerator takes, "
                                               "and its fp16 parity",
                              description="Compile every TFLite artifact of a bundle for LiteRT's GPU accelerator, "
                                          "list its ops (name, version, count) and what the accelerator rejects "
                                          "and why, and gate its fp16 parity on golden samples. Prints the "
                                          "report's Markdown; --write-reports updates the bundle's "
                                          "reports/coverage.{md,json}.")
    coverage.add_argument("bundle", type=Path, help="bundle directory written by `export`")
    coverage.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    coverage.add_argument("--write-reports", action="store_true", help="rewrite reports/coverage.{md,json}")
    coverage.set_defaults(func=cmd_coverage)

    bench = sub.add_parser(
        "bench", help="latency: every artifact side by side on the host, stages of a driven frame, phones over adb",
        description="Time a bundle's frame, baked frame and identity artifacts in every CPU runtime they have here "
                    "(LiteRT with XNNPACK at 1 and N threads, onnxruntime, ExecuTorch) beside the PyTorch reference "
                    "(eager, channels-last, torch.compile), interleaved round-robin with a pause between calls; "
                    "min/p50/p90/p99, spread, peak memory, size, MACs and GFLOP/s against the machine's fp32 GEMM "
                    "rate (measured before and after); the stages of a driven frame; Android phones over adb with "
                    "the user's LiteRT benchmark_model (--android); a roofline estimate for phone GPUs. Writes "
                    "latency.{json,md} and plots to OUT (default BUNDLE/reports). Sets OMP_WAIT_POLICY=PASSIVE "
                    "unless it is set. Host numbers compare artifacts on one machine; lavapipe GPU runs are never timed.")
    bench.add_argument("bundle", type=Path, help="a bundle directory written by `export`")
    _add_model_args(bench, positional=False)
    bench.add_argument("--no-reference", action="store_true",
                       help="do not time the PyTorch reference (and no roofline; no model is loaded)")
    bench.add_argument("--graphs", default="frame,baked_frame,identity",
                       help="comma-separated graphs (default frame,baked_frame,identity; also split_frame)")
    bench.add_argument("--precisions", default="fp32,fp16,int8_dynamic,int8", help="comma-separated precisions (default all four)")
    bench.add_argument("--runtimes", default="litert,onnxruntime,executorch", help="comma-separated runtimes (default all three)")
    bench.add_argument("--reference-modes", default="eager,channels_last,compile",
                       help="PyTorch reference modes for the frame (default eager,channels_last,compile)")
    bench.add_argument("--threads", type=_positive_int, default=2, help="threads per runtime (default 2)")
    bench.add_argument("--no-single-thread", action="store_true", help="do not also time LiteRT at 1 thread")
    bench.add_argument("--runs", type=_positive_int, default=30, help="timed rounds of the frame graphs (default 30)")
    bench.add_argument("--identity-runs", type=_non_negative_int, default=5,
                       help="timed rounds of the identity graphs (default 5; 0 skips them)")
    bench.add_argument("--warmup", type=_non_negative_int, default=3, help="untimed calls first (default 3)")
    bench.add_argument("--no-memory", action="store_true", help="do not measure each artifact's peak memory")
    bench.add_argument("--no-stages", action="store_true", help="do not time the stages of a driven frame")
    bench.add_argument("--source", type=Path, help="source photo of the stage breakdown (default: the packaged source.jpg)")
    bench.add_argument("--driver", type=Path, nargs="+", default=[],
                       help="driver video or images of the stage breakdown (default: the packaged target.jpg, still)")
    bench.add_argument("--stage-runtime", default="litert", help="runtime of the graphs in the stage breakdown (default litert)")
    bench.add_argument("--stage-frames", type=_positive_int, default=60, help="driver frames timed (default 60)")
    bench.add_argument("--no-dlib", action="store_true", help="do not time dlib's landmarks beside the mesh")
    bench.add_argument("--no-roofline", action="store_true", help="do not estimate phone GPU latency from the roofline")
    bench.add_argument("--compare", type=Path, metavar="OLD.json",
                       help="flag records slower than in an earlier latency.json by more than 5%% and the runs' spread (exit 1)")
    bench.add_argument("--out", type=Path, help="report directory (default BUNDLE/reports)")
    _add_android_args(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def _passive_openmp_for_bench(argv: list[str] | None) -> None:
    """Re-execute `bench` with OMP_WAIT_POLICY=PASSIVE unless the user set a policy: OpenMP reads
    it once, when torch loads, and its default spin-wait distorts eager torch's timings under load.
    Only from the real command line (a caller of `main(argv)` owns its process)."""
    if argv is None and sys.argv[1:2] == ["bench"] and "OMP_WAIT_POLICY" not in os.environ:
        os.execve(sys.executable, [sys.executable, "-m", "bilayer_mobile.cli", *sys.argv[1:]],
                  {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def main(argv: list[str] | None = None) -> int:
    _passive_openmp_for_bench(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BilayerError as exc:
        # one line whatever the message holds: a wrapped library message may span several
        print(f"bilayer-mobile {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # a bug, not a user error: one line by default, the traceback on request
        if os.environ.get("BILAYER_MOBILE_DEBUG", "") not in ("", "0"):
            raise
        print(f"bilayer-mobile {args.command}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(set BILAYER_MOBILE_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
