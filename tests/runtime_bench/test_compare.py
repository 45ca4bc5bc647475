"""Comparators: PSNR with the reference's range as peak, cosine, UV error in pixels."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bilayer_mobile.runtime_bench.compare import compare_output, cosine, psnr_db, uv_error_px


def test_psnr_uses_reference_range_as_peak():
    ref = np.linspace(-1, 1, 1000)
    noisy = ref + 0.01  # mse 1e-4, peak 2 -> 10*log10(4/1e-4) = 46.02 dB
    assert psnr_db(ref, noisy) == pytest.approx(10 * math.log10(4 / 1e-4))
    assert psnr_db(ref * 0.5, ref * 0.5 + 0.01) == pytest.approx(10 * math.log10(1 / 1e-4))
    assert psnr_db(ref, ref) == math.inf
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_db(ref, ref[:10])


def test_cosine_and_uv_error():
    a = np.array([1.0, 2.0, 3.0])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    uv = np.zeros((1, 4, 4, 2))
    shifted = uv.copy()
    shifted[..., 0] += 2 / 256  # one pixel to the right at 256x256
    assert uv_error_px(uv, shifted, 256) == pytest.approx(1.0)
    # the UV error belongs to the output's kind (a sampling grid), whatever the output is called
    comparison = compare_output("grid", uv, shifted, 256, kind="warp")
    assert comparison.uv_error_px == pytest.approx(1.0) and comparison.max_abs == pytest.approx(2 / 256)
    assert compare_output("uv", uv, shifted, 256, kind="image").uv_error_px is None
    assert compare_output("uv", uv, shifted, 256).uv_error_px is None
    assert compare_output("grid", uv, shifted, None, kind="warp").uv_error_px is None  # no size: no pixels


def test_warp_px_measures_the_displacement_from_the_identity_grid():
    from bilayer_mobile.runtime_bench.compare import pixel_centre_grid, warp_px

    grid = pixel_centre_grid(64)
    assert warp_px(grid[None], 64) == pytest.approx(0.0, abs=1e-12)
    shifted = grid.copy()
    shifted[..., 0] += 2 * 3 / 64  # 3 px to the right
    assert warp_px(shifted[None], 64) == pytest.approx(3.0)


def test_uv_tolerance_grows_with_the_warp_and_keeps_its_floor():
    from bilayer_mobile.runtime_bench.compare import UV_TOLERANCE

    for precision, tolerance in UV_TOLERANCE.items():
        assert tolerance.limit_px(0.0) == tolerance.floor_px
        assert tolerance.limit_px(60.0) > tolerance.limit_px(3.0) > tolerance.floor_px, precision
    # a trained-like 3 px warp barely moves the gates; a random-init 60 px warp gives fp16 room for
    # the 0.12-0.18 px its artifacts measure, while full int8 of the warp (0.87-0.96 px) stays caught
    assert UV_TOLERANCE["fp16"].limit_px(3.0) < 0.065
    assert 0.2 < UV_TOLERANCE["fp16"].limit_px(60.0) < 0.3
    assert UV_TOLERANCE["int8"].limit_px(3.0) < 0.6
