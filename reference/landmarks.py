"""Offline 68-point facial landmark detection.

The official code used `face_alignment`, which downloads its weights at run time and so cannot
be the default here. dlib's HOG face detector plus the 68-point shape predictor shipped inside
the `face-recognition-models` package run with no network and give landmarks in the same
68-point (iBUG 300-W) layout. Users who have landmarks from another detector pass them as
`.npy` files instead.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import BilayerError, NoFaceError


class LandmarkDetectorUnavailable(BilayerError):
    """dlib or the predictor file is not installed."""


def predictor_path() -> Path:
    """Path of `shape_predictor_68_face_landmarks.dat` inside the face-recognition-models package.

    Found without importing the package, whose `__init__` needs `pkg_resources` (gone from
    recent setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkDetectorUnavailable(
            "face-recognition-models is not installed; run `make setup` or pass landmarks as .npy files"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise LandmarkDetectorUnavailable(f"{path} is missing; reinstall face-recognition-models")
    return path


@lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
    except ImportError:
        raise LandmarkDetectorUnavailable("dlib is not installed; run `make setup` (package dlib-bin)") from None
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


def detect_landmarks(image: np.ndarray, upsample_times: int = 1) -> np.ndarray:
    """68 landmarks [68, 2] (x, y pixels, float32) of the largest face in a uint8 RGB image.

    Raises `NoFaceError` when no face is found.
    """
    detector, predictor = _dlib_models()
    faces = detector(np.ascontiguousarray(image), upsample_times)
    if len(faces) == 0:
        raise NoFaceError(
            "no face found in the image; use a photo with one clearly visible, roughly frontal face, "
            "or pass its 68 landmarks as a .npy file"
        )
    face = max(faces, key=lambda r: r.width() * r.height())
    shape = predictor(image, face)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
