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
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB
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


@pytest.mark.parametrize("name", ["source", "target"])
def test_camera_like_variants_stay_near_dlib(models, name):
    """Mirrored, turned, scaled and darker views of both photos: the whole bar, overall and
    without the jaw, holds on every one (the figures per view are in docs/driving.md)."""
    photo = load_rgb(PROJECT / "reference" / "photos" / f"{name}.jpg")
    for view, image in dq.augmented_views(photo):
        errors = dq.landmark_errors(mapped(models, image), detect_landmarks(image))
        assert errors["all"] <= NME_MAX and errors["no_jaw"] <= NME_NO_JAW_MAX, (view, errors)


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


# ---------------------------------------------------------------- effect on the frame graph
# The avatar driven through the reference frame path with the small-config default model (seeded,
# untrained: these tests measure how much its frames react to landmark differences).

# Mapped mesh landmarks against dlib's, on the same driver frame: the avatar may differ no more than
# an int8 artifact's image may differ from the reference (the loosest gate the bundle ships,
# compare.THRESHOLDS_DB). Measured 43-47 dB on this model and 39-42 dB on the paper-size one over
# both photos' views (docs/driving.md); the jaw's points in reverse order give 28 and 22 dB.
MAPPING_PSNR_FLOOR_DB = THRESHOLDS_DB["int8"]
# The filter must cut a still face's frame-to-frame image change as it cuts its landmark jitter
# (>= 3x, the bar above); measured 4.3x on this model and on the paper-size one.
FRAME_CHANGE_CUT = 3.0


@pytest.fixture(scope="module")
def source_avatar(small_model):
    photo = load_rgb(PROJECT / "reference" / "photos" / "source.jpg")
    return photo, dq.source_identity(small_model, photo, detect_landmarks(photo))


@pytest.mark.parametrize("name", ["source", "target"])
def test_mapped_landmarks_drive_nearly_the_frame_dlib_drives(models, small_model, source_avatar, name):
    _, state = source_avatar
    driver = load_rgb(PROJECT / "reference" / "photos" / f"{name}.jpg")
    dlib = detect_landmarks(driver)
    psnr = dq.driving_psnr_db(small_model, state, dlib, mapped(models, driver))
    assert np.isfinite(psnr) and psnr >= MAPPING_PSNR_FLOOR_DB, psnr
    broken = np.concatenate([dlib[16::-1], dlib[17:]])  # the jaw's points in reverse order
    assert dq.driving_psnr_db(small_model, state, dlib, broken) < MAPPING_PSNR_FLOOR_DB


def test_the_filter_steadies_the_avatar_of_a_still_face(models, small_model, source_avatar):
    photo, state = source_avatar
    tracker, smoother = FaceTracker(models), LandmarkFilter()
    raw = dq.track(dq.still_frames(photo, 30), lambda image: mapped(models, image, tracker))
    steady = np.array([smoother(points, k / 30) for k, points in enumerate(raw)])
    raw_frames, steady_frames = (dq.driven_frames(small_model, state, t) for t in (raw, steady))
    assert dq.frame_change_levels(raw_frames) / dq.frame_change_levels(steady_frames) >= FRAME_CHANGE_CUT
    assert dq.frame_change_db(steady_frames) > dq.frame_change_db(raw_frames)


def test_frame_change_is_in_grey_levels_and_db():
    still = np.linspace(-1, 1, 3 * 16, dtype=np.float32).reshape(3, 4, 4)  # a range of 2, as an image's
    brighter = still + 2 / 255  # every pixel one grey level up
    assert dq.frame_change_levels(np.stack([still, brighter])) == pytest.approx(1.0, rel=1e-5)
    assert dq.frame_change_db(np.stack([still, brighter])) == pytest.approx(20 * np.log10(255), abs=1e-3)
    assert dq.frame_change_levels(np.stack([still, brighter, brighter])) == pytest.approx(0.5, rel=1e-5)
    assert dq.frame_change_db(np.stack([still, brighter, brighter])) == np.inf  # a frozen pair
