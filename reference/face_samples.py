"""Real-face samples: photos -> official crops, augmented the way a user's video varies.

Used for the built-in model's standing statistics and UV calibration, for demos, and (later)
for quantization calibration. Variation comes from what changes in a selfie video: small head
rolls (image rotation), framing (crop shift and zoom), mirror images, lighting (brightness and
contrast), and head pose / expression for driving keypoints (landmark perturbations).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from .preprocessing import FaceCrop, crop_face, load_rgb

# The real face photos ship inside this package (reference/photos/, installed as
# bilayer_mobile/reference/photos/; sources and licences in photos/README.md), so they are found
# the same way in a source checkout, an editable install and a wheel.
PHOTO_NAMES: tuple[str, ...] = ("grace_hopper.jpg", "source.jpg", "target.jpg")
# The photos of the built-in default model's statistics. Explicit, never "every photo in the
# folder": a photo added to the package must not change the default model's weights.
DEFAULT_MODEL_PHOTOS: tuple[str, ...] = ("source.jpg", "target.jpg")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Photos extracted to temporary files (only when the package is not on the file system, e.g.
# imported from a zip) stay there until the interpreter exits.
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)

# Index of each point's mirror image in the 68-point layout.
FLIP_PERMUTATION = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows swap
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nostrils
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes swap
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)


@dataclass
class FacePhoto:
    """A photo and its 68 pixel landmarks."""

    image: np.ndarray  # uint8 HxWx3 RGB
    landmarks: np.ndarray  # [68, 2] float32
    name: str = ""

    def crop(self, image_size: int = 256) -> FaceCrop:
        return crop_face(self.image, self.landmarks, image_size)


@functools.cache
def photo_path(name: str) -> Path:
    """The file of the packaged photo `name` (one of `PHOTO_NAMES`, e.g. "source.jpg")."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"no packaged photo {name!r}; the packaged photos are {', '.join(PHOTO_NAMES)}")
    resource = resources.files(__package__).joinpath("photos", name)
    path = _extracted.enter_context(resources.as_file(resource))
    if not path.is_file():
        raise FileNotFoundError(f"packaged photo {name} is missing at {path} (broken installation?)")
    return path


def load_face_photo(path: Path | str, name: str = "") -> FacePhoto:
    """One image with its landmarks (from `NAME.npy` beside it, else detected)."""
    from .landmarks import detect_landmarks
    from .preprocessing import load_landmarks_npy

    path = Path(path)
    image = load_rgb(path)
    npy = path.with_suffix(".npy")
    landmarks = load_landmarks_npy(npy) if npy.is_file() else detect_landmarks(image)
    return FacePhoto(image, landmarks, name or path.stem)


def load_face_photos(photos: Sequence[str] | Path | str = DEFAULT_MODEL_PHOTOS) -> list[FacePhoto]:
    """Face photos with their landmarks, named by their file stem.

    `photos` is either a sequence of packaged photo names (`PHOTO_NAMES`; the default is the
    default model's `DEFAULT_MODEL_PHOTOS`), loaded in the order given, or a directory (a `Path`
    or `str`) of one's own photos: every image in it, sorted by name.
    """
    if isinstance(photos, str) and photos in PHOTO_NAMES:
        raise TypeError(f"load_face_photos({photos!r}) takes a directory or a sequence of photo names: "
                        f"pass ({photos!r},)")
    if isinstance(photos, (str, os.PathLike)):
        directory = Path(photos)
        paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        paths = [photo_path(name) for name in photos]
    return [load_face_photo(path) for path in paths]


def flip_photo(photo: FacePhoto) -> FacePhoto:
    """Mirror image; landmarks mirrored and re-labelled (left eye stays point 36-41)."""
    width = photo.image.shape[1]
    points = photo.landmarks.copy()
    points[:, 0] = width - 1 - points[:, 0]
    return FacePhoto(np.ascontiguousarray(photo.image[:, ::-1]), points[FLIP_PERMUTATION], photo.name + "_flip")


