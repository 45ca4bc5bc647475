"""Where a driven frame's time goes: each stage of the per-frame path timed on its own.

    driver frame -> face detector (when tracking is lost) -> face mesh -> 468 -> 68 mapping
                 -> One Euro filter -> keypoint normalisation -> frame graph -> image
                 or: ... -> split frame graph -> compositing (lowfreq + texture warped by uv)

Users of the official code found its per-frame timings mixed landmark detection and identity
set-up into the frame; here every stage is its own record, and the once-per-identity work is
kept apart. The path is `drive`'s, from the bundle alone (its driver models, table and filter),
with the graphs in the runtime named, and dlib's 68-point detector timed beside the mesh front
end as the alternative. Every stage gives a `LatencyRecord` of kind "stage", one run per call.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from bilayer_mobile.drive import (StageTimes, bundle_front_end, find_artifact, read_driver_frames,
                                  RUNTIME_TARGETS)
from bilayer_mobile.reference.errors import InputError, NoFaceError
from bilayer_mobile.reference.face_tracking import DRIVER_MODEL_NAMES, FaceTracker
from bilayer_mobile.reference.landmark_filter import LandmarkFilter
from bilayer_mobile.reference.mesh_to_ibug import ibug68_from_mesh
from bilayer_mobile.reference.model import warp
from bilayer_mobile.reference.preprocessing import crop_face, draw_stickmen, keypoints_in_crop, load_rgb
from bilayer_mobile.runtime_bench.latency import LatencyRecord
from bilayer_mobile.runtime_bench.validate import BundleError, load_artifact

# The per-frame stages in the order a frame passes them (the records keep this order): the
# runtime of each stage that no bundle artifact runs, and whether it is on the main path of a
# driven frame (the split variant and dlib are alternatives to parts of it).
STAGE_RUNTIMES = {"face detector (model)": "litert", "face mesh (model)": "litert",
                  "tracking pre/post-processing": "torch/numpy", "468->68 mapping": "torch/numpy",
                  "One Euro filter": "torch/numpy", "keypoint normalisation": "torch/numpy",
                  "frame graph": None, "split frame graph": None,
                  "compositing (split variant, torch grid_sample)": "torch/numpy",
                  "dlib 68 landmarks (alternative front end)": "dlib",
                  "source landmarks (mesh)": "litert", "source crop and stickman": "torch/numpy", "identity graph": None}
FRAME_STAGES = tuple(STAGE_RUNTIMES)[:10]
MAIN_PATH = FRAME_STAGES[:7]
ONCE_STAGES = ("source landmarks (mesh)", "source crop and stickman", "identity graph")


def check_stages_possible(bundle: Path, manifest: dict, source: Path, drivers: tuple[Path, ...], runtime: str) -> None:
    """Refuse, before any timing, what the breakdown cannot run on (one line naming the fix): an
    unknown runtime, a bundle without driver models or without an fp32 frame and identity graph
    for `runtime`, a missing or unreadable source or driver, a source without a face."""
    if runtime not in RUNTIME_TARGETS:
        raise InputError(f"--stage-runtime {runtime!r} is not one of {', '.join(RUNTIME_TARGETS)}")
    if not any(a.get("graph") in DRIVER_MODEL_NAMES for a in manifest["artifacts"]):
        raise BundleError("the bundle has no driver models (face detectors and mesh) for the stage breakdown; "
                          "export it without --no-driver-models, or pass --no-stages")
    find_artifact(manifest, "frame", runtime, "fp32")
    find_artifact(manifest, "identity", runtime, "fp32")
    read_driver_frames(drivers, 25.0)  # checks that every driver exists (a video is opened)
    if not Path(source).is_file():
        raise InputError(f"source image {source} does not exist")
    _source_face(bundle_front_end(bundle, manifest, StageTimes()), load_rgb(source, what="source image"), source)


def _source_face(front_end, image: np.ndarray, source: Path):
    face = FaceTracker(front_end.models, track=False)(image)
    if face is None:
        raise NoFaceError(f"no face found in the source image {source}; use a photo with one clearly visible face")
    return face


def stage_breakdown(bundle: Path, manifest: dict, source: Path, drivers: tuple[Path, ...], runtime: str = "litert",
                    threads: int = 2, max_frames: int = 60, dlib: bool = True, progress=None) -> list[LatencyRecord]:
    """Time every stage of driving the bundle's avatar of `source` by up to `max_frames` frames
    of `drivers` (a video or images), the graphs in `runtime` at `threads` threads. The first
    driver frame goes through every stage once untimed, so no record holds a cold start."""
    check_stages_possible(bundle, manifest, source, drivers, runtime)
    size = int(manifest.get("preprocessing", {}).get("image_size", 256))
    models = StageTimes()
    front_end = bundle_front_end(bundle, manifest, models)
    times = StageTimes()
    frame_entry = find_artifact(manifest, "frame", runtime, "fp32")
    split_entry = next((a for a in manifest["artifacts"] if a["graph"] == "split_frame" and a["precision"] == "fp32"
                        and a["target"] == RUNTIME_TARGETS[runtime]), None)
    identity_entry = find_artifact(manifest, "identity", runtime, "fp32")
    load = lambda entry: load_artifact(bundle, entry, threads=threads)

    image = load_rgb(source, what="source image")
    with times("source landmarks (mesh)"):
        face = _source_face(front_end, image, source)
    models.calls_ms.clear()  # the source's detector and mesh calls belong to "source landmarks"
    with times("source crop and stickman"):
        crop = crop_face(image, ibug68_from_mesh(face.mesh, front_end.table), size)
        feed = {"source_image": crop.image[None].numpy(), "source_stickman": draw_stickmen(crop.keypoints[None], size).numpy(),
                "source_keypoints": crop.keypoints[None].numpy(), "source_mask": np.ones((1, 1, size, size), np.float32)}
    identity = load(identity_entry)
    with times("identity graph"):
        state = identity.infer(feed)
    del identity  # hundreds of MB with the enhancer unrolled
    frame_graph = load(frame_entry)
    split_graph = load(split_entry) if split_entry else None
    texture = torch.from_numpy(np.asarray(state["texture"]))
    if dlib:
        from bilayer_mobile.reference.landmarks import detect_landmarks

    def one_frame(frame: np.ndarray, index: int, t: StageTimes, tracker: FaceTracker, smoother: LandmarkFilter) -> bool:
        """Every stage of one driver frame, timed into `t`; False when no face was found."""
        before = {s: sum(models.calls_ms[s]) for s in ("detection", "mesh")}
        with t("tracker"):
            tracked = tracker(frame)
        if tracked is None:
            return False
        model_ms = sum(sum(models.calls_ms[s]) - before[s] for s in before)
        t.calls_ms["tracking pre/post-processing"].append(t.calls_ms["tracker"].pop() - model_ms)
        with t("468->68 mapping"):
            points = ibug68_from_mesh(tracked.mesh, front_end.table)
        with t("One Euro filter"):
            points = smoother(points, index / fps)
        with t("keypoint normalisation"):
            keypoints = keypoints_in_crop(points)[None].numpy()
        with t("frame graph"):
            frame_graph.infer({"keypoints": keypoints, "texture": state["texture"], "adaptive_params": state["adaptive_params"]})
        if split_graph is not None:
            with t("split frame graph"):
                layers = split_graph.infer({"keypoints": keypoints, "adaptive_params": state["adaptive_params"]})
            with t("compositing (split variant, torch grid_sample)"), torch.no_grad():
                torch.from_numpy(layers["lowfreq"]) + warp(texture, torch.from_numpy(layers["uv"]))
        if dlib:
            with t("dlib 68 landmarks (alternative front end)"):
                try:
                    detect_landmarks(frame)
                except NoFaceError:
                    pass
        return True

    frames, fps, _count = read_driver_frames(drivers, 25.0)
    first = next(frames, None)
    if first is None:
        raise InputError(f"the driver {', '.join(map(str, drivers))} holds no frames")
    one_frame(first, 0, StageTimes(), FaceTracker(front_end.models), LandmarkFilter(front_end.filter))  # warm-up
    models.calls_ms.clear()
    tracker, smoother = FaceTracker(front_end.models), LandmarkFilter(front_end.filter)
    timed = 0
    for index, frame in enumerate(itertools.chain([first], frames)):
        if timed >= max_frames:
            break
        if not one_frame(frame, index, times, tracker, smoother):
            continue
        timed += 1
        if progress:
            progress(f"stages: frame {timed}/{max_frames}")
    if timed == 0:
        raise NoFaceError(f"no face found in any driver frame of {', '.join(map(str, drivers))}")
    times.calls_ms["face detector (model)"] = models.calls_ms["detection"]
    times.calls_ms["face mesh (model)"] = models.calls_ms["mesh"]

    records = []
    for stage in FRAME_STAGES + ONCE_STAGES:
        runs = times.calls_ms.get(stage)
        if not runs:
            continue
        per = "once per identity" if stage in ONCE_STAGES else f"per call, {timed} frames"
        if stage == "face detector (model)":
            per = f"{len(runs)} calls in {timed} frames (the tracker detects only when it loses the face)"
        entry = {"frame graph": frame_entry, "split frame graph": split_entry, "identity graph": identity_entry}.get(stage)
        records.append(LatencyRecord.from_runs(
            runs, name=f"stage: {stage}", kind="stage", graph=stage, precision="fp32" if entry else None,
            runtime=entry["runtime"] if entry else STAGE_RUNTIMES[stage],
            configuration=per, threads=threads if entry else None, artifact=entry["name"] if entry else None,
            device="host"))
    return records


def driven_frame_ms(records: list[LatencyRecord]) -> float | None:
    """Mean time of a driven frame on the main path (mesh front end, frame graph): every main-path
    stage's time summed over the timed frames, divided by their number, so the detector's few
    calls are spread over the frames they served."""
    by_stage = {r.graph: r for r in records if r.kind == "stage"}
    if "frame graph" not in by_stage:
        return None
    frames = by_stage["frame graph"].stats.count
    return sum(sum(by_stage[s].runs_ms) for s in MAIN_PATH if s in by_stage) / frames
