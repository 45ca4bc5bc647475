"""Preprocessing as the official inference code does it.

- `crop_face`: a square crop of side 2*max(bbox w, h) around the landmarks' bbox centre, the
  centre moved up by size//6 (pixels outside the photo are black), resized to the model's size
  with PIL bicubic; keypoints are expressed in the crop and normalised to [-1, 1].
- `normalise_keypoints`: pixel landmarks [68, 2] in a square crop -> [136] in [-1, 1],
  interleaved (x0, y0, x1, y1, ...).
- `draw_stickmen`: the 68-point "stickman" drawing (OpenCV polylines, thickness 2, colours in
  array-channel order, canvas filled with 1), scaled to [-1, 1].
- Images are [-1, 1] float tensors [3, H, W] (`(x / 255 - 0.5) * 2`), masks [1, H, W] in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .user_files import load_npy_array, open_image

# (point indices, closed, colour) of the 68-point ("2d") stickman, in drawing order.
STICKMAN_PARTS: tuple[tuple[tuple[int, ...], bool, tuple[int, int, int]], ...] = (
    (tuple(range(0, 17)), False, (255, 255, 255)),  # jaw
    (tuple(range(17, 22)), False, (255, 0, 0)),  # brow
    (tuple(range(22, 27)), False, (0, 255, 0)),  # brow
    (tuple(range(27, 31)) + (30, 33), False, (0, 0, 255)),  # nose bridge down to the tip
    (tuple(range(31, 36)), False, (0, 0, 255)),  # nostrils
    (tuple(range(36, 42)), True, (255, 0, 255)),  # eye
    (tuple(range(42, 48)), True, (0, 255, 255)),  # eye
    (tuple(range(48, 60)), True, (255, 255, 0)),  # outer lips
    (tuple(range(60, 68)), True, (255, 255, 0)),  # inner lips
)


def draw_stickmen(keypoints: torch.Tensor, image_size: int = 256, thickness: int = 2) -> torch.Tensor:
    """Draw one stickman per keypoint row: [N, 136] in [-1, 1] -> [N, 3, S, S] in [-1, 1].

    Coordinates are computed in float32 and truncated to int32 as the official code does, so
    the drawing is pixel-identical to the official one.
    """
    kp = keypoints.detach().cpu().to(torch.float32).numpy()
    if kp.ndim != 2 or kp.shape[1] != 136:
        raise InputError(f"keypoints have shape {kp.shape}, expected [N, 136]")
    if not np.isfinite(kp).all():
        raise InputError("keypoints contain NaN or infinite values; cannot draw a stickman")
    drawings = []
    for row in kp:
        xy = ((row.reshape(-1, 2) + 1) / 2 * image_size)[None, :, None].astype(np.int32)
        canvas = np.ones((image_size, image_size, 3), np.uint8)
        for points, closed, colour in STICKMAN_PARTS:
            canvas = cv2.polylines(canvas, xy[:, list(points)], closed, colour, thickness=thickness)
        drawings.append(torch.from_numpy(canvas.transpose(2, 0, 1).astype(np.float32) / 255.0))
    return (torch.stack(drawings) - 0.5) * 2.0


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 [3, H, W] in [-1, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an 8-bit RGB image HxWx3, got dtype {image.dtype} shape {image.shape}")
    return (torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32)) / 255.0 - 0.5) * 2.0


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> uint8 HxWx3 RGB (values outside [-1, 1] are clipped for display)."""
    x = ((tensor.detach().cpu().float().clamp(-1, 1) + 1) / 2 * 255).round().byte()
    return x.permute(1, 2, 0).numpy()


