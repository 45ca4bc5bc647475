"""`export`: turn a model into a self-describing, validated on-device bundle.

A bundle directory holds:
  manifest.json        every artifact (target, precision, graph, file, sha256, input/output names,
                       shapes, dtypes, quantization), preprocessing constants, the adaptive-parameter
                       layout, tool versions
  models/              <graph>_<precision>.onnx / .tflite
  golden/<graph>.npz   real-face inputs and the PyTorch reference's outputs, keys = the artifacts'
                       input and output names, a leading sample axis
  reports/             parity.json, parity.md, margins.png (every artifact's margin over its gate)
                       and worst_artifact.png

  rejected/            artifacts that failed their parity gate, kept for inspection, never in models/

It is written to a temporary directory beside the destination and renamed when every artifact is
exported and validated, so an error or an interrupt leaves nothing behind. An artifact that fails
its gate does not take the others with it: it is moved to `rejected/`, listed under `rejected` in
the manifest and the report, and the bundle is published with the rest (`ExportConfig.strict`
publishes nothing instead). Each graph is converted once per target; its fp16 and int8 artifacts
are derived from that float model.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..reference.errors import BilayerError
from ..reference.model import BilayerModel
from ..reference.preprocessing import STICKMAN_PARTS

from .calibration import calibration_frame_feeds, frame_feeds, identity_feeds, identity_states, photo_clips
from .graphs import BakedFrameGraph, FrameGraph, IdentityGraph, adaptive_layout

TARGETS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8")
# The identity graph runs once per identity (seconds are fine there); it is exported in float.
IDENTITY_PRECISIONS = ("fp32", "fp16")
GRAPH_INPUTS = {
    "identity": ("source_image", "source_stickman", "source_keypoints", "source_mask"),
    "frame": ("keypoints", "texture", "adaptive_params"),
    "baked_frame": ("keypoints",),
}
GRAPH_OUTPUTS = {
    "identity": ("texture", "adaptive_params"),
    "frame": ("image", "mask", "uv", "lowfreq"),
    "baked_frame": ("image", "mask", "uv", "lowfreq"),
}
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}


class ExportError(BilayerError):
    """An export option is invalid or an artifact could not be produced."""


class ValidationFailed(BilayerError):
    """An exported artifact fell below its parity threshold and the export was strict.

    Exits 1 like a failed `validate`: the input was fine, an artifact was not."""

    exit_code = 1


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how."""

    out: Path
    targets: tuple[str, ...] = TARGETS
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    calibration_identities: int = 8
    calibration_frames: int = 4
    golden_identities: int = 2
    golden_frames: int = 3
    seed: int = 2026
    data_root: Path | None = None
    strict: bool = False  # publish nothing when any artifact fails its gate

    def __post_init__(self):
        for t in self.targets:
            if t not in TARGETS:
                raise ExportError(f"unknown target {t!r}; choose from {', '.join(TARGETS)} "
                                  "(Core ML and NNAPI profiles are not built yet)")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ExportError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        if not self.targets or not self.precisions:
            raise ExportError("at least one target and one precision are needed")


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for dist in ("torch", "onnx", "onnxruntime", "onnxslim", "litert-torch", "ai-edge-litert", "ai-edge-quantizer",
                 "tensorflow", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def preprocessing_constants(model: BilayerModel) -> dict:
    """What an app must do before calling the identity and frame graphs."""
    size = model.config.image_size
    return {
        "image_size": size,
        "image": "RGB float32 [1,3,S,S] = (uint8 / 255 - 0.5) * 2",
        "mask": "float32 [1,1,S,S] in [0,1]; all ones when no segmentation is available",
        "keypoints": "68 landmarks of the crop, float32 [1,136] = (pixel / crop_side - 0.5) * 2, interleaved x0,y0,x1,y1,...",
        "crop": "square of side 2*max(bbox w,h) around the landmarks' bbox centre, centre moved up by size//6, "
                "black outside the photo, bicubic resize to SxS",
        "stickman": {
            "canvas": f"uint8 {size}x{size}x3 filled with 1, then (x / 255 - 0.5) * 2",
            "points": "int32(trunc((kp + 1) / 2 * S))",
            "thickness": model.config.stickmen_thickness,
            "parts": [{"points": list(p), "closed": c, "rgb": list(col)} for p, c, col in STICKMAN_PARTS],
        },
        "output_image": "float32 [1,3,S,S], not clamped; display: clamp to [-1,1], (x + 1) / 2 * 255",
    }


def _stack_feeds(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in feeds]).astype(np.float32) for k in feeds[0]}


