"""The five inference networks of the bi-layer model, in one file.

Module names and positions inside `nn.Sequential` containers follow the official checkpoints
(`net.enc.1.block_feats.1.weight`, `gen_inf.blocks.6.norm_layer.running_mean`, ...), so an
official state dict loads with `load_state_dict(strict=True)`; that layout is a file format,
and the classes here are written for this project.

Adaptive layers (the identity-specific 1x1 convolutions and norm affines) hold no weights. A
generator's forward takes the adaptive parameters as an explicit list, and each adaptive layer
takes the next entry in execution order. That order is the official assignment order (module
traversal order), which is why the projectors' per-level outputs do not line up with the
ResBlocks (docs/reference.md).

Adaptive parameter formats (batch B = identities; inputs may hold B*T frames, grouped by
identity as in the official code):
  norm entry: (scale [B, C], shift [B, C])  with scale = 1 + projector output
  conv entry: (weight [B, C_out, C_in], bias [B, C_out])
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import BilayerConfig

Tensor = torch.Tensor
AdaptiveParams = Sequence[tuple[Tensor, Tensor]]
LEAKY_SLOPE = 0.2


def _repeat_per_frame(param: Tensor, num_frames_total: int) -> Tensor:
    """Repeat per-identity parameters [B, ...] for B*T frames grouped by identity."""
    b = param.shape[0]
    if b == num_frames_total:
        return param
    return param.repeat_interleave(num_frames_total // b, dim=0)


def adaptive_conv1x1(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A 1x1 convolution whose weights differ per identity: out[n] = W[n] @ x[n] + b[n]."""
    n, c, h, w = x.shape
    weight = _repeat_per_frame(weight, n)
    bias = _repeat_per_frame(bias, n)
    out = torch.bmm(weight, x.reshape(n, c, h * w))
    return out.reshape(n, -1, h, w) + bias[:, :, None, None]


class AdaptiveConv1x1(nn.Module):
    """Placeholder for a projector-predicted 1x1 conv; consumes one conv entry."""

    takes_adaptive_params = True

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor, params: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
        weight, bias = next(params)
        return adaptive_conv1x1(x, weight, bias)


