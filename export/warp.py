"""The frame graph's warp, `grid_sample(texture, identity_grid + delta_uv)`, in two forms.

The reference (and the judge of both) is `F.grid_sample` with bilinear filtering, zero padding
and `align_corners=False` (reference/model.py `warp`).

- `GridSampleWarp` ("decomposed" in a TFLite bundle): the torch op itself. ONNX has it natively
  (GridSample); litert-torch 0.10 decomposes it into GATHER_ND, BROADCAST_TO and rank-5
  RESHAPE / CONCATENATION / SLICE, which the LiteRT GPU accelerator rejects and XNNPACK does not
  take (76 ms for the warp alone on this machine's CPU).
- `FusedWarp` ("fused", the default for TFLite): the same sampling written from ops the GPU
  accelerator takes (elementwise float and int32 arithmetic, SLICE, and 1-D GATHER on a
  flattened table), all of rank <= 4, and that stay exact in the GPU's fp16 mode.

Why the fused warp survives fp16. With `align_corners=False` the identity grid puts output pixel
(i, j) exactly on texel centre (i, j), so the sample point is (i + dy, j + dx) with
dx = delta_x * W / 2, a displacement of a few pixels. The fused warp never forms the large
numbers that fp16 cannot hold: the integer part of the position comes from the pixel's own
index (an int32 constant) plus floor(dx) cast to int32, the bilinear weights are the fractions of
the small displacement, and the flat texel index is int32 arithmetic. (Forming `x = j + dx` in
fp16 rounds to 1/8 px near 256; a flat index y*W + x reaches 66,564, above fp16's largest
finite value.) Feeding the warp `uv` instead of `delta_uv` would lose the same precision
(uv near 1 is resolved to 2^-11, 0.06 px).

Zero padding. The texture is padded with one zero row/column before and two after, and the
displacement is clamped per pixel to [-1 - j, W - j] (rows alike): a sample beyond the border
then lands on zero texels with the same result as grid_sample's, and every index stays inside
the table. The clamp is applied again to the int32 value, so that a NaN displacement (whose
int32 cast is undefined) cannot index outside the table either.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
# gather(table [N, C], index [M] int32) -> [M, C]: rows of a 2-D table by a 1-D index.
Gather = Callable[[Tensor, Tensor], Tensor]

WARPS = ("fused", "decomposed")  # the TFLite frame graph's warp (`bilayer-mobile export --warp`)


def index_select_gather(table: Tensor, index: Tensor) -> Tensor:
    """Rows of `table` by `index` with torch's own op (eager runs, ONNX)."""
    return table.index_select(0, index.long())


def identity_grid_plus(delta_uv: Tensor, identity_grid: Tensor) -> Tensor:
    """The grid_sample grid [N, H, W, 2] of a displacement [N, 2, H, W] (the model's `uv`)."""
    return identity_grid + delta_uv.permute(0, 2, 3, 1)


class GridSampleWarp(nn.Module):
    """The reference warp: `F.grid_sample(texture, identity_grid + delta_uv)`."""

    kind = "decomposed"

    def __init__(self, identity_grid: Tensor):
        super().__init__()
        self.register_buffer("identity_grid", identity_grid.detach().clone().contiguous())

    def forward(self, texture: Tensor, delta_uv: Tensor) -> Tensor:
        grid = identity_grid_plus(delta_uv, self.identity_grid)
        return F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def baked(self, texture: Tensor) -> nn.Module:
        """This warp with `texture` held as a constant: (delta_uv) -> warped texture."""
        return _BakedWarp(self, texture.detach().clone().contiguous())


class _BakedWarp(nn.Module):
    """A warp whose texture input is a constant (in whatever form the warp samples best)."""

    def __init__(self, warp: nn.Module, texture: Tensor):
        super().__init__()
        self.warp = warp
        self.register_buffer("texture", texture)

    def forward(self, delta_uv: Tensor) -> Tensor:
        return self.warp(self.texture, delta_uv)


