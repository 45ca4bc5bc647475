"""The model split into the graphs a device runs, each declaring its own tensor contract.

Every graph has a `name`, a one-line `purpose`, and `input_spec()` / `output_spec()`: the
names, shapes, dtypes, value ranges and meaning of its tensors (`TensorSpec`), the one
definition the exporters name the tensors after, the bundle's manifest records, the tests check
and docs/contract.md's tables are generated from (`contract_tables`).

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

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..reference.model import BilayerModel, IdentityState, mask_image, warp


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a graph's contract.

    kind says how an artifact's value is compared with the reference's: "image" (PSNR over
    the reference's range), "warp" (a grid_sample grid: also the mean error in output pixels),
    "mask", "keypoints" or "state" (values passed on from one graph to the next).
    gated: parity of this output decides whether an artifact passes (what the user sees).
    range: the values an app feeds or can expect, None where they are not bounded.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    description: str
    range: tuple[float, float] | None = None
    dtype: str = "float32"
    gated: bool = False

    def as_dict(self) -> dict:
        entry = asdict(self)
        entry["shape"] = list(self.shape)
        entry["range"] = None if self.range is None else list(self.range)
        return entry


def _image(name: str, size: int, description: str, gated: bool = False, rng=(-1.0, 1.0)) -> TensorSpec:
    return TensorSpec(name, (1, 3, size, size), "image", description, rng, gated=gated)


def _keypoints(name: str, count: int, description: str) -> TensorSpec:
    return TensorSpec(name, (1, 2 * count), "keypoints", description, (-1.0, 1.0))


def _frame_outputs(size: int, debug_outputs: bool) -> list[TensorSpec]:
    outputs = [
        _image("image", size, "the rendered frame: lowfreq + texture warped by uv; not clamped", gated=True, rng=None),
        TensorSpec("mask", (1, 1, size, size), "mask", "predicted foreground segmentation", (0.0, 1.0)),
    ]
    if debug_outputs:
        outputs += [
            TensorSpec("uv", (1, size, size, 2), "warp", "texture sampling grid (x, y), grid_sample convention "
                       "(align_corners=False); values beyond [-1, 1] sample zero padding", None),
            _image("lowfreq", size, "low-frequency layer of the image"),
        ]
    return outputs


def _adaptive_params(layout: list["AdaptiveEntry"]) -> TensorSpec:
    size = layout[-1].offset + layout[-1].size if layout else 0
    return TensorSpec("adaptive_params", (1, size), "state",
                      "every adaptive layer's parameters of the frame network, packed (manifest "
                      "adaptive_params_layout); pass on unchanged from the identity graph")

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


def pack_adaptive_params(params: list[tuple[Tensor, Tensor]]) -> Tensor:
    """[B, P]: every entry's weight then bias (`IdentityState.adaptive_params` order), flattened
    row-major, in assignment order."""
    b = params[0][0].shape[0]
    return torch.cat([torch.cat([w.reshape(b, -1), bias.reshape(b, -1)], 1) for w, bias in params], 1)


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

    name = "identity"
    purpose = "once per identity: a source crop -> its texture and the frame network's adaptive parameters"

    def __init__(self, model: BilayerModel, layout: list[AdaptiveEntry]):
        super().__init__()
        self.model = model
        self.layout = layout

    def input_spec(self) -> list[TensorSpec]:
        size, cfg = self.model.config.image_size, self.model.config
        return [
            _image("source_image", size, "RGB face crop, (uint8 / 255 - 0.5) * 2"),
            _image("source_stickman", size, "the crop's landmarks drawn as a stickman (manifest preprocessing)"),
            _keypoints("source_keypoints", cfg.num_keypoints, "the crop's landmarks, (pixel / crop side - 0.5) * 2, "
                       "interleaved x0, y0, x1, y1, ... (read only by the enhancer)"),
            TensorSpec("source_mask", (1, 1, size, size), "mask", "foreground mask of the crop; all ones when none",
                       (0.0, 1.0)),
        ]

    def output_spec(self) -> list[TensorSpec]:
        size = self.model.config.image_size
        return [_image("texture", size, "the identity's texture (enhanced when the model has an enhancer); pass on "
                       "unchanged", gated=True, rng=None), _adaptive_params(self.layout)]

    def forward(self, source_image: Tensor, source_stickman: Tensor, source_keypoints: Tensor,
                source_mask: Tensor) -> tuple[Tensor, Tensor]:
        # argument names are the contract's input names (exporters name graph inputs after them)
        m = self.model
        texture, params = m.embed_identity(source_image, source_stickman, source_mask)
        if m.has_enhancer:
            # the explicit adjoint instead of autograd: exporters see ordinary tensor ops
            texture = m.enhance_texture(texture, source_image, source_keypoints, params,
                                        loss_gradient=reconstruction_loss_gradient_explicit)
        return texture, pack_adaptive_params(params)


class FrameGraph(nn.Module):
    """(keypoints, texture, adaptive_params) -> (image, mask[, uv, lowfreq])."""

    name = "frame"
    purpose = "once per frame: driving keypoints + the identity graph's outputs -> the frame"

    def __init__(self, model: BilayerModel, layout: list[AdaptiveEntry], debug_outputs: bool = False):
        super().__init__()
        self.model = model
        self.layout = layout
        self.debug_outputs = debug_outputs

    def input_spec(self) -> list[TensorSpec]:
        size, cfg = self.model.config.image_size, self.model.config
        return [_keypoints("keypoints", cfg.num_keypoints, "the driving frame's landmarks, normalised like "
                           "source_keypoints"),
                _image("texture", size, "the identity graph's texture output", rng=None),
                _adaptive_params(self.layout)]

    def output_spec(self) -> list[TensorSpec]:
        return _frame_outputs(self.model.config.image_size, self.debug_outputs)

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

    name = "baked_frame"
    purpose = "once per frame, one identity folded in: driving keypoints -> the frame"

    def __init__(self, model: BilayerModel, state: IdentityState, debug_outputs: bool = False):
        super().__init__()
        if state.batch_size != 1:
            raise ValueError("bake one identity at a time (state batch must be 1)")
        self.model = model
        self.debug_outputs = debug_outputs
        texture = state.enhanced_texture if state.enhanced_texture is not None else state.texture
        self.register_buffer("texture", texture.detach().clone().contiguous())
        self.num_params = len(state.adaptive_params)
        self.layout = adaptive_layout(state)
        for i, (w, b) in enumerate(state.adaptive_params):
            self.register_buffer(f"adaptive_{i:02d}_weight", w.detach().clone().contiguous())
            self.register_buffer(f"adaptive_{i:02d}_bias", b.detach().clone().contiguous())

    def input_spec(self) -> list[TensorSpec]:
        return [_keypoints("keypoints", self.model.config.num_keypoints, "the driving frame's landmarks, normalised "
                           "like source_keypoints")]

    def output_spec(self) -> list[TensorSpec]:
        return _frame_outputs(self.model.config.image_size, self.debug_outputs)

    def forward(self, keypoints: Tensor):
        params = [(getattr(self, f"adaptive_{i:02d}_weight"), getattr(self, f"adaptive_{i:02d}_bias"))
                  for i in range(self.num_params)]
        uv, lowfreq, mask = self.model._predict(keypoints, params)
        image = lowfreq + warp(self.texture, uv)
        if self.debug_outputs:
            return image, mask, uv, lowfreq
        return image, mask


@torch.no_grad()
def contract_graphs(model: BilayerModel) -> list[nn.Module]:
    """The three graphs of a bundle for `model`, as a bundle exports them (frame graphs with their
    debug outputs), for describing their contract: the baked identity is a blank crop's."""
    size, cfg = model.config.image_size, model.config
    had_enhancer = model.has_enhancer
    model.has_enhancer = False  # the contract does not depend on the texture's values
    try:
        state = model.init_identity(torch.zeros(1, 3, size, size), torch.zeros(1, 2 * cfg.num_keypoints))
    finally:
        model.has_enhancer = had_enhancer
    layout = adaptive_layout(state)
    return [IdentityGraph(model, layout), FrameGraph(model, layout, debug_outputs=True),
            BakedFrameGraph(model, state, debug_outputs=True)]


def contract_tables(graphs: list[nn.Module]) -> str:
    """Markdown tables of every graph's inputs and outputs (docs/contract.md is generated from
    them: `make docs`)."""
    lines = []
    for graph in graphs:
        lines += [f"### `{graph.name}`: {graph.purpose}", "",
                  "| | name | shape | dtype | range | kind | meaning |", "|---|---|---|---|---|---|---|"]
        for side, specs in (("in", graph.input_spec()), ("out", graph.output_spec())):
            for t in specs:
                rng = "-" if t.range is None else f"[{t.range[0]:g}, {t.range[1]:g}]"
                kind = t.kind + (", gated" if t.gated else "")
                lines.append(f"| {side} | `{t.name}` | {list(t.shape)} | {t.dtype} | {rng} | {kind} | {t.description} |")
        lines.append("")
    return "\n".join(lines)
