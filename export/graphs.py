"""The model split into the graphs a device runs, with one tensor contract (docs/contract.md).

- `IdentityGraph`: source image, stickman, keypoints, mask -> texture (enhanced when the model
  has an enhancer) and one flat vector holding every adaptive parameter of the frame network.
- `FrameGraph`: target keypoints, texture, adaptive parameters -> image, mask (+ UV and the
  low-frequency image). The app passes the identity graph's two outputs on unchanged.
- `BakedFrameGraph`: the frame graph for one identity, its texture and adaptive parameters
  folded into constants: fewer inputs, the best case for quantization and accelerators.

Everything is written with ordinary tensor ops that exporters map one to one. In particular
the enhancer's inner gradient (autograd in the reference) is the adjoint of bilinear sampling,
a scatter-add of the four bilinear weights (`grid_sample_adjoint`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..reference.model import BilayerModel, IdentityState, mask_image, warp

Tensor = torch.Tensor


@dataclass(frozen=True)
class AdaptiveEntry:
    """Where one adaptive layer's parameters sit in the flat vector."""

    index: int
    kind: str  # "norm" (scale, shift) or "conv" (weight [C_out, C_in], bias [C_out])
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return _numel(self.weight_shape) + _numel(self.bias_shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def adaptive_layout(state: IdentityState) -> list[AdaptiveEntry]:
    """The flat-vector layout of a state's adaptive parameters (batch dimension dropped)."""
    entries, offset = [], 0
    for i, (w, b) in enumerate(state.adaptive_params):
        kind = "conv" if w.dim() == 3 else "norm"
        entry = AdaptiveEntry(i, kind, tuple(w.shape[1:]), tuple(b.shape[1:]), offset)
        entries.append(entry)
        offset += entry.size
    return entries


def pack_adaptive_params(state: IdentityState) -> Tensor:
    """[B, P]: every entry's weight then bias, flattened row-major, in assignment order."""
    b = state.batch_size
    return torch.cat([torch.cat([w.reshape(b, -1), bias.reshape(b, -1)], 1) for w, bias in state.adaptive_params], 1)


def unpack_adaptive_params(flat: Tensor, layout: list[AdaptiveEntry]) -> list[tuple[Tensor, Tensor]]:
    """Inverse of `pack_adaptive_params` (static slices, so exporters see plain Slice ops)."""
    b = flat.shape[0]
    params = []
    for e in layout:
        w_size = _numel(e.weight_shape)
        w = flat[:, e.offset : e.offset + w_size].reshape(b, *e.weight_shape)
        bias = flat[:, e.offset + w_size : e.offset + e.size].reshape(b, *e.bias_shape)
        params.append((w, bias))
    return params


def grid_sample_adjoint(grad_out: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
    """Adjoint of bilinear `grid_sample(T, uv)` (zero padding, align_corners=False) w.r.t. T.

    Each output pixel's gradient is scattered to the four texels around its sample point with
    the bilinear weights; texels outside the texture receive nothing (zero padding).
    grad_out: [N, C, Ho, Wo]; uv: [N, Ho, Wo, 2]; returns [N, C, H, W].
    """
    n, c = grad_out.shape[:2]
    h, w = size
    x = ((uv[..., 0] + 1) * w - 1) / 2
    y = ((uv[..., 1] + 1) * h - 1) / 2
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx, fy = x - x0, y - y0
    g = grad_out.reshape(n, c, -1)
    out = torch.zeros(n, c, h * w, dtype=grad_out.dtype, device=grad_out.device)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).to(torch.int64).reshape(n, 1, -1).expand(n, c, -1)
        contribution = g * (weight * inside.to(weight.dtype)).reshape(n, 1, -1)
        out = out.scatter_add(2, index, contribution)
    return out.reshape(n, c, h, w)


def reconstruction_loss_gradient_explicit(texture: Tensor, target: Tensor, lowfreq: Tensor, uv: Tensor,
                                          seg: Tensor | None, loss_type: str) -> Tensor:
    """The enhancer's guiding-loss gradient without autograd (same value as the reference's)."""
    recon = lowfreq + warp(texture, uv)
    if seg is not None:
        recon = mask_image(recon, seg)
    residual = recon - target
    grad_recon = residual if loss_type == "sse" else torch.sign(residual)
    if seg is not None:
        grad_recon = grad_recon * seg
    return grid_sample_adjoint(grad_recon, uv, texture.shape[-2:])


class IdentityGraph(nn.Module):
    """(image, stickman, keypoints, mask) -> (texture, adaptive_params)."""

    def __init__(self, model: BilayerModel):
        super().__init__()
        self.model = model

    def forward(self, source_image: Tensor, source_stickman: Tensor, source_keypoints: Tensor,
                source_mask: Tensor) -> tuple[Tensor, Tensor]:
        # argument names are the contract's input names (exporters name graph inputs after them)
        image, stickman, keypoints, mask = source_image, source_stickman, source_keypoints, source_mask
        m, cfg = self.model, self.model.config
        x = mask_image(image, mask) if cfg.emb_apply_masks else image
        if not cfg.emb_no_stickman:
            x = torch.cat([x, stickman], 1)
        embeddings = m.identity_embedder(x)
        texture = m.texture_generator(embeddings)
        params = m.inference_generator.adaptive_params(embeddings)
        flat = torch.cat([torch.cat([w.reshape(w.shape[0], -1), b.reshape(b.shape[0], -1)], 1) for w, b in params], 1)
        if m.has_enhancer:
            uv, lowfreq, seg = m._predict(keypoints, params)
            use_seg = cfg.inf_pred_segmentation
            target = mask_image(image, seg) if use_seg else image
            for _ in range(cfg.enh_unrolling_depth):
                grad = reconstruction_loss_gradient_explicit(texture, target, lowfreq, uv, seg if use_seg else None,
                                                             cfg.enh_guiding_rgb_loss_type)
                texture = texture + torch.tanh(m.texture_enhancer(torch.cat([texture, grad], 1))[:, :3])
        return texture, flat


class FrameGraph(nn.Module):
    """(keypoints, texture, adaptive_params) -> (image, mask[, uv, lowfreq])."""

    def __init__(self, model: BilayerModel, layout: list[AdaptiveEntry], debug_outputs: bool = False):
        super().__init__()
        self.model = model
        self.layout = layout
        self.debug_outputs = debug_outputs

    def forward(self, keypoints: Tensor, texture: Tensor, adaptive_params: Tensor):
        params = unpack_adaptive_params(adaptive_params, self.layout)
        uv, lowfreq, mask = self.model._predict(keypoints, params)
        image = lowfreq + warp(texture, uv)
        if self.debug_outputs:
            return image, mask, uv, lowfreq
        return image, mask


class BakedFrameGraph(nn.Module):
    """The frame graph of one identity: keypoints -> (image, mask[, uv, lowfreq]).

    The texture and adaptive parameters are stored as contiguous buffers of their own: a
    converter that keeps a constant as a strided view of a larger tensor can silently
    compute garbage (seen with litert-torch 0.10).
    """

    def __init__(self, model: BilayerModel, state: IdentityState, debug_outputs: bool = False):
        super().__init__()
        if state.batch_size != 1:
            raise ValueError("bake one identity at a time (state batch must be 1)")
        self.model = model
        self.debug_outputs = debug_outputs
        texture = state.enhanced_texture if state.enhanced_texture is not None else state.texture
        self.register_buffer("texture", texture.detach().clone().contiguous())
        self.num_params = len(state.adaptive_params)
        for i, (w, b) in enumerate(state.adaptive_params):
            self.register_buffer(f"adaptive_{i:02d}_weight", w.detach().clone().contiguous())
            self.register_buffer(f"adaptive_{i:02d}_bias", b.detach().clone().contiguous())

    def forward(self, keypoints: Tensor):
        params = [(getattr(self, f"adaptive_{i:02d}_weight"), getattr(self, f"adaptive_{i:02d}_bias"))
                  for i in range(self.num_params)]
        uv, lowfreq, mask = self.model._predict(keypoints, params)
        image = lowfreq + warp(self.texture, uv)
        if self.debug_outputs:
            return image, mask, uv, lowfreq
        return image, mask