def load_rgb(path: Path | str, what: str = "image") -> np.ndarray:
    """Read an 8-bit RGB image file (JPEG, PNG, ...) as uint8 HxWx3.

    Other channel layouts (greyscale, RGBA, CMYK, 16-bit) are rejected rather than guessed at:
    the model was trained on RGB photos, and an alpha channel usually means a composited image.
    Missing, empty, truncated or non-image files raise `InputError` naming the file (`what`
    says which input it is, e.g. "calibration frame").
    """
    path = Path(path)
    img = open_image(path, what, InputError)
    mode, bands = img.mode, len(img.getbands())
    if mode != "RGB":
        raise InputError(
            f"{what} {path} has mode {mode} ({bands} channel{'s' if bands != 1 else ''}); expected 8-bit RGB "
            "(3 channels). Convert it first, e.g. PIL: Image.open(p).convert('RGB').save(q)"
        )
    return np.asarray(img)


def normalise_keypoints(points: np.ndarray, crop_size: float) -> torch.Tensor:
    """Pixel landmarks [68, 2] in a crop of side `crop_size` -> [136] in [-1, 1] (x, y interleaved)."""
    points = np.asarray(points, dtype=np.float32)
    if not crop_size > 0:
        raise InputError(f"crop size must be positive, got {crop_size}")
    if points.shape != (68, 2):
        raise InputError(f"landmarks have shape {points.shape}, expected (68, 2)")
    if not np.isfinite(points).all():
        raise InputError("landmarks contain NaN or infinite values")
    return torch.from_numpy(((points / np.float32(crop_size)) - 0.5) * 2).reshape(-1)


@dataclass
class FaceCrop:
    """A face cropped and resized the official way, with its keypoints in the crop."""

    image: torch.Tensor  # [3, S, S] in [-1, 1]
    keypoints: torch.Tensor  # [136] in [-1, 1]
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the original photo


def crop_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """The official crop's box (left, top, right, bottom) in the photo for 68 landmarks: a square
    of side 2*max(bbox w, h) around the bbox centre, the centre moved up by size//6."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != (68, 2):
        raise InputError(f"landmarks have shape {landmarks.shape}, expected (68, 2)")
    if not np.isfinite(landmarks).all():
        raise InputError("landmarks contain NaN or infinite values")
    center = ((landmarks.min(0) + landmarks.max(0)) / 2).round().astype(int)
    size = int(max(np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1])))
    if size < 2:
        raise InputError("landmarks span less than 2 pixels; not a face")
    center[1] -= size // 6
    return (int(center[0] - size), int(center[1] - size), int(center[0] + size), int(center[1] + size))


def keypoints_in_crop(landmarks: np.ndarray) -> torch.Tensor:
    """A frame's keypoints [136] in its own official crop, as `crop_face` gives them (the driver
    of `infer.py` is cropped by its own landmarks, not the source's), without cropping the image."""
    box = crop_box(landmarks)
    return normalise_keypoints(np.asarray(landmarks, np.float32) - np.array(box[:2], np.float32), box[2] - box[0])


def crop_face(image: np.ndarray, landmarks: np.ndarray, image_size: int = 256) -> FaceCrop:
    """Crop a photo around its 68 landmarks as the official `infer.py` does.

    image: uint8 HxWx3 RGB of any size; landmarks: [68, 2] pixel (x, y) in that photo.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    box = crop_box(landmarks)
    center, size = np.array([box[0] + box[2], box[1] + box[3]]) // 2, (box[2] - box[0]) // 2
    crop = Image.fromarray(image).crop(box)
    side = crop.size[0]
    crop = crop.resize((image_size, image_size), Image.BICUBIC)
    keypoints = normalise_keypoints(landmarks - (center - size), side)
    return FaceCrop(image=image_to_tensor(np.asarray(crop)), keypoints=keypoints, box=box)


def load_landmarks_npy(path: Path | str) -> np.ndarray:
    """Landmarks from an official-dataset style `.npy`: [68, 2] (or [68, 3], z ignored) in pixels."""
    path = Path(path)
    points = load_npy_array(path, "keypoints", InputError)
    if points.ndim != 2 or points.shape[0] != 68 or points.shape[1] not in (2, 3):
        raise InputError(f"keypoints {path} have shape {points.shape}, expected (68, 2) pixel coordinates")
    points = points[:, :2].astype(np.float32)
    if not np.isfinite(points).all():
        raise InputError(f"keypoints {path} contain NaN or infinite values")
    return points