@torch.no_grad()
def _reference_outputs(graph: torch.nn.Module, names_in, names_out, feeds) -> dict[str, np.ndarray]:
    outs = {n: [] for n in names_out}
    for feed in feeds:
        result = graph(*[torch.from_numpy(feed[n]) for n in names_in])
        for n, value in zip(names_out, result):
            outs[n].append(value.numpy())
    return {n: np.stack(v).astype(np.float32) for n, v in outs.items()}


def _float_converter(target: str):
    """The target's one conversion of a torch graph to its float model (reused by every precision)."""
    if target == "onnx":
        from .onnx_export import convert_float

        return convert_float
    from .tflite import convert_float

    return convert_float


def _exporter(target: str):
    if target == "onnx":
        from .onnx_export import export_onnx

        return export_onnx
    from .tflite import export_tflite

    return export_tflite


# Relative cost of each step, for the estimate of the time left: seconds measured by `make bundle`
# on 2 cores (AMD EPYC, AVX-512), mean of the two targets. The identity graph has 103 M
# parameters and an unrolled enhancer, the frame graphs ~5 M; calibrated int8 runs the graph on
# the calibration set.
STEP_COST = {
    "prepare": 25.0,  # real-face data, graphs and golden reference outputs
    ("convert", "identity"): 32.0, ("convert", "frame"): 8.0, ("convert", "baked_frame"): 8.0,
    ("derive", "identity", "fp32"): 6.0, ("derive", "identity", "fp16"): 6.5,
    ("validate", "identity"): 6.5, ("validate", "frame"): 0.5, ("validate", "baked_frame"): 0.5,
    **{("derive", g, p): c for g in ("frame", "baked_frame")
       for p, c in (("fp32", 0.2), ("fp16", 0.5), ("int8_dynamic", 0.5), ("int8", 2.5))},
}


class Eta:
    """Time left, from the time spent so far and the relative costs of done and remaining steps."""

    def __init__(self, total_cost: float):
        self.total, self.done, self.start = total_cost, 0.0, time.perf_counter()

    def advance(self, cost: float) -> None:
        self.done += cost

    def text(self) -> str:
        elapsed = time.perf_counter() - self.start
        if self.done <= 0:
            return f"{_minutes(elapsed)} elapsed"
        left = elapsed / self.done * max(0.0, self.total - self.done)
        return f"{_minutes(elapsed)} elapsed, about {_minutes(left)} left"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _io_details(details) -> list[dict]:
    """Runner tensor infos -> manifest entries (quantization only for quantized boundary tensors)."""
    out = []
    for d in details:
        entry = {"name": d.name, "shape": [int(s) for s in d.shape], "dtype": str(np.dtype(d.dtype))}
        scales = getattr(d, "scales", ())
        entry["quantization"] = ({"scale": list(scales), "zero_point": list(getattr(d, "zero_points", ()))}
                                 if scales else None)
        out.append(entry)
    return out


@dataclass
class ExportedBundle:
    """A published bundle: its manifest and the validation of every artifact it was exported with
    (`rejected` names the artifacts kept out of models/ because they failed their gate)."""

    manifest: dict
    report: "ValidationReport"  # runtime_bench.validate
    rejected: list[str]

    @property
    def results(self):
        return self.report.results


