"""How good the driving front end is: landmark error against dlib, still-face jitter, lag.

- `landmark_errors`: normalised mean error (NME, by the reference's inter-ocular distance) of
  mapped mesh landmarks against dlib's, per region (`mesh_to_ibug.REGIONS`), overall and
  without the jaw. dlib is not ground truth, it is the front end the project had; agreeing with
  it within a few percent says the mapping is the same layout.
- `augmented_views`: a photo and the variants the comparison also runs on (mirrored, turned by
  a few degrees, scaled, darker), as a camera would give them.
- `still_frames`: frames of one photo as a sensor sees a still face: fresh noise each frame and,
  optionally, a known sub-pixel shift (camera shake; real motion the filter should follow, so
  the still-face figure is measured without it). Landmarks are put back in the photo's
  coordinates, so any motion left between frames is jitter.
- `moving_frames`: the photo moved smoothly (translation and a small turn), with the motion
  known, for the filter's lag.
- `jitter_px`: mean landmark displacement between consecutive frames, in pixels of the model's
  256 px face crop (the official crop is 2x the landmarks' box, so 256 px = 2x the face).
- `lag_frames`: by how many frames one landmark track trails another (the sub-frame shift
  that best aligns them).
- `source_identity`, `driven_frames`: the avatar itself, run by the PyTorch reference: a source
  photo's identity state, and the frames a landmark track drives, as `bilayer-mobile drive` makes
  them (each frame's keypoints in its own official crop).
- `driving_psnr_db`: how far the frame driven by one set of landmarks is from the frame driven by
  another (the image-level effect of a front end's landmark differences).
- `frame_change_db`, `frame_change_levels`: how much the avatar changes between consecutive
  frames (of a still face: the image-level jitter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from ..reference.landmark_filter import inter_ocular_distance
from ..reference.mesh_to_ibug import REGIONS
from ..reference.model import BilayerModel, IdentityState
from ..reference.preprocessing import crop_face, keypoints_in_crop
from .compare import psnr_db

MODEL_CROP_PX = 256


def landmark_errors(points: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """NME in percent of the reference's inter-ocular distance: per region, "all", "no_jaw"."""
    error = np.linalg.norm(np.asarray(points, np.float64) - reference, axis=1) / inter_ocular_distance(reference) * 100
    figures = {name: float(error[list(indices)].mean()) for name, indices in REGIONS.items()}
    figures["all"] = float(error.mean())
    figures["no_jaw"] = float(error[17:].mean())
    return figures


