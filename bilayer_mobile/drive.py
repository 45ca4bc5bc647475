"""`bilayer-mobile drive`: an avatar driven by a video, through a bundle's graphs in their runtime.

    source photo -> face mesh -> 68 points -> official crop -> identity graph  (once)
    each driver frame -> detector/mesh (tracked) -> 68 points -> One Euro filter
                      -> keypoints in the frame's own crop -> frame graph -> image

This is the per-frame path a phone app runs, on the host, from the bundle alone: its driver
models (MediaPipe's face detectors and mesh, `driver/`) in LiteRT with the pre- and
post-processing of `reference.face_tracking`, its 468 -> 68 table and filter parameters, and its
graphs run by the runtime named on the command line. The driver's keypoints are normalised in the driver
frame's own crop, as the official `infer.py` does. A frame where no face is found keeps the last
good landmarks (counted in the summary); frames before the first face are skipped.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from bilayer_mobile.reference.errors import InputError, NoFaceError
from bilayer_mobile.reference.face_tracking import DRIVER_MODEL_NAMES, DriverModels, FaceTracker, ModelCall
from bilayer_mobile.reference.landmark_filter import LandmarkFilter, OneEuroParams
from bilayer_mobile.reference.mesh_to_ibug import Row, ibug68_from_mesh
from bilayer_mobile.reference.preprocessing import (crop_box, crop_face, draw_stickmen, keypoints_in_crop, load_rgb,
                                                    tensor_to_image)
from bilayer_mobile.runtime_bench.runner import Runner
from bilayer_mobile.runtime_bench.validate import BundleError, check_integrity, load_artifact, load_manifest

# The runtime a user names -> the bundle target whose artifacts it runs.
RUNTIME_TARGETS = {"litert": "tflite", "onnxruntime": "onnx", "executorch": "executorch"}
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STAGES = ("detection", "mesh", "mapping+filter", "frame graph", "output")


@dataclass(frozen=True)
class DriveJob:
    """What `drive` was asked to do."""

    source: Path
    drivers: tuple[Path, ...]  # one video, or image files / a folder of them
    bundle: Path
    out: Path  # .mp4 or .gif; the side-by-side is written beside it
    runtime: str = "litert"
    precision: str = "fp32"
    identity_precision: str = "fp32"
    fps: float = 25.0  # for image sequences (a video keeps its own)
    filter: OneEuroParams | None = None  # None: the bundle's (manifest `driver.filter`)
    smooth: bool = True


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over frames, and each call's milliseconds."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] += elapsed
            self.calls_ms[stage].append(elapsed * 1e3)

    def timed(self, stage: str, call: ModelCall) -> ModelCall:
        def run(x):
            with self(stage):
                return call(x)
        return run


def side_by_side_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}-side-by-side{out.suffix}")


def find_artifact(manifest: dict, graph: str, runtime: str, precision: str) -> dict:
    """The manifest entry of `graph` at `precision` for the runtime's target, or a one-line error."""
    target = RUNTIME_TARGETS[runtime]
    for artifact in manifest["artifacts"]:
        if artifact.get("graph") == graph and artifact.get("target") == target and artifact.get("precision") == precision:
            return artifact
    have = sorted({a.get("precision") for a in manifest["artifacts"] if a.get("graph") == graph and a.get("target") == target})
    if not have:
        raise BundleError(f"the bundle has no {graph} graph for {runtime} (target {target}); export it with "
                          f"`bilayer-mobile export --targets {target} --graphs identity,{graph} ...`")
    raise BundleError(f"the bundle's {graph} graph for {runtime} has no {precision} artifact (it has: {', '.join(have)}); "
                      "choose one of those precisions")


@dataclass(frozen=True)
class BundleFrontEnd:
    """What a bundle gives the driving front end: its driver models loaded in their runtime, the
    468 -> 68 table and the landmark filter's parameters."""

    models: DriverModels
    table: tuple[Row, ...]
    filter: OneEuroParams


def _model_call(runner: Runner) -> ModelCall:
    """A runner as the tracker calls a model: one input array in, the outputs in the file's order."""
    (name,) = runner.input_names
    return lambda x: list(runner.infer({name: x}).values())