def export_bundle(model: BilayerModel, config: ExportConfig, model_description: str, progress=print) -> ExportedBundle:
    """Export, validate and atomically publish a bundle; returns its manifest and parity results.

    Artifacts below their gate go to `rejected/` and the rest is published; with `config.strict`
    nothing is published and `ValidationFailed` is raised instead.
    """
    from ..runtime_bench.validate import make_runner, results_table, sha256_file, validate_bundle, write_reports

    out = Path(config.out)
    if out.exists():
        raise ExportError(f"output directory {out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(g, t, p) for g in ("identity", "frame", "baked_frame") for t in config.targets for p in config.precisions
            if g != "identity" or p in IDENTITY_PRECISIONS]
    eta = Eta(STEP_COST["prepare"] + sum(STEP_COST["derive", g, p] + STEP_COST["validate", g] for g, _, p in jobs)
              + sum(STEP_COST["convert", g] for g, t in {(g, t) for g, t, _ in jobs}))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = model.eval()
        size = model.config.image_size
        progress("preparing real-face data (calibration and golden sets)")
        if config.data_root:
            from .calibration import dataset_clips

            clips = dataset_clips(config.data_root, max_clips=config.calibration_identities + config.golden_identities,
                                  frames=max(config.calibration_frames, config.golden_frames), image_size=size)
            golden_clips, calib_clips = clips[: config.golden_identities], clips[config.golden_identities:] or clips
        else:
            golden_clips = photo_clips(config.golden_identities, config.golden_frames, config.seed, image_size=size)
            calib_clips = photo_clips(config.calibration_identities, config.calibration_frames, config.seed + 1,
                                      image_size=size)

        # graphs, golden vectors and calibration feeds
        first = golden_clips[0]
        golden_states = identity_states(model, golden_clips)  # once: the frame feeds and the baked graph share them
        state = golden_states[0]
        layout = adaptive_layout(state)
        graphs = {
            "identity": IdentityGraph(model),
            "frame": FrameGraph(model, layout, debug_outputs=True),
            "baked_frame": BakedFrameGraph(model, state, debug_outputs=True),
        }
        feeds = {
            "identity": identity_feeds(golden_clips, size),
            "frame": frame_feeds(model, golden_clips, golden_states),
            "baked_frame": [{"keypoints": kp[None].numpy()} for kp in first.drivers],  # the baked identity
        }
        # only int8 needs calibration, and the identity graph is not exported in int8
        calibration = {}
        if "int8" in config.precisions:
            calibration = {
                "frame": calibration_frame_feeds(model, calib_clips),
                "baked_frame": [{"keypoints": kp[None].numpy()} for c in calib_clips for kp in c.drivers],
            }
        (tmp / "golden").mkdir()
        golden_meta = {}
        eta.advance(STEP_COST["prepare"])
        for name, graph in graphs.items():
            reference = _reference_outputs(graph, GRAPH_INPUTS[name], GRAPH_OUTPUTS[name], feeds[name])
            path = tmp / "golden" / f"{name}.npz"
            np.savez(path, **_stack_feeds(feeds[name]), **reference)
            golden_meta[f"golden/{name}.npz"] = {"sha256": sha256_file(path), "samples": len(feeds[name])}

        # artifacts: each graph converted once per target, every precision derived from that float model
        (tmp / "models").mkdir()
        artifacts, not_produced = [], []
        float_model, float_key, float_error, float_seconds = None, None, None, 0.0
        for i, (graph_name, target, precision) in enumerate(jobs, 1):
            name = f"{graph_name}_{precision}_{target}"
            file = Path("models") / f"{graph_name}_{precision}{EXTENSIONS[target]}"
            example = {k: torch.from_numpy(v) for k, v in feeds[graph_name][0].items()}
            if float_key != (graph_name, target):
                float_model, float_error = None, None  # the previous float model can be large: free it first
                progress(f"[{i}/{len(jobs)}] converting the {graph_name} graph to {target} ({eta.text()})")
                started = time.perf_counter()
                try:
                    float_model = _float_converter(target)(graphs[graph_name], example, list(GRAPH_OUTPUTS[graph_name]))
                except Exception as exc:  # this graph and target fail; the other artifacts go on
                    float_error = f"{target} conversion of the {graph_name} graph failed: {type(exc).__name__}: {exc}"
                float_key, float_seconds = (graph_name, target), time.perf_counter() - started
                eta.advance(STEP_COST["convert", graph_name])
            progress(f"[{i}/{len(jobs)}] exporting {name} ({eta.text()})")
            started = time.perf_counter()
            try:
                if float_error:
                    raise ExportError(float_error)
                result = _exporter(target)(graphs[graph_name], example, list(GRAPH_OUTPUTS[graph_name]), tmp / file,
                                           precision, calibration=calibration.get(graph_name) if precision == "int8" else None,
                                           float_model=float_model)
            except Exception as exc:  # one artifact that cannot be made does not take the others with it
                error = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
                progress(f"    {name} could not be produced: {error.splitlines()[0][:300]}")
                not_produced.append({"name": name, "graph": graph_name, "target": target, "precision": precision,
                                     "file": None, "error": error})
                eta.advance(STEP_COST["derive", graph_name, precision] + STEP_COST["validate", graph_name])
                continue
            seconds = time.perf_counter() - started
            eta.advance(STEP_COST["derive", graph_name, precision])
            runner = make_runner(target, tmp / file)
            artifacts.append({
                "name": name, "graph": graph_name, "target": target, "precision": precision,
                "file": str(file), "sha256": sha256_file(tmp / file), "size_bytes": (tmp / file).stat().st_size,
                "inputs": _io_details(runner.inputs), "outputs": _io_details(runner.outputs),
                "golden": f"golden/{graph_name}.npz",
                "float_ops": getattr(result, "float_ops", None), "notes": list(getattr(result, "notes", [])),
                "export_seconds": round(seconds, 1),
                "float_conversion_seconds": round(float_seconds, 1),  # shared by the graph's artifacts of this target
            })
        float_model = None
        if not artifacts:
            raise ValidationFailed("no artifact could be produced, bundle not written:\n"
                                   + "\n".join(f"  {a['name']}: {a['error']}" for a in not_produced))

        manifest = {
            "format": "bilayer-mobile-bundle",
            "format_version": 2,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"source": model_description, "config": dataclasses.asdict(model.config),
                      "enhancer": model.has_enhancer},
            "graphs": {
                "identity": "once per identity: (source_image, source_stickman, source_keypoints, source_mask) -> "
                            "(texture, adaptive_params)",
                "frame": "once per frame: (keypoints, texture, adaptive_params) -> (image, mask, uv, lowfreq)",
                "baked_frame": "once per frame, one identity folded in: keypoints -> (image, mask, uv, lowfreq)",
            },
            "adaptive_params_layout": [dataclasses.asdict(e) for e in layout],
            "preprocessing": preprocessing_constants(model),
            "golden": golden_meta,
            "artifacts": artifacts,
            "rejected": [],
            "not_exported": {
                "coreml": "not built yet",
                "executorch": "not built yet",
                "nnapi": "not built yet",
                "identity int8": "the identity graph runs once per identity; it is exported in fp32 and fp16",
            },
            "tools": tool_versions(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))

        validation_costs = iter([0.0] + [STEP_COST["validate", a["graph"]] for a in artifacts])

        def validation_progress(message: str) -> None:
            eta.advance(next(validation_costs, 0.0))  # a step is done when the next one is announced
            progress(f"{message} ({eta.text()})")

        report = validate_bundle(tmp, progress=validation_progress)
        failed = {r.name for r in report.failed}
        if not_produced and config.strict:
            raise ValidationFailed(f"{len(not_produced)} artifact(s) could not be produced, bundle not written "
                                   "(--strict):\n" + "\n".join(f"  {a['name']}: {a['error']}" for a in not_produced))
        if failed and config.strict:
            raise ValidationFailed(f"{len(failed)} artifact(s) below threshold, bundle not written (--strict):\n"
                                   + results_table(report.results))
        # keep failed artifacts out of models/: they go to rejected/ with their figures in the report
        for artifact in [a for a in artifacts if a["name"] in failed]:
            rejected_file = Path("rejected") / Path(artifact["file"]).name
            (tmp / "rejected").mkdir(exist_ok=True)
            (tmp / artifact["file"]).rename(tmp / rejected_file)
            artifact["file"] = str(rejected_file)
        if len(failed) == len(artifacts):
            raise ValidationFailed(f"every artifact is below its threshold, bundle not written:\n"
                                   + results_table(report.results))
        manifest["artifacts"] = [a for a in artifacts if a["name"] not in failed]
        manifest["rejected"] = [a for a in artifacts if a["name"] in failed] + not_produced
        manifest["validation"] = {"machine": report.machine,
                                  "figures": {r.name: r.figures() for r in report.results}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        report.rejected = manifest["rejected"]
        write_reports(tmp, report)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        tmp.rename(out)
        return ExportedBundle(manifest, report, sorted(failed | {a["name"] for a in not_produced}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
