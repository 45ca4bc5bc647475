"""The driver models in the bundle: MediaPipe's files as published, their contracts, golden
vectors of real faces, and the constants an app applies around them."""
from __future__ import annotations

import numpy as np
import pytest

from bilayer_mobile.export import driver_models as dm
from bilayer_mobile.reference.face_samples import photo_path
from bilayer_mobile.reference.face_tracking import (FACE_MESH, SHORT_RANGE_DETECTOR, decode_detections,
                                                    driver_model_dir, mesh_from_outputs)
from bilayer_mobile.reference.files import sha256_file
from bilayer_mobile.reference.landmark_filter import OneEuroParams, inter_ocular_distance
from bilayer_mobile.reference.landmarks import detect_landmarks
from bilayer_mobile.reference.mesh_to_ibug import MESH_TO_IBUG, ibug68_from_mesh
from bilayer_mobile.reference.preprocessing import load_rgb
from bilayer_mobile.runtime_bench.runners import make_runner


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("driver-bundle")
    artifacts, golden, manifest = dm.write_driver_models(directory)
    return directory, {a["name"]: a for a in artifacts}, golden, manifest


def test_the_models_are_the_published_files_with_their_own_contracts(written):
    directory, artifacts, golden, _ = written
    assert list(artifacts) == ["face_detector_short_range", "face_detector_full_range", "face_mesh"]
    for component in dm.COMPONENTS:
        entry = artifacts[component.name]
        published = driver_model_dir() / component.spec.file
        assert entry["sha256"] == sha256_file(directory / entry["file"]) == sha256_file(published)
        assert entry["file"].startswith("driver/") and entry["runtime"] == "litert" and entry["published"]
        runner = make_runner("litert", directory / entry["file"])
        assert runner.check_contract(entry["inputs"], entry["outputs"]) == []
        assert any(t["gated"] for t in entry["outputs"])
        assert golden[entry["golden"]]["sha256"] == sha256_file(directory / entry["golden"])


def test_golden_vectors_are_the_real_photos_faces(written):
    """Each detector's golden outputs decode to one face per photo, and the mesh's golden
    landmarks, mapped to 68 points, lie on the face dlib finds in the same photo."""
    directory, artifacts, _, _ = written
    with np.load(directory / artifacts[SHORT_RANGE_DETECTOR.name]["golden"]) as data:
        regressors, scores = data["regressors"], data["classificators"]
        assert data["input"].shape == (len(dm.GOLDEN_PHOTOS), 1, 128, 128, 3)
    for k in range(len(dm.GOLDEN_PHOTOS)):
        assert len(decode_detections(regressors[k], scores[k], SHORT_RANGE_DETECTOR)) == 1
    with np.load(directory / artifacts[FACE_MESH.name]["golden"]) as data:
        inputs, landmarks, presence = data["input_1"], data["conv2d_20"], data["conv2d_30"]
    assert inputs.shape == (len(dm.GOLDEN_PHOTOS), 1, 192, 192, 3) and 0 <= inputs.min() and inputs.max() <= 1
    assert (presence > 0).all()  # sigmoid > 0.5: a face in every crop
    # the golden crop of source.jpg, found again from the photo: the mesh maps back onto its face
    from bilayer_mobile.reference.face_tracking import DriverModels, FaceTracker

    k = dm.GOLDEN_PHOTOS.index("source.jpg")
    photo = load_rgb(photo_path("source.jpg"))
    region = FaceTracker(DriverModels.published(reference_kernels=True), track=False)(photo).region
    mesh, _ = mesh_from_outputs([landmarks[k], presence[k]], region)
    dlib = detect_landmarks(photo)
    error = np.linalg.norm(ibug68_from_mesh(mesh) - dlib, axis=1).mean() / inter_ocular_distance(dlib)
    assert error < 0.1


def test_the_manifest_section_holds_what_an_app_applies(written):
    *_, section = written
    assert "Apache" in section["licence"]
    assert set(section["models"]) == {c.name for c in dm.COMPONENTS}
    rows = section["ibug68"]["rows"]
    assert len(rows) == 68 and [[tuple(p) for p in row] for row in rows] == [list(row) for row in MESH_TO_IBUG]
    assert all(abs(sum(w for _, w in row) - 1) < 1e-6 for row in rows)
    assert section["filter"]["min_cutoff_hz"] == OneEuroParams().min_cutoff_hz
    short = section["detectors"][SHORT_RANGE_DETECTOR.name]
    assert short["input_size"] == 128 and short["score_threshold"] == 0.5
    assert sum(c * c * n for c, n in short["anchor_grids"]) == 896
    assert section["mesh"]["region_scale"] == FACE_MESH.region_scale