class FusedWarp(nn.Module):
    """Bilinear sampling of `texture` [1, C, H, W] at pixel centre + `delta_uv` [1, 2, H, W]
    (grid_sample units), zero padding, by four row gathers of the padded, flattened texture.

    `gather` picks the rows (`index_select_gather` in torch; the TFLite target passes one that
    emits a TFL GATHER). The result equals `GridSampleWarp` to float round-off.
    """

    kind = "fused"

    def __init__(self, height: int, width: int, gather: Gather = index_select_gather, flat_indices: bool = False):
        super().__init__()
        self.height, self.width, self.gather = height, width, gather
        # flat_indices: the displacement is flattened to [H * W] while still float, so the int32
        # arithmetic needs no int32 RESHAPE (NNAPI has that only from feature level 6, int32
        # elementwise ops from level 4: the NNAPI profile, export.nnapi). Off for the GPU: LiteRT's
        # accelerator computed the rank-1 int32 index arithmetic wrongly in fp16 (27.5 dB).
        self.flat_indices = flat_indices
        self.row = width + 3  # padded row length: one zero column before, two after
        grid = (height * width,) if flat_indices else (1, 1, height, width)
        rows = torch.arange(height, dtype=torch.int32).reshape(height, 1).expand(height, width).reshape(grid)
        cols = torch.arange(width, dtype=torch.int32).reshape(1, width).expand(height, width).reshape(grid)
        # per-pixel bounds of the displacement (texels): the sample point stays in [-1, size]
        for axis, index, size in (("x", cols, width), ("y", rows, height)):
            self.register_buffer(f"low_{axis}", (-1 - index).to(torch.int32).contiguous())
            self.register_buffer(f"high_{axis}", (size - index).to(torch.int32).contiguous())
            self.register_buffer(f"low_{axis}_f", (-1 - index).float().contiguous())
            self.register_buffer(f"high_{axis}_f", (size - index).float().contiguous())
        # flat index of each pixel's own texel in the padded table
        self.register_buffer("base", ((rows + 1) * self.row + cols + 1).to(torch.int32).contiguous())

    def table(self, texture: Tensor) -> Tensor:
        """[(H + 3) * (W + 3), C]: the texture zero-padded (one before, two after, both axes)
        and flattened to one row per texel."""
        c = texture.shape[1]
        padded = F.pad(texture, (1, 2, 1, 2))
        return padded.permute(0, 2, 3, 1).reshape((self.height + 3) * self.row, c)

    def forward(self, texture: Tensor, delta_uv: Tensor) -> Tensor:
        return self.sample(self.table(texture), delta_uv)

    def sample(self, table: Tensor, delta_uv: Tensor) -> Tensor:
        """The warped texture [1, C, H, W] from its `table` and the displacement."""
        h, w, c = self.height, self.width, table.shape[1]
        dx = delta_uv[:, 0:1] * (w / 2)  # grid_sample units -> texels
        dy = delta_uv[:, 1:2] * (h / 2)
        if self.flat_indices:
            dx, dy = dx.reshape(h * w), dy.reshape(h * w)
        dx = torch.minimum(torch.maximum(dx, self.low_x_f), self.high_x_f)
        dy = torch.minimum(torch.maximum(dy, self.low_y_f), self.high_y_f)
        fx, fy = torch.floor(dx), torch.floor(dy)
        ax, ay = dx - fx, dy - fy  # bilinear weights of the right / lower neighbours
        ix = torch.minimum(torch.maximum(fx.to(torch.int32), self.low_x), self.high_x)
        iy = torch.minimum(torch.maximum(fy.to(torch.int32), self.low_y), self.high_y)
        index = self.base + iy * self.row + ix
        if not self.flat_indices:
            index = index.reshape(h * w)

        def texels(offset: int) -> Tensor:
            rows = self.gather(table, index + offset) if offset else self.gather(table, index)
            return rows.reshape(1, h, w, c).permute(0, 3, 1, 2)

        top_left, top_right = texels(0), texels(1)
        bottom_left, bottom_right = texels(self.row), texels(self.row + 1)
        if self.flat_indices:
            ax, ay = ax.reshape(1, 1, h, w), ay.reshape(1, 1, h, w)
        top = top_left + (top_right - top_left) * ax
        bottom = bottom_left + (bottom_right - bottom_left) * ax
        return top + (bottom - top) * ay

    def baked(self, texture: Tensor) -> nn.Module:
        """This warp with `texture` held as a constant, already padded and flattened (a GPU
        accelerator rejects PAD of a constant; a table costs nothing per frame)."""
        return _BakedFusedWarp(self, self.table(texture.detach()).clone().contiguous())


class _BakedFusedWarp(nn.Module):
    def __init__(self, warp: FusedWarp, table: Tensor):
        super().__init__()
        self.warp = warp
        self.register_buffer("texture_table", table)

    def forward(self, delta_uv: Tensor) -> Tensor:
        return self.warp.sample(self.texture_table, delta_uv)
