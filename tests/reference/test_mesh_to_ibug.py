"""The 468 -> 68 table: what it is made of, that it is the rules' table, and its accuracy."""
from __future__ import annotations

import numpy as np

from bilayer_mobile.reference import mesh_to_ibug as m2i
from bilayer_mobile.reference.face_tracking import DriverModels, FaceTracker
from bilayer_mobile.reference.preprocessing import load_rgb
from tests.conftest import PROJECT


def test_every_row_is_a_weighted_mean_of_mesh_vertices():
    assert len(m2i.MESH_TO_IBUG) == 68
    w = m2i.weight_matrix()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)
    assert (w >= 0).all() and (np.count_nonzero(w, axis=1) <= 4).all()
    assert sorted(i for points in m2i.REGIONS.values() for i in points) == list(range(68))


def test_the_table_is_what_the_rules_give_on_the_packaged_frontal_photo():
    mesh = FaceTracker(DriverModels.published(reference_kernels=True))(
        load_rgb(PROJECT / "reference" / "photos" / "source.jpg")).mesh
    assert m2i.derive_table(mesh) == m2i.MESH_TO_IBUG


def test_applying_the_table_is_a_matrix_product_and_a_manifest_entry():
    mesh = np.random.default_rng(0).uniform(0, 500, (468, 3))
    points = m2i.ibug68_from_mesh(mesh)
    np.testing.assert_allclose(points, m2i.weight_matrix() @ mesh[:, :2], rtol=1e-6)
    entry = m2i.table_for_manifest()
    rebuilt = np.array([sum(w * mesh[v, :2] for v, w in row) for row in entry["rows"]])
    np.testing.assert_allclose(rebuilt, points, rtol=1e-5)