def rotate_photo(photo: FacePhoto, degrees: float) -> FacePhoto:
    """Roll the head: rotate the photo about the face centre (black outside, as the crop pads)."""
    centre = tuple(float(c) for c in (photo.landmarks.min(0) + photo.landmarks.max(0)) / 2)
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    h, w = photo.image.shape[:2]
    image = cv2.warpAffine(photo.image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    points = photo.landmarks @ matrix[:, :2].T + matrix[:, 2]
    return FacePhoto(image, points.astype(np.float32), f"{photo.name}_rot{degrees:+.0f}")


def reframe(crop: FaceCrop, shift: tuple[float, float], zoom: float) -> FaceCrop:
    """Move and zoom the framing of a crop (the face-tracker jitter of a video)."""
    image = crop.image.numpy().transpose(1, 2, 0)
    size = image.shape[0]
    matrix = np.array([[zoom, 0, (1 - zoom) * size / 2 + shift[0] * size],
                       [0, zoom, (1 - zoom) * size / 2 + shift[1] * size]], np.float32)
    warped = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(-1, -1, -1))
    pixels = (crop.keypoints.numpy().reshape(-1, 2) + 1) / 2 * size
    pixels = pixels @ matrix[:, :2].T + matrix[:, 2]
    keypoints = torch.from_numpy((pixels / size - 0.5) * 2).reshape(-1).float()
    return FaceCrop(torch.from_numpy(warped.transpose(2, 0, 1).copy()), keypoints, crop.box)


def augmented_crops(photos: list[FacePhoto], count: int, seed: int = 0, image_size: int = 256) -> list[FaceCrop]:
    """`count` official crops of the photos with random roll, mirror, framing and lighting."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        if rng.random() < 0.5:
            photo = flip_photo(photo)
        photo = rotate_photo(photo, float(rng.uniform(-12, 12)))
        crop = photo.crop(image_size)
        crop = reframe(crop, tuple(rng.uniform(-0.04, 0.04, 2)), float(rng.uniform(0.92, 1.08)))
        gain, offset = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.15, 0.15))
        crops.append(FaceCrop((crop.image * gain + offset).clamp(-1, 1), crop.keypoints, crop.box))
    return crops


def perturb_keypoints(keypoints: torch.Tensor, count: int, seed: int = 0, strength: float = 1.0) -> torch.Tensor:
    """Driving keypoints [count, 136] around a base pose [136]: head roll, yaw, nod, mouth and eyes.

    Yaw compresses one side of the face and shifts the nose; a nod moves the inner features
    vertically; expressions open the mouth or close the eyes. All in normalised coordinates.
    """
    rng = np.random.default_rng(seed)
    base = keypoints.detach().cpu().numpy().reshape(68, 2).astype(np.float64)
    centre = base.mean(0)
    out = []
    for _ in range(count):
        p = base - centre
        yaw = rng.uniform(-0.25, 0.25) * strength
        p[:, 0] *= 1 - yaw * np.sign(p[:, 0]) * 0.5
        p[27:36, 0] += yaw * 0.15
        nod = rng.uniform(-0.04, 0.04) * strength
        p[17:68, 1] += nod
        mouth = rng.uniform(0, 0.08) * strength
        p[[56, 57, 58, 65, 66, 67], 1] += mouth
        p[5:12, 1] += mouth * 0.5
        blink = rng.uniform(0, 1) < 0.2 * strength
        if blink:
            for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
                mid = (p[upper, 1] + p[lower, 1]) / 2
                p[upper, 1] = p[lower, 1] = mid
        angle = np.deg2rad(rng.uniform(-10, 10) * strength)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        p = p @ rot.T * (1 + rng.uniform(-0.05, 0.05) * strength) + centre + rng.uniform(-0.03, 0.03, 2) * strength
        out.append(p.reshape(-1))
    return torch.tensor(np.stack(out), dtype=torch.float32)


def driving_sequence(start: torch.Tensor, end: torch.Tensor, frames: int) -> torch.Tensor:
    """A smooth driving clip [frames, 136]: from `start` to `end` and back, with a head sway
    and the mouth opening and closing, for demos."""
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    blend = (1 - torch.cos(2 * torch.pi * t)) / 2  # 0 -> 1 -> 0
    a = start.double().reshape(68, 2)
    b = end.double().reshape(68, 2)
    out = []
    for k in range(frames):
        p = a + (b - a) * blend[k]
        centre = p.mean(0)
        angle = 0.12 * torch.sin(2 * torch.pi * t[k])
        rot = torch.tensor([[torch.cos(angle), -torch.sin(angle)], [torch.sin(angle), torch.cos(angle)]], dtype=torch.float64)
        p = (p - centre) @ rot.T + centre
        p[[56, 57, 58, 65, 66, 67], 1] += 0.06 * torch.sin(4 * torch.pi * t[k]).clamp(min=0)
        out.append(p.reshape(-1))
    return torch.stack(out).float()
