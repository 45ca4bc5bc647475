"""The driving front end: anchors, decoding, NMS and region geometry on hand-made values, and the
published models on the packaged photos."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bilayer_mobile.reference import face_tracking as ft
from bilayer_mobile.reference.landmarks import detect_landmarks
from bilayer_mobile.reference.preprocessing import load_rgb
from tests.conftest import PROJECT

PHOTO_DIR = PROJECT / "reference" / "photos"


def test_anchor_layouts_match_the_models_outputs():
    assert ft.SHORT_RANGE_DETECTOR.anchor_count == 896 == len(ft.anchor_centres(ft.SHORT_RANGE_DETECTOR))
    assert ft.FULL_RANGE_DETECTOR.anchor_count == 2304 == len(ft.anchor_centres(ft.FULL_RANGE_DETECTOR))
    centres = ft.anchor_centres(ft.SHORT_RANGE_DETECTOR)
    assert np.allclose(centres[0], [1 / 32, 1 / 32]) and np.allclose(centres[1], centres[0])  # 2 per cell
    assert np.allclose(centres[512], [1 / 16, 1 / 16])  # the 8x8 layer starts after 16*16*2


def test_a_planted_box_decodes_to_its_place_and_overlaps_merge():
    spec = ft.SHORT_RANGE_DETECTOR
    regressors = np.zeros((1, 896, 16), np.float32)
    scores = np.full((1, 896, 1), -20.0, np.float32)
    anchor = 512 + 6 * (3 * 8 + 4)  # 8x8 layer, row 3, column 4: centre (4.5/8, 3.5/8)
    for k, shift in ((anchor, 0.0), (anchor + 1, 2.0)):  # two overlapping boxes, the second 2 px right
        regressors[0, k, :4] = [shift, 0.0, 32.0, 40.0]
        scores[0, k] = 3.0 if k == anchor else 1.0
    (values, score), = ft.decode_detections(regressors, scores, spec)
    w_best, w_other = 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(-1.0))
    cx = 4.5 / 8 + (2.0 / 128) * w_other / (w_best + w_other)  # score-weighted mean of the two centres
    assert score == pytest.approx(w_best)
    np.testing.assert_allclose(values[:4], [cx - 0.125, 3.5 / 8 - 40 / 256, cx + 0.125, 3.5 / 8 + 40 / 256], atol=1e-6)


def test_separate_boxes_are_kept_apart():
    boxes = np.array([[0, 0, 0.2, 0.2] + [0] * 12, [0.5, 0.5, 0.8, 0.8] + [0] * 12], np.float64)
    merged = ft.weighted_nms(boxes, np.array([0.9, 0.8]), 0.3)
    assert [round(s, 2) for _, s in merged] == [0.9, 0.8]


def test_a_region_maps_photo_points_to_the_crop_and_back():
    region = ft.FaceRegion(centre=np.array([300.0, 200.0]), side=150.0, rotation=0.3)
    points = np.array([[300.0, 200.0], [310.0, 180.0], [250.5, 260.25]])
    m = region.crop_matrix(192)
    crop = (points + 0.5) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(crop[0], [96, 96], atol=1e-9)
    np.testing.assert_allclose(region.to_photo(crop, 192), points, atol=1e-9)
    # the rotation levels a line at the region's angle
    tilted = np.array([[0.0, 0.0], [math.cos(0.3), math.sin(0.3)]]) * 50 + region.centre
    local = region.expressed_in(tilted)
    assert abs(local[1, 1] - local[0, 1]) < 1e-9


@pytest.fixture(scope="module")
def models():
    return ft.DriverModels.published()


@pytest.mark.parametrize("name", ["source", "target", "grace_hopper"])
def test_the_mesh_lands_on_the_face_dlib_finds(models, name):
    image = load_rgb(PHOTO_DIR / f"{name}.jpg")
    face = ft.FaceTracker(models)(image)
    dlib = detect_landmarks(image)
    iod = np.linalg.norm(dlib[36:42].mean(0) - dlib[42:48].mean(0))
    assert face is not None and face.detected and face.presence > 0.9
    # eye corners and mouth corners: mesh vertices that are iBUG points by definition
    for mesh_index, ibug_index in ((33, 36), (263, 45), (61, 48), (291, 54)):
        assert np.linalg.norm(face.mesh[mesh_index, :2] - dlib[ibug_index]) < 0.12 * iod


def test_tracking_reuses_the_region_and_a_blank_frame_has_no_face(models):
    image = load_rgb(PHOTO_DIR / "source.jpg")
    tracker = ft.FaceTracker(models)
    first, second = tracker(image), tracker(image)
    assert first.detected and not second.detected
    assert tracker(np.full((480, 640, 3), 128, np.uint8)) is None
    assert tracker(image).detected  # lost, so detected afresh


def test_reference_kernels_agree_with_the_default_ones():
    folder = ft.driver_model_dir()
    x = ft.mesh_input(load_rgb(PHOTO_DIR / "grace_hopper.jpg"),
                      ft.FaceRegion(centre=np.array([267.0, 242.0]), side=295.0, rotation=-0.08))
    fast = ft.litert_model(folder / ft.FACE_MESH.file)(x)
    exact = ft.litert_model(folder / ft.FACE_MESH.file, reference_kernels=True)(x)
    for a, b in zip(fast, exact):
        np.testing.assert_allclose(a, b, atol=2e-3 * max(1.0, np.abs(b).max()))


def test_frames_of_the_wrong_kind_are_refused(models):
    with pytest.raises(ft.InputError, match="8-bit RGB"):
        ft.FaceTracker(models)(np.zeros((64, 64), np.uint8))
