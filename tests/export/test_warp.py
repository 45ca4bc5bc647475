"""The fused warp: the same sampling as grid_sample (the reference), exact at the borders,
bounded for any displacement, and made of ops of rank <= 4 that the GPU accelerator takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bilayer_mobile.export.warp import FusedWarp, GridSampleWarp, identity_grid_plus
from bilayer_mobile.reference.networks import pixel_center_grid
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, psnr_db

SIZE = 64


def smooth_texture(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def displacement(size: int, pixels: float, seed: int = 1) -> torch.Tensor:
    """A random displacement field of about `pixels` texels, in grid_sample units."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, size, size, generator=g) * pixels / (size / 2)


@pytest.mark.parametrize("flat_indices", [False, True], ids=["4d-indices", "flat-indices"])
@pytest.mark.parametrize("pixels", [0.0, 0.3, 3.0, 20.0, 200.0])
def test_fused_warp_is_grid_sample(pixels, flat_indices):
    texture, delta = smooth_texture(SIZE), displacement(SIZE, pixels)
    reference = GridSampleWarp(pixel_center_grid(SIZE))(texture, delta)
    fused = FusedWarp(SIZE, SIZE, flat_indices=flat_indices)(texture, delta)
    # fp32 round-off of the sample position (grid_sample forms ((u + 1) * W - 1) / 2)
    assert (fused - reference).abs().max() < 1e-5
    assert psnr_db(reference.numpy(), fused.numpy()) > THRESHOLDS_DB["fp32"] + 40


def test_reference_warp_is_the_models_warp():
    texture, delta = smooth_texture(SIZE), displacement(SIZE, 3.0)
    grid = identity_grid_plus(delta, pixel_center_grid(SIZE))
    expected = F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert torch.equal(GridSampleWarp(pixel_center_grid(SIZE))(texture, delta), expected)


def test_zero_padding_beyond_every_border():
    texture = smooth_texture(SIZE) + 5.0  # no texel is zero: padding shows as exact zeros
    for axis in (0, 1):
        for sign in (-1, 1):
            for texels in (0.5, 1.0, 1.5, 2.0, 7.25):
                delta = torch.zeros(1, 2, SIZE, SIZE)
                delta[:, axis] = sign * texels / (SIZE / 2)
                reference = GridSampleWarp(pixel_center_grid(SIZE))(texture, delta)
                fused = FusedWarp(SIZE, SIZE)(texture, delta)
                assert (fused - reference).abs().max() < 1e-5, (axis, sign, texels)
    # sampling 2 texels to the left: the first two columns see only padding, the third does not
    delta = torch.zeros(1, 2, SIZE, SIZE)
    delta[:, 0] = -2 / (SIZE / 2)
    fused = FusedWarp(SIZE, SIZE)(texture, delta)
    assert torch.all(fused[..., :2] == 0) and torch.all(fused[..., 2] != 0)


@pytest.mark.parametrize("flat_indices", [False, True], ids=["4d-indices", "flat-indices"])
def test_nan_and_huge_displacements_stay_inside_the_table(flat_indices):
    texture = smooth_texture(SIZE)
    for value in (float("nan"), float("inf"), -float("inf"), 1e30):
        delta = torch.full((1, 2, SIZE, SIZE), value)
        out = FusedWarp(SIZE, SIZE, flat_indices=flat_indices)(texture, delta)  # an index outside the table would raise
        assert out.shape == texture.shape
        if not np.isnan(value):  # the sample lands beyond the border: zero padding
            assert torch.all(out == 0)


def test_rank_and_index_range():
    """Every intermediate tensor has rank <= 4 and the flat index never exceeds int32 or fp16 range."""
    warp = FusedWarp(256, 256)
    ranks = []

    class RecordRanks(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                ranks.append(out.dim())
            return out

    with RecordRanks():
        warp(smooth_texture(256), displacement(256, 3.0))
    assert ranks and max(ranks) <= 4
    # the extreme flat indices a pixel can reach (its clamp bounds, plus the lower-right neighbour)
    # are the first and the last entry of the (H + 3) x (W + 3) table, far inside int32
    highest = warp.base + warp.high_y * warp.row + warp.high_x + warp.row + 1
    lowest = warp.base + warp.low_y * warp.row + warp.low_x
    assert int(highest.max()) == 259 * 259 - 1 and int(lowest.min()) == 0