class AdaptiveBatchNorm(nn.Module):
    """BatchNorm without affine, then a per-identity affine (`ada_bn`); consumes one norm entry."""

    takes_adaptive_params = True

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.norm_layer = nn.BatchNorm2d(channels, eps=eps, affine=False)

    def forward(self, x: Tensor, params: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
        scale, shift = next(params)
        x = self.norm_layer(x)
        n = x.shape[0]
        scale = _repeat_per_frame(scale, n)[:, :, None, None]
        shift = _repeat_per_frame(shift, n)[:, :, None, None]
        return x * scale + shift


class AdaptiveSpadeBatchNorm(nn.Module):
    """BatchNorm without affine, then `x * (1 + conv_w(P)) + conv_b(P)` (`ada_spade_bn`).

    P (`pixel_feats`) is a learned map at the layer's resolution; conv_w and conv_b are
    per-identity 1x1 convs, so this layer consumes two conv entries.
    """

    takes_adaptive_params = True

    def __init__(self, channels: int, spatial_size: int, eps: float):
        super().__init__()
        self.pixel_feats = nn.Parameter(torch.empty(1, channels, spatial_size, spatial_size))
        nn.init.kaiming_uniform_(self.pixel_feats, a=math.sqrt(5))
        self.conv_weight = AdaptiveConv1x1(channels, channels)
        self.conv_bias = AdaptiveConv1x1(channels, channels)
        self.norm_layer = nn.BatchNorm2d(channels, eps=eps, affine=False)

    def forward(self, x: Tensor, params: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
        x = self.norm_layer(x)
        w_weight, w_bias = next(params)
        b_weight, b_bias = next(params)
        feats = self.pixel_feats.expand(w_weight.shape[0], -1, -1, -1)
        scale = adaptive_conv1x1(feats, w_weight, w_bias) + 1.0
        shift = adaptive_conv1x1(feats, b_weight, b_bias)
        n = x.shape[0]
        return x * _repeat_per_frame(scale, n) + _repeat_per_frame(shift, n)


def run_layers(layers: nn.Sequential, x: Tensor, params: Iterator | None) -> Tensor:
    """Apply a Sequential whose adaptive layers (and blocks holding them) take `params`."""
    for layer in layers:
        x = layer(x, params) if getattr(layer, "takes_adaptive_params", False) else layer(x)
    return x


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


def upsample() -> nn.Module:
    return nn.Upsample(scale_factor=2, mode="nearest")


class ResBlock(nn.Module):
    """Pre-activation residual block with the official layer positions.

    resize: "none", "up" (nearest x2) or "down" (avgpool 2).
    norm: "none", "ada_bn" or "ada_spade_bn"; `first_norm_plain` makes the first norm an
    affine BatchNorm (the first block of each generator).
    efficient_upsampling places the upsampling after the first conv (inference generator).
    The skip branch exists when channels change or the block resizes; its 1x1 conv is
    adaptive in the generators.
    `block_feats(x)` (after the first conv and activation) is what the identity embedder
    returns as an embedding.
    """

    takes_adaptive_params = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        resize: str = "none",
        norm: str = "none",
        first_norm_plain: bool = False,
        efficient_upsampling: bool = False,
        adaptive_skip: bool = False,
        spatial_size: int = 1,
        eps: float = 1e-7,
    ):
        super().__init__()
        up, down = resize == "up", resize == "down"

        def make_norm(channels: int, size: int, plain: bool) -> nn.Module:
            if plain:
                return nn.BatchNorm2d(channels, eps=eps, affine=True)
            if norm == "ada_bn":
                return AdaptiveBatchNorm(channels, eps)
            return AdaptiveSpadeBatchNorm(channels, size, eps)

        first: list[nn.Module] = []
        if norm != "none":
            first.append(make_norm(in_channels, spatial_size, first_norm_plain))
        first.append(leaky_relu())
        if up and not efficient_upsampling:
            first.append(upsample())
            spatial_size *= 2
        first.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        if norm != "none":
            first.append(make_norm(out_channels, spatial_size, False))
        first.append(leaky_relu())
        self.block_feats = nn.Sequential(*first)

        second: list[nn.Module] = []
        if up and efficient_upsampling:
            second.append(upsample())
        second.append(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if down:
            second.append(nn.AvgPool2d(2))
        self.block = nn.Sequential(*second)

        self.has_skip = in_channels != out_channels or up or down
        if self.has_skip:
            skip: list[nn.Module] = [upsample()] if up else []
            skip.append(AdaptiveConv1x1(in_channels, out_channels) if adaptive_skip else nn.Conv2d(in_channels, out_channels, 1))
            if down:
                skip.append(nn.AvgPool2d(2))
            self.skip = nn.Sequential(*skip)
        else:
            self.skip = nn.Identity()

    def forward_with_features(self, x: Tensor, params: Iterator | None = None) -> tuple[Tensor, Tensor]:
        feats = run_layers(self.block_feats, x, params)
        main = run_layers(self.block, feats, params)
        skip = run_layers(self.skip, x, params) if self.has_skip else x
        return main + skip, feats

    def forward(self, x: Tensor, params: Iterator | None = None) -> Tensor:
        return self.forward_with_features(x, params)[0]


def _channels(num: int, maximum: int, exponent: int) -> int:
    return min(int(num * 2**exponent), maximum)


# --------------------------------------------------------------------------------------------
# Identity embedder
# --------------------------------------------------------------------------------------------
class _EmbedderNet(nn.Module):
    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        in_channels = 3 if cfg.emb_no_stickman else 6
        out = cfg.emb_num_channels
        enc: list[nn.Module] = [nn.Conv2d(in_channels, out, 3, padding=1)]
        for i in range(1, cfg.num_embedder_down_blocks + 1):
            prev, out = out, _channels(cfg.emb_num_channels, cfg.emb_max_channels, i)
            enc.append(ResBlock(prev, out, resize="down", eps=cfg.eps))
        self.enc = nn.Sequential(*enc)
        dec = []
        for i in range(cfg.num_generator_blocks - 1, -1, -1):
            prev, out = out, _channels(cfg.tex_num_channels, cfg.tex_max_channels, i)
            dec.append(ResBlock(prev, out, eps=cfg.eps))
        self.dec_blocks = nn.ModuleList(dec)


class IdentityEmbedder(nn.Module):
    """Source image (+ stickman) -> one 8x8 embedding per generator level (6 in the paper)."""

    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        self.net = _EmbedderNet(cfg)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.net.enc(x)
        embeddings = []
        for block in self.net.dec_blocks:
            out, feats = block.forward_with_features(out)
            embeddings.append(feats)
        return embeddings


# --------------------------------------------------------------------------------------------
# Projectors: identity embeddings -> adaptive parameters
# --------------------------------------------------------------------------------------------
def _resize_embedding(x: Tensor, size: int) -> Tensor:
    """`adaptive_avg_pool2d(x, size)` as the official projector applies it, in exporter-friendly ops.

    Pooling an 8x8 embedding *up* to 16x16 or 32x32 replicates pixels exactly, so it is written
    as a repeat (exporters and mobile converters reject upsampling adaptive pools); an integer
    downscale is a plain average pool.
    """
    h = x.shape[-1]
    if size % h == 0:
        return x.repeat_interleave(size // h, dim=2).repeat_interleave(size // h, dim=3)
    if h % size == 0:
        return F.avg_pool2d(x, h // size)
    return F.adaptive_avg_pool2d(x, (size, size))


def _three_linears(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    # The official projector is a low-rank factorisation: no nonlinearity between the layers.
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out_features)
    )


class Projector(nn.Module):
    """Maps each identity embedding to the adaptive parameters of one generator level.

    Per level the embedding is average-pooled to s x s (s = 32 * channel_mult; for the texture
    generator this *upsamples* 8x8 to 32x32 by replication), cut into rows, and each row goes
    through three Linear layers; the last output column is a bias, the others a weight.
    `kind` is "inference" (entries: norm, skip conv, norm) or "texture" (spade conv_w, spade
    conv_b, skip conv, spade conv_w, spade conv_b).
    """

    BOTTLENECK = 1024

    def __init__(self, cfg: BilayerConfig, kind: str):
        super().__init__()
        if kind == "inference":
            num, maximum, num_blocks = cfg.inf_num_channels, cfg.inf_max_channels, cfg.num_inference_blocks
        else:
            num, maximum, num_blocks = cfg.tex_num_channels, cfg.tex_max_channels, cfg.num_generator_blocks
        self.kind = kind
        self.channel_mults: list[float] = []
        self.pool_sizes: list[int] = []
        self.fc_blocks = nn.ModuleList()
        for i in range(num_blocks, 0, -1):
            emb_channels = _channels(cfg.emb_num_channels, cfg.emb_max_channels, i)
            level_in = _channels(num, maximum, i)
            level_out = _channels(num, maximum, i - 1)
            mult = level_in / float(emb_channels)
            size = int(self.BOTTLENECK**0.5 * mult)
            row = int(size**2 / mult)
            self.channel_mults.append(mult)
            self.pool_sizes.append(size)
            if kind == "inference":
                widths = [2, level_in + 1, 2]
            else:
                widths = [level_out + 1, level_out + 1, level_in + 1, level_out + 1, level_out + 1]
            self.fc_blocks.append(nn.ModuleList(_three_linears(row, emb_channels, w) for w in widths))

    def forward(self, embeddings: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Return raw (weight [B, rows, k], bias [B, rows]) entries in assignment order."""
        entries = []
        for embedding, fcs, mult, size in zip(embeddings, self.fc_blocks, self.channel_mults, self.pool_sizes):
            b, c = embedding.shape[:2]
            rows = int(c * mult)
            pooled = _resize_embedding(embedding, size).reshape(b * rows, -1)
            for fc in fcs:
                out = fc(pooled).reshape(b, rows, -1)
                entries.append((out[:, :, :-1], out[:, :, -1]))
        return entries


# --------------------------------------------------------------------------------------------
# Texture generator
# --------------------------------------------------------------------------------------------
class _TextureGeneratorNet(nn.Module):
    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        n = cfg.num_generator_blocks
        out = _channels(cfg.tex_num_channels, cfg.tex_max_channels, n)
        size = cfg.tex_input_tensor_size
        blocks: list[nn.Module] = []
        for i in range(n - 1, -1, -1):
            prev, out = out, _channels(cfg.tex_num_channels, cfg.tex_max_channels, i)
            blocks.append(
                ResBlock(prev, out, resize="up", norm="ada_spade_bn", first_norm_plain=i == n - 1,
                         adaptive_skip=True, spatial_size=size, eps=cfg.eps)
            )
            size *= 2
        blocks += [AdaptiveSpadeBatchNorm(out, size, cfg.eps), leaky_relu()]
        self.blocks = nn.Sequential(*blocks)
        self.heads = nn.ModuleList([nn.Sequential(nn.Conv2d(out, 3, 3, padding=1), nn.Tanh())])


class TextureGenerator(nn.Module):
    """Identity embeddings -> high-frequency texture [B, 3, H, W] in [-1, 1]."""

    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        self.gen_tex_input = nn.Parameter(torch.randn(1, cfg.tex_max_channels, cfg.tex_input_tensor_size, cfg.tex_input_tensor_size))
        self.gen_tex = _TextureGeneratorNet(cfg)
        self.prj_tex = Projector(cfg, "texture")

    def adaptive_params(self, embeddings: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return list(self.prj_tex(embeddings))

    def forward(self, embeddings: Sequence[Tensor]) -> Tensor:
        params = self.adaptive_params(embeddings)
        x = self.gen_tex_input.expand(embeddings[0].shape[0], -1, -1, -1)
        x = run_layers(self.gen_tex.blocks, x, iter(params))
        return self.gen_tex.heads[0](x)


# --------------------------------------------------------------------------------------------
# Keypoints embedder
# --------------------------------------------------------------------------------------------
class _PoseMLP(nn.Module):
    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        out_features = cfg.inf_max_channels * cfg.inf_input_tensor_size**2
        hidden = out_features if cfg.pse_num_blocks == 1 else cfg.pse_num_channels
        layers: list[nn.Module] = [nn.Linear(cfg.keypoints_embedder_in_features, hidden)]
        for _ in range(1, cfg.pse_num_blocks - 1):
            layers += [leaky_relu(), nn.Linear(hidden, hidden)]
        if cfg.pse_num_blocks != 1:
            layers += [leaky_relu(), nn.Linear(hidden, out_features)]
        self.mlp = nn.Sequential(*layers)


class KeypointsEmbedder(nn.Module):
    """Normalised keypoints [N, 136] -> pose embedding [N, inf_max_channels, 4, 4]."""

    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        self.cfg = cfg
        self.net = _PoseMLP(cfg)
        if cfg.pse_use_harmonic_enc:
            k = torch.arange(cfg.pse_num_harmonics)
            self.register_buffer("frequencies", (torch.ones(cfg.pse_num_harmonics) * math.pi * 2**k)[None, None])

    def forward(self, keypoints: Tensor) -> Tensor:
        x = keypoints
        if self.cfg.pse_use_harmonic_enc:
            x = (x[..., None] * self.frequencies).reshape(x.shape[0], -1)
            x = torch.cat([torch.sin(x), torch.cos(x)], dim=1)
        s = self.cfg.inf_input_tensor_size
        return self.net.mlp(x).reshape(-1, self.cfg.inf_max_channels, s, s)


# --------------------------------------------------------------------------------------------
# Inference generator
# --------------------------------------------------------------------------------------------
def pixel_center_grid(size: int) -> Tensor:
    """Identity sampling grid [1, size, size, 2] of pixel-centre coordinates, (x, y) last.

    With `grid_sample(..., align_corners=False)` this grid reproduces the input exactly.
    """
    edges = torch.linspace(-1, 1, size + 1)
    centres = (edges[1:] + edges[:-1]) / 2
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u, v], 2)[None]


class _InferenceGeneratorNet(nn.Module):
    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        n = cfg.num_inference_blocks
        out = _channels(cfg.inf_num_channels, cfg.inf_max_channels, n)
        blocks: list[nn.Module] = []
        for i in range(n - 1, -1, -1):
            prev, out = out, _channels(cfg.inf_num_channels, cfg.inf_max_channels, i)
            blocks.append(
                ResBlock(prev, out, resize="up", norm="ada_bn", first_norm_plain=i == n - 1,
                         efficient_upsampling=True, adaptive_skip=True, eps=cfg.eps)
            )
        blocks += [AdaptiveBatchNorm(out, cfg.eps), leaky_relu()]
        self.blocks = nn.Sequential(*blocks)
        heads = [nn.Sequential(nn.Conv2d(out, 2, 3, padding=1), nn.Tanh()),
                 nn.Sequential(nn.Conv2d(out, 3, 3, padding=1), nn.Tanh())]
        if cfg.inf_pred_segmentation:
            heads.append(nn.Sequential(nn.Conv2d(out, 1, 3, padding=1)))
        self.heads = nn.ModuleList(heads)


class InferenceGenerator(nn.Module):
    """Pose embedding + per-identity adaptive parameters -> delta UV, low-frequency RGB, mask logits."""

    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        self.gen_inf = _InferenceGeneratorNet(cfg)
        self.prj_inf = Projector(cfg, "inference")
        self.register_buffer("identity_grid", pixel_center_grid(cfg.image_size))

    def adaptive_params(self, embeddings: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Per-identity parameters of the 18 adaptive layers, in assignment order.

        Norm entries become (scale = 1 + p0, shift = p1) with shape [B, C]; conv entries stay
        (weight [B, C_out, C_in], bias [B, C_out]).
        """
        params = []
        for weight, bias in self.prj_inf(embeddings):
            if weight.shape[-1] == 1:
                params.append((weight[..., 0] + 1.0, bias))
            else:
                params.append((weight, bias))
        return params

    def forward(self, pose_embeddings: Tensor, params: AdaptiveParams) -> tuple[Tensor, Tensor, Tensor | None]:
        x = run_layers(self.gen_inf.blocks, pose_embeddings, iter(params)).contiguous()
        delta_uv = self.gen_inf.heads[0](x)
        lowfreq = self.gen_inf.heads[1](x)
        seg_logits = self.gen_inf.heads[2](x) if len(self.gen_inf.heads) > 2 else None
        return delta_uv, lowfreq, seg_logits


# --------------------------------------------------------------------------------------------
# Texture enhancer
# --------------------------------------------------------------------------------------------
class _EnhancerNet(nn.Module):
    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        n_down = cfg.num_enhancer_down_blocks
        out = cfg.enh_num_channels
        layers: list[nn.Module] = [nn.Conv2d(6, out, 3, padding=1)]
        for i in range(1, n_down + 1):
            prev, out = out, _channels(cfg.enh_num_channels, cfg.enh_max_channels, i)
            layers.append(ResBlock(prev, out, resize="down", eps=cfg.eps))
        for _ in range(cfg.enh_num_blocks):
            layers.append(ResBlock(out, out, eps=cfg.eps))
        for i in range(n_down - 1, -1, -1):
            prev, out = out, _channels(cfg.enh_num_channels, cfg.enh_max_channels, i)
            layers.append(ResBlock(prev, out, resize="up", eps=cfg.eps))
        layers += [nn.Identity(), leaky_relu(), nn.Conv2d(out, 3, 3, padding=1)]
        self.blocks = nn.Sequential(*layers)


class TextureEnhancer(nn.Module):
    """(texture, gradient of the source reconstruction loss) [N, 6, H, W] -> texture update logits."""

    def __init__(self, cfg: BilayerConfig):
        super().__init__()
        self.net = _EnhancerNet(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.blocks(x)