def bundle_front_end(bundle: Path, manifest: dict, times: StageTimes) -> BundleFrontEnd:
    """The bundle's driver models (each checked against its manifest entry) and constants."""
    entries = {a["graph"]: a for a in manifest["artifacts"] if a.get("graph") in DRIVER_MODEL_NAMES}
    driver = manifest.get("driver")
    if len(entries) != len(DRIVER_MODEL_NAMES) or not isinstance(driver, dict):
        raise BundleError(f"the bundle {bundle} has no driver models (face detectors and mesh under driver/); export "
                          "it again with this version of `bilayer-mobile export` (without --no-driver-models)")
    check_integrity(bundle, {"artifacts": list(entries.values()), "golden": manifest["golden"]})
    calls = {}
    for name, entry in entries.items():
        calls[name] = _model_call(load_artifact(bundle, entry))
    short, full, mesh = (calls[name] for name in DRIVER_MODEL_NAMES)
    try:
        table = tuple(tuple((int(v), float(w)) for v, w in row) for row in driver["ibug68"]["rows"])
        params = OneEuroParams(**{f.name: float(driver["filter"][f.name]) for f in fields(OneEuroParams)})
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"the bundle's manifest has a damaged `driver` section ({type(exc).__name__}: {exc}); "
                          "re-run `bilayer-mobile export`") from None
    if len(table) != 68:
        raise BundleError(f"the bundle's 468 -> 68 table has {len(table)} rows, not 68; re-run `bilayer-mobile export`")
    models = DriverModels(times.timed("detection", short), times.timed("detection", full), times.timed("mesh", mesh))
    return BundleFrontEnd(models, table, params)


