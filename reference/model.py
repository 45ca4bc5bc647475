"""`BilayerModel`: the bi-layer inference path, split the way a device runs it.

`init_identity` is the once-per-identity work (identity embedder, projectors, texture
generator, optional texture enhancer) and returns an `IdentityState`: exactly the tensors a
frame needs. `render` is the once-per-frame work (keypoints embedder, inference generator,
warp). Together they compute what the official runner computes at test time with the official
README's overrides (`inf_apply_masks=False`, `enh_apply_masks=False`, source-pose predictions
on for the enhancer).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
import torch
import torch.nn.functional as F
from torch import nn

from .config import NETWORK_NAMES, BilayerConfig
from .errors import InputError
from .networks import (
    IdentityEmbedder,
    InferenceGenerator,
    KeypointsEmbedder,
    TextureEnhancer,
    TextureGenerator,
)
from .preprocessing import draw_stickmen

Tensor = torch.Tensor


@dataclass
class IdentityState:
    """Everything the per-frame work needs about one or more identities (batch B).

    texture: [B, 3, H, W] high-frequency texture from the texture generator.
    enhanced_texture: [B, 3, H, W] texture after the enhancer's unrolled refinement, or None
        when no enhancer is loaded. `render` uses it when present.
    adaptive_params: the inference generator's 18 adaptive layers in assignment order; norm
        entries are (scale [B, C], shift [B, C]), conv entries (weight [B, C_out, C_in],
        bias [B, C_out]).
    """

    texture: Tensor
    adaptive_params: list[tuple[Tensor, Tensor]]
    enhanced_texture: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.texture.shape[0]

    def select(self, index: int) -> "IdentityState":
        """The state of identity `index` alone (batch 1)."""
        pick = lambda t: t[index : index + 1]
        return IdentityState(
            texture=pick(self.texture),
            adaptive_params=[(pick(w), pick(b)) for w, b in self.adaptive_params],
            enhanced_texture=None if self.enhanced_texture is None else pick(self.enhanced_texture),
        )


@dataclass
class RenderOutput:
    """One rendered frame per keypoint row.

    image: [N, 3, H, W], low-frequency image + warped texture; not clamped (may leave [-1, 1]).
    mask: [N, 1, H, W] in [0, 1] (predicted segmentation; ones if the model predicts none).
    uv: [N, H, W, 2] sampling grid in grid_sample convention (x then y, align_corners=False).
    lowfreq: [N, 3, H, W] in [-1, 1].
    warped_texture: [N, 3, H, W] the texture sampled at `uv` (the high-frequency layer).
    """

    image: Tensor
    mask: Tensor
    uv: Tensor
    lowfreq: Tensor
    warped_texture: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def warp(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup exactly as the official code: zero padding, align_corners=False."""
    return F.grid_sample(texture, uv, mode="bilinear", padding_mode="zeros", align_corners=False)


def mask_image(image: Tensor, mask: Tensor) -> Tensor:
    """Composite on a -1 (black) background, as the official code masks images."""
    return image * mask + (-1) * (1 - mask)


