"""The driving front end's models in the bundle: MediaPipe's face detectors and face mesh, as published.

An app that drives the avatar needs 68 landmarks per camera frame. The bundle carries the three
models that produce them (`reference.face_tracking`: BlazeFace short range, its full-range
fallback, Face Mesh) byte for byte as Google publishes them (never converted, so the manifest
records their sha256 beside the published file's), and everything an app must do around them:
the detector's anchors, decoding and thresholds, the face region, the mesh's input, the
468 -> 68 table and the landmark filter's parameters (`driver_manifest`).

Each model is a named component with its declared contract (input and output tensors by the
file's own names, as the interpreter addresses a model without a signature) and golden vectors
made from the packaged real photos: the detector inputs of each photo, the mesh input of each
photo's detected face region, and the outputs of LiteRT's reference kernels (plain C++ loops, no
XNNPACK). There is no PyTorch reference of these networks, so those kernels are the reference;
validation runs the models in the interpreter's default CPU path and on the GPU accelerator
and gates them on those outputs like every other artifact.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..reference.face_samples import PHOTO_NAMES, photo_path
from ..reference.face_tracking import (FACE_MESH, FULL_RANGE_DETECTOR, MODEL_LICENCE, SHORT_RANGE_DETECTOR, DetectorSpec,
                                       DriverModels, FaceTracker, detector_input, driver_model_dir, litert_model,
                                       mesh_input)
from ..reference.files import sha256_file
from ..reference.landmark_filter import OneEuroParams
from ..reference.mesh_to_ibug import table_for_manifest
from ..reference.preprocessing import load_rgb

DRIVER_DIR = "driver"
GOLDEN_PHOTOS = PHOTO_NAMES  # every packaged photo: two close-up selfies and a studio portrait


def _tensor(name: str, shape: tuple[int, ...], kind: str, description: str, rng=None, gated: bool = False) -> dict:
    """A contract entry of the same form as the graphs' (`export.graphs.TensorSpec.as_dict`)."""
    return {"name": name, "shape": list(shape), "kind": kind, "description": description,
            "range": None if rng is None else list(rng), "dtype": "float32", "gated": gated}


@dataclass(frozen=True)
class DriverComponent:
    """One published model of the front end: its spec (`reference.face_tracking`), what it is
    for, and its boundary under the tensor names of the published file."""

    spec: object  # DetectorSpec | MeshSpec
    purpose: str
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def file(self) -> str:
        return f"{DRIVER_DIR}/{self.spec.file}"


def _detector(spec: DetectorSpec, regressors: str, scores: str, purpose: str) -> DriverComponent:
    size, anchors = spec.input_size, spec.anchor_count
    return DriverComponent(spec, purpose, (
        _tensor("input", (1, size, size, 3), "image",
                f"RGB, the frame letterboxed to {size}x{size} (aspect kept, black bars), (uint8 / 127.5) - 1", (-1, 1)),
    ), (
        _tensor(regressors, (1, anchors, 16), "detections",
                "per anchor: box centre offset x, y, width, height, then 6 keypoints x, y, in input pixels relative "
                "to the anchor centre", gated=True),
        _tensor(scores, (1, anchors, 1), "scores", "per anchor: face score logit (sigmoid, threshold)", gated=True),
    ))


COMPONENTS = (
    _detector(SHORT_RANGE_DETECTOR, "regressors", "classificators",
              "face detector for faces within ~2 m (BlazeFace short range); runs on the first frame and when the "
              "mesh loses the face"),
    _detector(FULL_RANGE_DETECTOR, "reshaped_regressor_face_4", "reshaped_classifier_face_4",
              "face detector for small faces (BlazeFace full range): the fallback when the short-range one finds none"),
    DriverComponent(FACE_MESH, "468 face landmarks in the face region (Face Mesh)", (
        _tensor("input_1", (1, FACE_MESH.input_size, FACE_MESH.input_size, 3), "image",
                "RGB, the face region warped upright to 192x192, uint8 / 255", (0, 1)),
    ), (
        _tensor("conv2d_20", (1, 1, 1, FACE_MESH.landmark_count * 3), "landmarks",
                "468 x (x, y, z) in input pixels (z: depth on the same scale)", gated=True),
        # reported, not gated: one scalar per sample has no range to take a PSNR peak from (its
        # max_abs is in the report); the landmarks are what the frames are driven by
        _tensor("conv2d_30", (1, 1, 1, 1), "scores", "face presence logit (sigmoid, threshold)"),
    )),
)