def read_driver_frames(paths: tuple[Path, ...], fps: float) -> tuple[Iterator[np.ndarray], float, int | None]:
    """(frames as uint8 RGB, frames per second, frame count when known) of a video or images."""
    import imageio.v3 as iio

    if len(paths) == 1 and paths[0].is_dir():
        paths = tuple(sorted(p for p in paths[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        if not paths:
            raise InputError(f"driver folder {paths} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in paths:
        if not path.is_file():
            raise InputError(f"driver {path} does not exist")
    if len(paths) == 1 and paths[0].suffix.lower() in VIDEO_SUFFIXES:
        path = paths[0]
        try:
            meta = iio.immeta(path, plugin="FFMPEG")
        except Exception as exc:
            raise InputError(f"cannot read driver video {path}: {' '.join(str(exc).split())[:200]}; "
                             "give an mp4/mov/webm video or image files") from None
        count = meta.get("nframes")
        if not (isinstance(count, (int, float)) and np.isfinite(count)):  # ffmpeg often reports inf
            duration, rate = meta.get("duration"), meta.get("fps")
            count = round(duration * rate) if duration and rate else None
        count = int(count) if count else None

        def video() -> Iterator[np.ndarray]:
            try:
                for frame in iio.imiter(path, plugin="FFMPEG"):
                    yield np.ascontiguousarray(frame[..., :3])
            except Exception as exc:
                raise InputError(f"driver video {path} is damaged: {' '.join(str(exc).split())[:200]}") from None

        return video(), float(meta.get("fps") or fps), count
    return (load_rgb(p, what="driver frame") for p in paths), fps, len(paths)


def _landmarks(tracker: FaceTracker, image: np.ndarray, table: tuple[Row, ...]) -> np.ndarray | None:
    face = tracker(image)
    return None if face is None else ibug68_from_mesh(face.mesh, table)


def _driver_view(image: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The driver frame's official crop at the model's size, its landmarks drawn on it."""
    box = crop_box(landmarks)
    scale = size / (box[2] - box[0])
    m = np.array([[scale, 0, -box[0] * scale], [0, scale, -box[1] * scale]], np.float64)
    view = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
    for x, y in (landmarks - np.array(box[:2])) * scale:
        cv2.circle(view, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1, lineType=cv2.LINE_AA)
    return view


@contextmanager
def _written_atomically(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary files beside `paths` (same suffixes) that replace them only if the block succeeds."""
    temps = []
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        temps.append(Path(name))
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield temps
        for temp, path in zip(temps, paths):
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes files private; these are ordinary outputs
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio
    import imageio.v3 as iio

    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)
        return
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", quality=7, macro_block_size=16,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame)


def run_drive(job: DriveJob, progress=None) -> dict:
    """Drive the bundle's avatar of `job.source` by `job.drivers`; write the videos; return a summary."""
    if job.runtime not in RUNTIME_TARGETS:
        raise InputError(f"--runtime {job.runtime!r} is not one of {', '.join(RUNTIME_TARGETS)}")
    if job.out.suffix.lower() not in (".mp4", ".gif"):
        raise InputError(f"--out {job.out} must end in .mp4 or .gif")
    if not job.source.is_file():
        raise InputError(f"source image {job.source} does not exist")
    source = load_rgb(job.source, what="source image")
    manifest = load_manifest(job.bundle)
    identity = find_artifact(manifest, "identity", job.runtime, job.identity_precision)
    frame_graph = find_artifact(manifest, "frame", job.runtime, job.precision)
    size = int(manifest.get("preprocessing", {}).get("image_size", 256))
    frames, fps, count = read_driver_frames(job.drivers, job.fps)

    times = StageTimes()
    front_end = bundle_front_end(job.bundle, manifest, times)
    models = front_end.models

    source_points = _landmarks(FaceTracker(models, track=False), source, front_end.table)
    if source_points is None:
        raise NoFaceError(f"no face found in the source image {job.source}; use a photo with one clearly visible, "
                          "roughly frontal face")
    face = crop_face(source, source_points, size)
    identity_runner = load_artifact(job.bundle, identity)
    state = identity_runner.infer({"source_image": face.image[None].numpy(),
                                   "source_stickman": draw_stickmen(face.keypoints[None], size).numpy(),
                                   "source_keypoints": face.keypoints[None].numpy(),
                                   "source_mask": np.ones((1, 1, size, size), np.float32)})
    frame_runner = load_artifact(job.bundle, frame_graph)

    tracker, smoother = FaceTracker(models), LandmarkFilter(job.filter or front_end.filter)
    avatar, side_by_side = [], []
    last, lost, skipped, total = None, 0, 0, 0
    for index, image in enumerate(frames):
        total += 1
        points = _landmarks(tracker, image, front_end.table)
        with times("mapping+filter"):
            if points is None:
                if last is None:
                    skipped += 1
                    continue
                lost += 1
                points = last
            else:
                points = smoother(points, index / fps) if job.smooth else points
                last = points
            keypoints = keypoints_in_crop(points)
        with times("frame graph"):
            out = frame_runner.infer({"keypoints": keypoints[None].numpy(), "texture": state["texture"],
                                      "adaptive_params": state["adaptive_params"]})
        with times("output"):
            picture = tensor_to_image(torch.from_numpy(np.asarray(out["image"])[0]))
            avatar.append(picture)
            side_by_side.append(np.concatenate([_driver_view(image, points, size), picture], axis=1))
        if progress:
            progress(total, max(count or 0, total))
    if not avatar:
        raise NoFaceError(f"no face found in any of the {total} driver frames; use a video of one clearly visible face")
    with times("output"), _written_atomically([job.out, side_by_side_path(job.out)]) as (temp_avatar, temp_side):
        _write_video(temp_avatar, avatar, fps)
        _write_video(temp_side, side_by_side, fps)
    return {"frames": total, "written": len(avatar), "no_face_kept_last": lost, "no_face_skipped": skipped,
            "fps": fps, "identity": identity["name"], "frame_graph": frame_graph["name"],
            "runtime": frame_runner.runtime, "seconds": {stage: times.seconds.get(stage, 0.0) for stage in STAGES},
            "outputs": [str(job.out), str(side_by_side_path(job.out))]}


def print_summary(summary: dict, stream=None) -> None:
    """The per-stage times and the frame counts, a few lines, on `stream` (standard error by default)."""
    stream = stream or sys.stderr  # looked up per call: a default bound at import outlives a redirected stderr
    n = max(summary["written"], 1)
    print(f"drove {summary['written']}/{summary['frames']} frames with {summary['frame_graph']} in {summary['runtime']} "
          f"(identity: {summary['identity']}); frames without a face: {summary['no_face_kept_last']} kept the last "
          f"landmarks, {summary['no_face_skipped']} skipped before the first face", file=stream)
    print("per frame: " + ", ".join(f"{stage} {summary['seconds'][stage] / n * 1e3:.1f} ms" for stage in STAGES)
          + " (output: side by side and encoding)", file=stream)