class BilayerModel(nn.Module):
    """The five inference networks plus the glue the official runner puts between them."""

    def __init__(self, config: BilayerConfig):
        super().__init__()
        self.config = config
        self.identity_embedder = IdentityEmbedder(config)
        self.texture_generator = TextureGenerator(config)
        self.keypoints_embedder = KeypointsEmbedder(config)
        self.inference_generator = InferenceGenerator(config)
        self.texture_enhancer = TextureEnhancer(config)
        # The enhancer is optional in official runs; it is used only once weights are loaded
        # for it (or a built-in model enables it).
        self.has_enhancer = False
        # Inference only: the enhancer's inner gradient is taken w.r.t. the texture alone.
        self.requires_grad_(False)

    # ---------------------------------------------------------------- weights
    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in NETWORK_NAMES}

    @property
    def dtype(self) -> torch.dtype:
        return self.inference_generator.identity_grid.dtype

    # ---------------------------------------------------------------- input checks
    def _check_image(self, name: str, x: Tensor, channels: int) -> Tensor:
        size = self.config.image_size
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2:] != (size, size):
            raise InputError(
                f"{name} has shape {tuple(x.shape)}, expected [B, {channels}, {size}, {size}]; "
                f"crop and resize with reference.preprocessing.crop_face first"
            )
        if not torch.isfinite(x).all():
            raise InputError(f"{name} contains NaN or infinite values")
        return x.to(self.dtype)

    def _check_keypoints(self, keypoints: Tensor) -> Tensor:
        width = 2 * self.config.num_keypoints
        if not isinstance(keypoints, torch.Tensor):
            raise InputError(f"keypoints must be a torch.Tensor, got {type(keypoints).__name__}")
        if keypoints.dim() != 2 or keypoints.shape[1] != width:
            raise InputError(
                f"keypoints have shape {tuple(keypoints.shape)}, expected [N, {width}] "
                f"(x0, y0, x1, y1, ... normalised to [-1, 1])"
            )
        if not torch.isfinite(keypoints).all():
            raise InputError("keypoints contain NaN or infinite values; re-run landmark detection on that frame")
        return keypoints.to(self.dtype)

    # ---------------------------------------------------------------- identity
    @torch.no_grad()
    def init_identity(
        self,
        image: Tensor,
        keypoints: Tensor,
        mask: Tensor | None = None,
        stickman: Tensor | None = None,
    ) -> IdentityState:
        """Once-per-identity work for a batch of source images.

        image: [B, 3, H, W] in [-1, 1]; keypoints: [B, 136] in [-1, 1]; mask: [B, 1, H, W] in
        [0, 1] (default: all ones); stickman: [B, 3, H, W] (default: drawn from the keypoints
        the official way).
        """
        cfg = self.config
        image = self._check_image("image", image, 3)
        keypoints = self._check_keypoints(keypoints)
        b = image.shape[0]
        if keypoints.shape[0] != b:
            raise InputError(f"image batch {b} and keypoints batch {keypoints.shape[0]} differ")
        mask = torch.ones_like(image[:, :1]) if mask is None else self._check_image("mask", mask, 1)
        if stickman is None:
            stickman = draw_stickmen(keypoints, cfg.image_size, cfg.stickmen_thickness).to(self.dtype)
        else:
            stickman = self._check_image("stickman", stickman, 3)

        texture, params = self.embed_identity(image, stickman, mask)
        state = IdentityState(texture=texture, adaptive_params=params)
        if self.has_enhancer:
            state.enhanced_texture = self.enhance_texture(texture, image, keypoints, params)
        return state

    def embed_identity(self, image: Tensor, stickman: Tensor, mask: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The identity embedder, texture generator and adaptive-parameter projection on checked
        inputs: (texture [B, 3, H, W], adaptive parameters in assignment order)."""
        cfg = self.config
        embedder_input = mask_image(image, mask) if cfg.emb_apply_masks else image
        if not cfg.emb_no_stickman:
            embedder_input = torch.cat([embedder_input, stickman], dim=1)
        embeddings = self.identity_embedder(embedder_input)
        return self.texture_generator(embeddings), self.inference_generator.adaptive_params(embeddings)

    def predict_layers(self, keypoints: Tensor, params) -> tuple[Tensor, Tensor, Tensor]:
        """The frame network's three outputs before the warp: the UV displacement [N, 2, H, W]
        (grid_sample units, added to the identity grid), the low-frequency image and the mask."""
        pose = self.keypoints_embedder(keypoints)
        delta_uv, lowfreq, seg_logits = self.inference_generator(pose, params)
        mask = torch.sigmoid(seg_logits) if seg_logits is not None else torch.ones_like(lowfreq[:, :1])
        return delta_uv, lowfreq, mask

    def _predict(self, keypoints: Tensor, params) -> tuple[Tensor, Tensor, Tensor]:
        delta_uv, lowfreq, mask = self.predict_layers(keypoints, params)
        uv = self.inference_generator.identity_grid + delta_uv.permute(0, 2, 3, 1)
        return uv, lowfreq, mask

    def enhance_texture(self, texture: Tensor, source_image: Tensor, source_keypoints: Tensor, params,
                        loss_gradient=None) -> Tensor:
        """The enhancer's unrolled refinement of the texture (official test-time path).

        Each step takes the gradient, w.r.t. the texture, of the guiding loss between the
        source image and its reconstruction `lowfreq + warp(texture)` (both masked by the
        predicted source segmentation), feeds [texture, gradient] to the enhancer and adds
        tanh of its output to the texture. `loss_gradient` computes that gradient (default:
        autograd, as the official code; an exportable graph passes an explicit adjoint with the
        same signature as `reconstruction_loss_gradient`).
        """
        loss_gradient = loss_gradient or reconstruction_loss_gradient
        cfg = self.config
        uv, lowfreq, seg = self._predict(source_keypoints, params)
        use_seg = cfg.inf_pred_segmentation
        target = mask_image(source_image, seg) if use_seg else source_image
        enhanced = texture
        for _ in range(cfg.enh_unrolling_depth):
            grad = loss_gradient(enhanced, target, lowfreq, uv, seg if use_seg else None, cfg.enh_guiding_rgb_loss_type)
            update = self.texture_enhancer(torch.cat([enhanced, grad], dim=1))
            enhanced = enhanced + torch.tanh(update[:, :3])
        return enhanced

    # ---------------------------------------------------------------- frames
    @torch.no_grad()
    def render(self, state: IdentityState, keypoints: Tensor, enhanced: bool | None = None) -> RenderOutput:
        """Once-per-frame work: render one frame per keypoint row.

        keypoints: [N, 136] with N a multiple of the state's batch B; frames are grouped by
        identity (rows [i*T, (i+1)*T) belong to identity i, as in the official code).
        `enhanced=None` uses the enhanced texture when the state has one; False forces the
        base texture (the official `pred_target_imgs`).
        """
        keypoints = self._check_keypoints(keypoints)
        b, n = state.batch_size, keypoints.shape[0]
        if n % b:
            raise InputError(f"{n} keypoint rows cannot be split evenly over {b} identities")
        use_enhanced = state.enhanced_texture is not None if enhanced is None else enhanced
        if use_enhanced and state.enhanced_texture is None:
            raise InputError("enhanced=True but the identity state has no enhanced texture (no enhancer loaded)")
        texture = state.enhanced_texture if use_enhanced else state.texture
        params = [(w.to(self.dtype), bias.to(self.dtype)) for w, bias in state.adaptive_params]
        uv, lowfreq, mask = self._predict(keypoints, params)
        warped = warp(texture.to(self.dtype).repeat_interleave(n // b, dim=0), uv)
        return RenderOutput(image=lowfreq + warped, mask=mask, uv=uv, lowfreq=lowfreq, warped_texture=warped)


def reconstruction_loss_gradient(texture: Tensor, target: Tensor, lowfreq: Tensor, uv: Tensor,
                                 seg: Tensor | None, loss_type: str) -> Tensor:
    """d(guiding loss)/d(texture) by autograd, as the official enhancer computes it.

    The loss is sum((target - recon)^2) / 2 ("sse") or sum|target - recon| ("l1") with
    recon = lowfreq + warp(texture, uv), masked by `seg` when given.
    """
    with torch.enable_grad():
        leaf = texture.detach().clone().requires_grad_(True)
        recon = lowfreq.detach() + warp(leaf, uv.detach())
        if seg is not None:
            recon = mask_image(recon, seg.detach())
        diff = target.detach() - recon
        loss = (diff**2).sum() / 2 if loss_type == "sse" else diff.abs().sum()
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad
