"""The One Euro filter: steady on a still face, close behind a moving one, refuses bad input."""
from __future__ import annotations

import numpy as np
import pytest

from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.reference.landmark_filter import LandmarkFilter, OneEuroParams, inter_ocular_distance

FPS = 30.0


def face(offset=(0.0, 0.0)) -> np.ndarray:
    rng = np.random.default_rng(7)
    points = rng.uniform(-50, 50, (68, 2)) + 200
    points[36:42], points[42:48] = [150, 200], [250, 200]  # eye centres 100 px apart
    return points + np.asarray(offset)


def test_the_first_frame_passes_and_a_still_face_stays():
    f = LandmarkFilter()
    np.testing.assert_allclose(f(face(), 0.0), face(), rtol=1e-6)
    for k in range(1, 10):
        out = f(face(), k / FPS)
    np.testing.assert_allclose(out, face(), rtol=1e-6)
    assert inter_ocular_distance(face()) == pytest.approx(100.0)


def test_noise_on_a_still_face_is_cut_several_times():
    rng = np.random.default_rng(1)
    f = LandmarkFilter()
    raw = [face() + rng.normal(0, 1.0, (68, 2)) for _ in range(90)]
    out = np.array([f(x, k / FPS) for k, x in enumerate(raw)])
    jitter_raw = np.linalg.norm(np.diff(np.array(raw), axis=0), axis=2).mean()
    jitter_out = np.linalg.norm(np.diff(out[30:], axis=0), axis=2).mean()
    assert jitter_raw / jitter_out > 3


def test_a_fast_move_is_followed_with_little_lag():
    f = LandmarkFilter()
    for k in range(30):
        f(face(), k / FPS)
    # the head moves 1 IOD per second to the right
    lags = []
    for k in range(30, 60):
        x = 100.0 * (k - 29) / FPS
        out = f(face((x, 0.0)), k / FPS)
        lags.append((x - (out[:, 0] - face()[:, 0]).mean()) / (100.0 / FPS))
    assert max(lags[10:]) < 1.0  # less than a frame behind once moving


def test_bad_input_is_refused():
    f = LandmarkFilter()
    with pytest.raises(InputError, match="68, 2"):
        f(np.zeros((5, 2)), 0.0)
    f(face(), 1.0)
    with pytest.raises(InputError, match="increase"):
        f(face(), 1.0)
    with pytest.raises(InputError, match="positive"):
        OneEuroParams(min_cutoff_hz=0)
