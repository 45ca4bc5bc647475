"""Write a self-describing candidate bundle: graphs -> golden vectors -> every artifact -> manifest.

A bundle directory holds:
  manifest.json        the contract of each graph (inputs and outputs: names, shapes, dtypes,
                       ranges, meaning), every artifact (graph, target, the runtime that runs it,
                       precision, file, sha256, notes), preprocessing constants, the
                       adaptive-parameter layout, the identities of the golden and calibration
                       sets, tool versions
  models/              <graph>_<precision>.onnx / .tflite
  shaders/             the split frame graph's compositing shaders (GLSL ES 3.00, WGSL)
  driver/              the driving front end's models (MediaPipe's face detectors and face mesh,
                       as published; export.driver_models), with the constants around them
                       under `driver` in the manifest
  golden/<graph>.npz   real-face inputs and the PyTorch reference's outputs, keys = the contract's
                       tensor names, a leading sample axis
  reports/             parity.json, parity.md and plots (written by runtime_bench.report),
                       export.log (the converters' own output)
  rejected/            artifacts that failed their parity gate, kept for inspection, never in models/

This module writes what export knows: `write_candidate` fills a directory with the golden
vectors, the artifacts and the manifest; `record_verdicts` moves the artifacts a validation
failed to `rejected/` and records the figures. Validating the candidate (`runtime_bench`) and
publishing it atomically are composed above both, in `bilayer_mobile.pipeline`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..reference.environment import toolchain_versions
from ..reference.files import sha256_file, sha256_tree, size_of_tree, write_text_atomic
from ..reference.model import BilayerModel
from ..reference.preprocessing import STICKMAN_PARTS
from .calibration import DataSets, calibration_frame_feeds, frame_feeds, identity_feeds, identity_states
from .driver_models import driver_graphs, write_driver_models
from .errors import ExportError
from .graphs import BakedFrameGraph, FrameGraph, IdentityGraph, SplitFrameGraph, adaptive_layout
from .precisions import DEFAULT_PRECISIONS, IDENTITY_PRECISIONS, PRECISIONS, SHIPPING_PRECISIONS, needs_calibration
from .targets import PLANNED_TARGETS, TARGETS
from .warp import WARPS

FORMAT = "bilayer-mobile-bundle"
FORMAT_VERSION = 6  # 5: Core ML packages, ExecuTorch programs, the NNAPI profile; 6: the driver models (driver/)
GRAPH_NAMES = ("identity", "frame", "baked_frame", "split_frame")
SHADERS_DIR = Path(__file__).parent / "shaders"  # shipped in bundles beside the split frame graph


@dataclass(frozen=True)
class ExportConfig:
    """What to export and on which data."""

    out: Path
    targets: tuple[str, ...] = tuple(TARGETS)
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    calibration_identities: int = 8
    calibration_frames: int = 4
    golden_identities: int = 2
    golden_frames: int = 3
    seed: int = 2026
    data_root: Path | None = None
    strict: bool = False  # publish nothing when any artifact fails its gate
    warp: str = "fused"  # the TFLite frame graphs' warp (export.warp.WARPS)
    graphs: tuple[str, ...] = GRAPH_NAMES
    driver_models: bool = True  # ship the face detectors and face mesh that make the frames' landmarks

    def __post_init__(self):
        for t in self.targets:
            if t not in TARGETS:
                planned = f" ({', '.join(PLANNED_TARGETS)} are not built yet)" if PLANNED_TARGETS else ""
                raise ExportError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}{planned}")
        for p in self.precisions:
            if p not in SHIPPING_PRECISIONS:
                raise ExportError(f"unknown precision {p!r}; choose from {', '.join(SHIPPING_PRECISIONS)}")
            # a target that lacks one of several precisions skips it (recorded under not_exported);
            # a precision no chosen target produces is a mistake on the command line
            if not any(p in TARGETS[t].precisions for t in self.targets):
                offered = "; ".join(f"{t}: {', '.join(TARGETS[t].precisions)}" for t in self.targets)
                raise ExportError(f"no chosen target exports {p} ({offered})")
        if not self.targets or not self.precisions:
            raise ExportError("at least one target and one precision are needed")
        if self.warp not in WARPS:
            raise ExportError(f"unknown warp {self.warp!r}; choose from {', '.join(WARPS)}")
        unknown = [g for g in self.graphs if g not in GRAPH_NAMES]
        if unknown or not self.graphs:
            raise ExportError(f"unknown graph {', '.join(unknown) or '(none)'}; choose from {', '.join(GRAPH_NAMES)}")
        if not self.jobs():
            offered = "; ".join(f"{t}: {', '.join(TARGETS[t].graphs)}" for t in self.targets if TARGETS[t].graphs)
            raise ExportError(f"nothing to export: the chosen targets export none of the graphs {', '.join(self.graphs)} "
                              f"({offered})")

    def jobs(self) -> list[tuple[str, str, str]]:
        """(graph, target, precision) of every artifact, grouped by graph then target (so each
        graph's float model is converted once per target and freed before the next)."""
        return [(g, t, p) for g in GRAPH_NAMES if g in self.graphs for t in self.targets for p in self.precisions
                if (g != "identity" or p in IDENTITY_PRECISIONS) and p in TARGETS[t].precisions
                and (TARGETS[t].graphs is None or g in TARGETS[t].graphs)]

    def skipped(self) -> dict[str, str]:
        """"<target> <precision>" -> why, for each asked-for precision a chosen target does not export."""
        return {f"{t} {p}": TARGETS[t].limitations.get(p, f"{t} exports {', '.join(TARGETS[t].precisions)}")
                for t in self.targets for p in self.precisions if p not in TARGETS[t].precisions}


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
def reference_outputs(graph: torch.nn.Module, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The graph's outputs on every feed, stacked on a leading sample axis, by contract name."""
    names_in = [t.name for t in graph.input_spec()]
    names_out = [t.name for t in graph.output_spec()]
    outs = {n: [] for n in names_out}
    for feed in feeds:
        result = graph(*[torch.from_numpy(feed[n]) for n in names_in])
        for n, value in zip(names_out, result, strict=True):
            outs[n].append(value.numpy())
    return {n: np.stack(v).astype(np.float32) for n, v in outs.items()}


# Where progress goes: progress(step, line, target=None) after each step, `step` a key of the
# cost table the caller keeps (("prepare",), ("convert", graph), ("derive", graph, precision)),
# `target` the target the step was for.
Progress = Callable[..., None]


@dataclass
class Candidate:
    """A filled candidate directory: its manifest (as written) and the artifacts that could not
    be produced (their conversion failed; no file)."""

    directory: Path
    manifest: dict
    not_produced: list[dict] = field(default_factory=list)


def write_candidate(model: BilayerModel, config: ExportConfig, directory: Path, model_description: str,
                    progress: Progress) -> Candidate:
    """Fill `directory` (empty) with golden vectors, every artifact of `config.jobs()` that can be
    produced, and the manifest. A conversion that fails is recorded and the others go on."""
    model = model.eval()
    started = time.perf_counter()
    data = DataSets.load(config, model.config.image_size)
    golden_states = identity_states(model, data.golden)  # once: the frame feeds and the baked graph share them
    layout = adaptive_layout(golden_states[0])
    graphs = {
        "identity": IdentityGraph(model, layout),
        "frame": FrameGraph(model, layout, debug_outputs=True),
        "baked_frame": BakedFrameGraph(model, golden_states[0], debug_outputs=True),
        "split_frame": SplitFrameGraph(model, layout),
    }
    graphs = {name: graph for name, graph in graphs.items() if name in config.graphs}
    frame = frame_feeds(model, data.golden, golden_states)
    without_texture = lambda feed: {k: v for k, v in feed.items() if k != "texture"}
    feeds = {
        "identity": identity_feeds(data.golden, model.config.image_size),
        "frame": frame,
        "baked_frame": [{"keypoints": kp[None].numpy()} for kp in data.golden[0].drivers],  # the baked identity
        "split_frame": [without_texture(feed) for feed in frame],
    }
    calibration = {}
    if any(needs_calibration(p) for p in config.precisions):  # the identity graph is float only
        frame_calibration = calibration_frame_feeds(model, data.calibration)
        calibration = {
            "frame": frame_calibration,
            "baked_frame": [{"keypoints": kp[None].numpy()} for c in data.calibration for kp in c.drivers],
            "split_frame": [without_texture(feed) for feed in frame_calibration],
        }
    # golden outputs come from the reference network itself, not the copy shaped for the mobile
    # runtimes that the artifacts are converted from: a fault in the shaping cannot set the bar
    reference_graph = {
        "identity": lambda: graphs["identity"],
        "frame": lambda: FrameGraph(model, layout, debug_outputs=True, for_mobile=False),
        "baked_frame": lambda: BakedFrameGraph(model, golden_states[0], debug_outputs=True, for_mobile=False),
        "split_frame": lambda: SplitFrameGraph(model, layout, for_mobile=False),
    }
    golden_meta = {}
    for name, graph in graphs.items():
        path = directory / "golden" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {**_stack_feeds(feeds[name]), **reference_outputs(reference_graph[name](), feeds[name])}
        if hasattr(graph, "composite_spec"):  # what validation composites the outputs with, and the image
            arrays["texture"] = _stack_feeds(frame)["texture"]
            arrays["image"] = reference_outputs(FrameGraph(model, layout, for_mobile=False), frame)["image"]
        np.savez(path, **arrays)
        golden_meta[f"golden/{name}.npz"] = {"sha256": sha256_file(path), "samples": len(feeds[name])}
    shaders = copy_shaders(directory) if "split_frame" in graphs else {}
    driver_artifacts, driver = [], None
    if config.driver_models:
        started_driver = time.perf_counter()
        driver_artifacts, driver_golden, driver = write_driver_models(directory)
        golden_meta.update(driver_golden)
        progress(("driver",), f"driver models (MediaPipe's, as published) and their golden vectors ready in "
                              f"{time.perf_counter() - started_driver:.1f} s")
    progress(("prepare",), f"golden and calibration data ready in {time.perf_counter() - started:.1f} s "
                           f"(golden: {', '.join(data.golden_identities)}; calibration: "
                           f"{', '.join(data.calibration_identities)})")

    artifacts, not_produced = [], []
    float_model, float_key, float_error = None, None, None
    for graph_name, target_name, precision in config.jobs():
        target = TARGETS[target_name]
        graph = target.graph_for(graphs[graph_name], config.warp)
        name = f"{graph_name}_{precision}_{target_name}"
        file = Path("models") / f"{graph_name}_{precision}{target.extension}"
        example = {k: torch.from_numpy(v) for k, v in feeds[graph_name][0].items()}
        if float_key != (graph_name, target_name):
            float_model, float_error = None, None  # the previous float model can be large: free it first
            started = time.perf_counter()
            try:
                float_model = target.convert_float(graph, example)
            except Exception as exc:  # this graph and target fail; the other artifacts go on
                float_error = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            float_key = (graph_name, target_name)
            progress(("convert", graph_name), f"{graph_name} graph -> {target_name} float model "
                     + (f"FAILED: {float_error.splitlines()[0][:200]}" if float_error
                        else f"in {time.perf_counter() - started:.1f} s"), target=target_name)
        started = time.perf_counter()
        try:
            if float_error:
                raise ExportError(float_error)
            notes = target.export(graph, example, precision, directory / file,
                                  calibration=calibration.get(graph_name) if needs_calibration(precision) else None,
                                  float_model=float_model)
        except Exception as exc:  # one artifact that cannot be made does not take the others with it
            error = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            not_produced.append({"name": name, "graph": graph_name, "target": target_name, "runtime": target.runtime,
                                 "precision": precision, "file": None, "error": error})
            progress(("derive", graph_name, precision), f"{name}: could not be produced: {error.splitlines()[0][:200]}",
                     target=target_name)
            continue
        seconds = time.perf_counter() - started
        artifacts.append({
            "name": name, "graph": graph_name, "target": target_name, "runtime": target.runtime,
            "precision": precision, "file": str(file), "sha256": sha256_tree(directory / file),
            "size_bytes": size_of_tree(directory / file),
            "inputs": [t.as_dict() for t in graph.input_spec()], "outputs": [t.as_dict() for t in graph.output_spec()],
            "golden": f"golden/{graph_name}.npz", "warp": target.warp_of(graph),
            **({"composited": graph.composited, "composite_inputs": [t.as_dict() for t in graph.composite_spec()]}
               if hasattr(graph, "composite_spec") else {}),
            "float_ops": notes.float_ops, "notes": notes.notes,
            **({"accelerator": notes.accelerator} if notes.accelerator else {}),
            "export_seconds": round(seconds, 1),
        })
        progress(("derive", graph_name, precision), f"{name}: written in {seconds:.1f} s "
                                                    f"({size_of_tree(directory / file) / 1e6:.1f} MB)", target=target_name)
    float_model = None
    artifacts += driver_artifacts

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"source": model_description, "config": dataclasses.asdict(model.config),
                  "enhancer": model.has_enhancer},
        "graphs": {name: {"purpose": g.purpose, "inputs": [t.as_dict() for t in g.input_spec()],
                          "outputs": [t.as_dict() for t in g.output_spec()]} for name, g in graphs.items()}
                  | (driver_graphs() if driver else {}),
        "adaptive_params_layout": [dataclasses.asdict(e) for e in layout],
        "preprocessing": preprocessing_constants(model),
        "data": data.describe(),
        "golden": golden_meta,
        "warp": {"tflite": config.warp},
        "shaders": shaders,
        **({"driver": driver} if driver else {}),
        "targets": {name: TARGETS[name].describe() for name in config.targets},
        "precisions": {name: PRECISIONS[name].description for name in config.precisions},
        "artifacts": artifacts,
        "rejected": list(not_produced),
        "not_exported": {
            **PLANNED_TARGETS,
            **config.skipped(),
            "identity int8": "the identity graph runs once per identity; it is exported in "
                             + " and ".join(IDENTITY_PRECISIONS),
        },
        "tools": toolchain_versions(),
    }
    write_manifest(directory, manifest)
    return Candidate(directory, manifest, not_produced)