def golden_feeds(models: DriverModels) -> dict[str, list[np.ndarray]]:
    """Each component's golden inputs from the packaged photos: the detectors' letterboxed photo,
    the mesh's crop of the face region detected in it (found with `models`)."""
    feeds = {c.name: [] for c in COMPONENTS}
    tracker = FaceTracker(models, track=False)
    for name in GOLDEN_PHOTOS:
        photo = load_rgb(photo_path(name))
        for spec in (SHORT_RANGE_DETECTOR, FULL_RANGE_DETECTOR):
            feeds[spec.name].append(detector_input(photo, spec)[0])
        face = tracker(photo)
        if face is None:
            raise RuntimeError(f"the published detector finds no face in the packaged photo {name}")
        feeds[FACE_MESH.name].append(mesh_input(photo, face.region))
    return feeds


def write_driver_models(directory: Path) -> tuple[list[dict], dict[str, dict], dict]:
    """Copy the published models into `directory`/driver, write their golden vectors; return
    their artifact entries, the golden files' entries and the manifest's `driver` section."""
    published = driver_model_dir()
    calls = {c.name: litert_model(published / c.spec.file, reference_kernels=True) for c in COMPONENTS}
    feeds = golden_feeds(DriverModels(*calls.values()))  # COMPONENTS is in DriverModels' order
    artifacts, golden = [], {}
    for component in COMPONENTS:
        source = published / component.spec.file
        target = directory / component.file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        arrays = {component.inputs[0]["name"]: np.stack(feeds[component.name]).astype(np.float32)}
        outputs = [calls[component.name](x) for x in feeds[component.name]]
        for k, spec in enumerate(component.outputs):  # the interpreter returns them in the file's output order
            arrays[spec["name"]] = np.stack([o[k] for o in outputs]).astype(np.float32)
        golden_file = f"golden/{component.name}.npz"
        (directory / golden_file).parent.mkdir(parents=True, exist_ok=True)
        np.savez(directory / golden_file, **arrays)
        golden[golden_file] = {"sha256": sha256_file(directory / golden_file), "samples": len(outputs),
                               "photos": list(GOLDEN_PHOTOS), "reference": "LiteRT reference kernels (BUILTIN_REF)"}
        artifacts.append({
            "name": component.name, "graph": component.name, "target": "mediapipe", "runtime": "litert",
            "precision": "fp32", "file": component.file, "sha256": sha256_file(target),
            "size_bytes": target.stat().st_size, "inputs": list(component.inputs), "outputs": list(component.outputs),
            "golden": golden_file, "published": True,
            "notes": ["as published by Google MediaPipe (unconverted; float32 compute, weights as stored in the file)"],
        })
    return artifacts, golden, driver_manifest()


def driver_graphs() -> dict[str, dict]:
    """The driver models' contracts for the manifest's `graphs`, beside the avatar graphs'."""
    return {c.name: {"purpose": c.purpose, "inputs": list(c.inputs), "outputs": list(c.outputs)} for c in COMPONENTS}


def driver_manifest() -> dict:
    """What an app does around the driver models, as constants: the steps in order, the
    detectors' anchors and thresholds, the face region, the mesh's input, the 468 -> 68 table,
    the landmark filter and the keypoints' normalisation for the frame graph."""
    return {
        "licence": MODEL_LICENCE,
        "models": {c.name: {"file": c.file, "purpose": c.purpose} for c in COMPONENTS},
        "steps": [
            "first frame (or face lost): short-range detector on the letterboxed frame; none found: full-range one",
            "decode: anchor centre + offset / input size; score = sigmoid(clip(logit, +-raw_score_clip)); keep score > "
            "score_threshold; "
            "weighted non-maximum suppression (overlapping boxes averaged, weighted by score)",
            "face region: the box squared on its long side x region_scale, centred on the box, turned so that the "
            "detector's two eye keypoints are level",
            "mesh: the region warped upright to the mesh's input (bilinear, black outside), landmarks mapped back",
            "next frame: the region from the last mesh (its box x region_scale, eye corners level); mesh presence "
            "below its threshold: detect again",
            "468 -> 68 by the ibug68 table; One Euro filter per coordinate; normalise in the frame's own crop",
        ],
        "detectors": {spec.name: {**dataclasses.asdict(spec), "anchor_size": "fixed 1x1: only the centres are used",
                                  "anchor_centres": "cells in row-major order, (column + 0.5) / cells, "
                                                    "(row + 0.5) / cells; anchors_per_cell consecutive copies",
                                  "letterbox": "the frame centred in a black square of side max(height, width), resized to "
                                               "input_size (area when shrinking, else bilinear)"}
                      for spec in (SHORT_RANGE_DETECTOR, FULL_RANGE_DETECTOR)},
        "mesh": {**dataclasses.asdict(FACE_MESH), "input": "RGB uint8 / 255 of the upright region",
                 "coordinates": "pixel-centre based: pixel (0, 0) covers [-0.5, 0.5)"},
        "ibug68": table_for_manifest(),
        "filter": OneEuroParams().to_manifest(),
        "keypoints": "the 68 points normalised in the frame's own official crop (preprocessing.crop), as the "
                     "official infer.py normalises its target images",
    }