def _affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, size or (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def augmented_views(image: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(name, image) of a photo and its camera-like variants."""
    h, w = image.shape[:2]
    yield "original", image
    yield "mirrored", np.ascontiguousarray(image[:, ::-1])
    for degrees in (-8, 8):
        yield f"turned {degrees:+d} deg", _affine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0))
    for scale in (0.8, 1.25):
        yield f"scaled x{scale}", _affine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 0, scale))
    yield "darker", (image.astype(np.float32) * 0.6).astype(np.uint8)


@dataclass(frozen=True)
class Frame:
    """A generated frame and the affine (2x3) that maps the photo's pixels to it."""

    image: np.ndarray
    photo_to_frame: np.ndarray

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Frame pixel positions -> the photo's."""
        inverse = cv2.invertAffineTransform(self.photo_to_frame)
        return points @ inverse[:, :2].T + inverse[:, 2]


def still_frames(image: np.ndarray, count: int = 30, noise_levels: float = 3.0, shift_px: float = 0.0,
                 seed: int = 0) -> list[Frame]:
    """A still face as a camera records it: per frame, Gaussian sensor noise (`noise_levels`
    grey levels) and, when `shift_px` > 0, a random shift of the image up to that many pixels."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        dx, dy = rng.uniform(-shift_px, shift_px, 2)
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        moved = _affine(image, m).astype(np.float32) + rng.normal(0, noise_levels, image.shape)
        frames.append(Frame(np.clip(moved, 0, 255).astype(np.uint8), m))
    return frames


def moving_frames(image: np.ndarray, centre: np.ndarray, face_px: float, count: int = 60, fps: float = 30.0,
                  amplitude_faces: float = 0.25, period_s: float = 2.0, turn_degrees: float = 6.0) -> list[Frame]:
    """The face moving smoothly: a sideways and up-down sway of `amplitude_faces` face sizes and a
    turn of the head in the image plane, one `period_s` cycle, as a driving clip."""
    h, w = image.shape[:2]
    frames = []
    for k in range(count):
        phase = 2 * np.pi * k / (fps * period_s)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), turn_degrees * np.sin(phase), 1.0)
        m[0, 2] += amplitude_faces * face_px * np.sin(phase)
        m[1, 2] += 0.5 * amplitude_faces * face_px * np.sin(2 * phase)
        frames.append(Frame(_affine(image, m, (w, h)), m))
    return frames


def crop_scale(landmarks: np.ndarray) -> float:
    """Pixels of the model's 256 px crop per photo pixel (the official crop: 2x the landmarks' box)."""
    side = 2 * float(max(np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1])))
    return MODEL_CROP_PX / side


def jitter_px(track: np.ndarray, scale: float) -> float:
    """Mean displacement of the landmarks between consecutive frames ([T, 68, 2] photo pixels),
    in pixels of the 256 px crop."""
    return float(np.linalg.norm(np.diff(track, axis=0), axis=2).mean() * scale)


def lag_frames(follower: np.ndarray, leader: np.ndarray, max_lag: float = 4.0, step: float = 0.05) -> float:
    """The delay (frames) that best aligns `follower` with `leader` (both [T, 68, 2]): the shift
    d minimising the mean distance between follower(t) and leader(t - d), sub-frame by linear
    interpolation."""
    t = np.arange(len(leader), dtype=np.float64)
    start = int(np.ceil(max_lag)) + 1
    best, best_cost = 0.0, np.inf
    for d in np.arange(0.0, max_lag + step / 2, step):
        shifted = np.stack([np.stack([np.interp(t[start:] - d, t, leader[:, i, j]) for j in range(2)], -1)
                            for i in range(leader.shape[1])], 1)
        cost = np.linalg.norm(follower[start:] - shifted, axis=2).mean()
        if cost < best_cost:
            best, best_cost = float(d), cost
    return best


def track(frames: list[Frame], landmarks_of: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
    """Landmarks of every frame in the photo's coordinates [T, 68, 2] (a frame with none keeps
    the previous frame's)."""
    out, last = [], None
    for frame in frames:
        points = landmarks_of(frame.image)
        last = frame.to_photo(points) if points is not None else last
        if last is None:
            raise ValueError("no face in the first frame")
        out.append(last)
    return np.array(out)


def source_identity(model: BilayerModel, photo: np.ndarray, landmarks: np.ndarray) -> IdentityState:
    """The identity state of a source photo, cropped the official way around its 68 `landmarks`
    (photo pixels) with an all-ones mask and the stickman drawn from the crop's keypoints, as
    `drive` feeds the identity graph; the state carries the enhanced texture when the model has
    an enhancer, which the frames then use (as the identity graph's texture output)."""
    face = crop_face(photo, landmarks, model.config.image_size)
    return model.init_identity(face.image[None], face.keypoints[None])


def driven_frames(model: BilayerModel, state: IdentityState, landmarks: np.ndarray, batch: int = 8) -> np.ndarray:
    """The avatar frames [T, 3, H, W] (float32 in [-1, 1]) that a landmark track [T, 68, 2]
    (pixels of the driver frames) drives: each frame's landmarks normalised in that frame's own
    official crop (`keypoints_in_crop`), rendered by the reference's frame path (low-frequency
    image + texture warped by the UV field, what the frame graph computes) and clipped to
    [-1, 1] as for display, before the rounding to 8 bits (so sub-level changes still count)."""
    keypoints = torch.stack([keypoints_in_crop(points) for points in np.asarray(landmarks, np.float32)])
    images = [model.render(state, keypoints[k : k + batch]).image.clamp(-1, 1) for k in range(0, len(keypoints), batch)]
    return torch.cat(images).numpy()


def driving_psnr_db(model: BilayerModel, state: IdentityState, reference: np.ndarray, landmarks: np.ndarray) -> float:
    """PSNR (dB, `compare.psnr_db`: peak from the reference frame's range) of the frame that
    `landmarks` [68, 2] drive against the frame that `reference` landmarks of the same driver
    frame drive: what a front end's landmark differences (e.g. mapped mesh against dlib) do to
    the avatar's image. inf when both give the same frame."""
    frames = driven_frames(model, state, np.stack([reference, landmarks]))
    return psnr_db(frames[0], frames[1])


def frame_change_db(frames: np.ndarray) -> float:
    """Mean PSNR (dB) between consecutive frames [T, 3, H, W] (each frame the reference of the
    next): high when the avatar barely changes from frame to frame, as a still face's avatar
    should; inf when any pair is identical (a frozen frame)."""
    return float(np.mean([psnr_db(a, b) for a, b in zip(frames[:-1], frames[1:])]))


def frame_change_levels(frames: np.ndarray) -> float:
    """Mean absolute change of the pixel values between consecutive frames [T, 3, H, W] in
    [-1, 1], in 8-bit grey levels (1 level = 2 / 255): the image-level jitter in the units a
    viewer sees."""
    return float(np.abs(np.diff(np.asarray(frames, np.float64), axis=0)).mean() * 255 / 2)