def copy_shaders(directory: Path) -> dict[str, dict]:
    """Copy the split frame graph's compositing shaders into `directory`/shaders; their manifest
    entries (file -> sha256 and language)."""
    languages = {".frag": "GLSL ES 3.00 fragment shader", ".wgsl": "WGSL"}
    entries = {}
    for source in sorted(SHADERS_DIR.iterdir()):
        if source.suffix not in languages:
            continue
        rel = f"shaders/{source.name}"
        write_text_atomic(directory / rel, source.read_text())
        entries[rel] = {"sha256": sha256_file(directory / rel), "language": languages[source.suffix]}
    return entries


def write_manifest(directory: Path, manifest: dict) -> None:
    """manifest.json, replaced atomically."""
    write_text_atomic(Path(directory) / "manifest.json", json.dumps(manifest, indent=2))


def record_verdicts(candidate: Candidate, failed: set[str], figures: dict[str, dict], machine: dict) -> None:
    """Move the artifacts named in `failed` to rejected/ and list them under `rejected` (beside
    those that could not be produced); record every artifact's figures and the machine that
    measured them under `validation`."""
    directory, manifest = candidate.directory, candidate.manifest
    kept, rejected = [], []
    for artifact in manifest["artifacts"]:
        if artifact["name"] not in failed:
            kept.append(artifact)
            continue
        rejected_file = Path("rejected") / Path(artifact["file"]).name
        (directory / "rejected").mkdir(exist_ok=True)
        (directory / artifact["file"]).rename(directory / rejected_file)
        rejected.append({**artifact, "file": str(rejected_file)})
    manifest["artifacts"] = kept
    manifest["rejected"] = rejected + candidate.not_produced
    manifest["validation"] = {"machine": machine, "figures": figures}
    write_manifest(directory, manifest)
