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
- `SplitFrameGraph`: the frame graph without its warp, for apps that warp with the GPU's
  texture sampler: keypoints, adaptive parameters -> UV, low-frequency image, mask; the image is
  composited by a shader the bundle ships (shaders/, `composite_image`).

The frame graphs take their warp as a module (`export.warp`): the reference's `grid_sample`
by default (golden outputs are computed with it), and a target may convert them with another
form of the same sampling (`with_warp`; TFLite uses the fused warp).

Everything is written with ordinary tensor ops that exporters map one to one. In particular
the enhancer's inner gradient (autograd in the reference) is the adjoint of bilinear sampling,
a scatter-add of the four bilinear weights (`grid_sample_adjoint`).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..reference.model import BilayerModel, IdentityState, mask_image, warp
from ..reference.networks import AdaptiveBatchNorm
from .warp import GridSampleWarp, identity_grid_plus


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


class _ChannelsLastConv1x1(nn.Module):
    """`AdaptiveConv1x1` contracting over channels-last pixels: one BATCH_MATMUL(pixels [N, HW, C],
    W [N, Co, C], adj_y) between the convolutions' NHWC tensors, where `torch.bmm(W, x)` costs a
    TRANSPOSE on each side in a TFLite graph. The same sums as the reference in another order
    (float32 round-off apart, 1e-10 in float64). The pixels stay 3-D: a 4-D [N, H, W, C]
    operand was computed wrongly by the LiteRT 2.3 GPU accelerator."""

    takes_adaptive_params = True

    def forward(self, x: Tensor, params) -> Tensor:
        weight, bias = next(params)
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        out = torch.einsum("npc,noc->npo", pixels, weight) + bias[:, None, :]
        return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class _ChannelsLastAdaptiveNorm(AdaptiveBatchNorm):
    """`AdaptiveBatchNorm` with its per-identity affine applied to channels-last pixels. The
    reference's `scale[:, :, None, None]` pins the layer to NCHW, so litert-torch wrapped each
    wrapped several in a pair of TRANSPOSEs (ten full-size transposes per frame in the paper
    configuration); here the explicit permutes cancel against the converter's own. The same
    elementwise ops: bit-identical."""

    def __init__(self, original: AdaptiveBatchNorm):
        nn.Module.__init__(self)
        self.norm_layer = original.norm_layer

    def forward(self, x: Tensor, params) -> Tensor:
        scale, shift = next(params)
        pixels = self.norm_layer(x).permute(0, 2, 3, 1)
        return (pixels * scale[:, None, None, :] + shift[:, None, None, :]).permute(0, 3, 1, 2)


def for_mobile_runtimes(network: nn.Module) -> nn.Module:
    """A copy of the frame network shaped for XNNPACK and the GPU accelerator, computing the same
    numbers: each adaptive skip conv of an upsampling block runs before the nearest upsampling
    (a per-pixel op commutes with it: 4x fewer pixels) and contracts channels-last
    (`_ChannelsLastConv1x1`), and each adaptive norm applies its affine channels-last
    (`_ChannelsLastAdaptiveNorm`). The weights are copied unchanged. The frame graphs run one
    frame of one identity (batch 1), which is all the channels-last layers handle."""
    from ..reference.networks import AdaptiveConv1x1, ResBlock

    network = copy.deepcopy(network)
    for block in list(network.modules()):
        if not (isinstance(block, ResBlock) and block.has_skip):
            continue
        layers = list(block.skip)
        if len(layers) == 2 and isinstance(layers[0], nn.Upsample) and isinstance(layers[1], AdaptiveConv1x1):
            layers = [layers[1], layers[0]]
        block.skip = nn.Sequential(*[_ChannelsLastConv1x1() if isinstance(m, AdaptiveConv1x1) else m for m in layers])
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is AdaptiveBatchNorm:
                setattr(parent, name, _ChannelsLastAdaptiveNorm(child))
    return network.train(network.training)  # the new layers in the copy's mode


def _frame_model(model: BilayerModel) -> BilayerModel:
    """`model` sharing every network but a frame network of its own (`for_mobile_runtimes`)."""
    shaped = copy.copy(model)
    shaped._modules = dict(model._modules)
    shaped.inference_generator = for_mobile_runtimes(model.inference_generator)
    return shaped


class _WarpedFrame(nn.Module):
    """What the frame graphs share: the frame network, then image = lowfreq + warp(texture)."""

    def __init__(self, model: BilayerModel, debug_outputs: bool, warp: nn.Module | None):
        super().__init__()
        self.model = model
        self.debug_outputs = debug_outputs
        self.warp = warp if warp is not None else GridSampleWarp(model.inference_generator.identity_grid)

    @property
    def warp_kind(self) -> str:
        """The warp's form: "decomposed" (torch's grid_sample) or "fused" (export.warp)."""
        return self.warp.kind

    def with_warp(self, warp: nn.Module) -> "_WarpedFrame":
        """The same graph (sharing the model and constants) with another form of the warp."""
        other = copy.copy(self)
        other._modules = dict(self._modules)
        other.warp = warp
        return other

    def output_spec(self) -> list[TensorSpec]:
        return _frame_outputs(self.model.config.image_size, self.debug_outputs)

    def _render(self, keypoints: Tensor, warp, params):
        """The outputs, with `warp(delta_uv)` -> the warped texture."""
        delta_uv, lowfreq, mask = self.model.predict_layers(keypoints, params)
        image = lowfreq + warp(delta_uv)
        if self.debug_outputs:
            return image, mask, identity_grid_plus(delta_uv, self.model.inference_generator.identity_grid), lowfreq
        return image, mask


class FrameGraph(_WarpedFrame):
    """(keypoints, texture, adaptive_params) -> (image, mask[, uv, lowfreq]).

    The frame graphs run the network shaped for the mobile runtimes (`for_mobile_runtimes`);
    `for_mobile=False` runs the reference network itself, which computes the golden outputs.
    """

    name = "frame"
    purpose = "once per frame: driving keypoints + the identity graph's outputs -> the frame"

    def __init__(self, model: BilayerModel, layout: list[AdaptiveEntry], debug_outputs: bool = False,
                 warp: nn.Module | None = None, for_mobile: bool = True):
        super().__init__(_frame_model(model) if for_mobile else model, debug_outputs, warp)
        self.layout = layout

    def input_spec(self) -> list[TensorSpec]:
        size, cfg = self.model.config.image_size, self.model.config
        return [_keypoints("keypoints", cfg.num_keypoints, "the driving frame's landmarks, normalised like "
                           "source_keypoints"),
                _image("texture", size, "the identity graph's texture output", rng=None),
                _adaptive_params(self.layout)]

    def forward(self, keypoints: Tensor, texture: Tensor, adaptive_params: Tensor):
        return self._render(keypoints, lambda delta: self.warp(texture, delta),
                            unpack_adaptive_params(adaptive_params, self.layout))


class _FixedConv1x1(nn.Module):
    """A baked `AdaptiveConv1x1`: an ordinary 1x1 convolution with the identity's weights."""

    takes_adaptive_params = True

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[2], weight.shape[1], 1)
        self.conv.weight.data = weight[0, :, :, None, None].detach().clone().contiguous()
        self.conv.bias.data = bias[0].detach().clone().contiguous()

    def forward(self, x: Tensor, params) -> Tensor:
        return self.conv(x)


class _FixedAffineNorm(nn.Module):
    """A baked adaptive norm: the parameter-free norm, then a constant scale and shift (a
    per-channel vector for `AdaptiveBatchNorm`, a map for `AdaptiveSpadeBatchNorm`, whose 1x1
    convs act on a learned constant and so fold into constants too)."""

    takes_adaptive_params = True

    def __init__(self, norm_layer: nn.Module, scale: Tensor, shift: Tensor):
        super().__init__()
        self.norm_layer = norm_layer
        self.register_buffer("scale", scale.detach().clone().contiguous())
        self.register_buffer("shift", shift.detach().clone().contiguous())

    def forward(self, x: Tensor, params) -> Tensor:
        return self.norm_layer(x) * self.scale + self.shift


def bake_adaptive_layers(network: nn.Module, params: list[tuple[Tensor, Tensor]], run) -> nn.Module:
    """A copy of `network` whose adaptive layers hold one identity's parameters as constants.

    Each adaptive layer becomes an ordinary layer: a per-identity 1x1 conv a CONV_2D with constant
    weights (a GPU accelerator rejects BATCH_MATMUL with a constant operand; XNNPACK takes
    CONV_2D), an adaptive norm a constant affine, a SPADE norm's scale and shift maps constants.
    `run(network_copy, params)` runs one forward pass, which records which entries each layer
    consumes (the order in which the network takes them).
    """
    from ..reference.networks import AdaptiveBatchNorm, AdaptiveConv1x1, AdaptiveSpadeBatchNorm, adaptive_conv1x1

    network = copy.deepcopy(network)
    taken: list[int] = [0]
    consumed: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}

    def counting(entries):
        for entry in entries:
            taken[0] += 1
            yield entry

    convs = (AdaptiveConv1x1, _ChannelsLastConv1x1)
    leaves = [m for m in network.modules() if isinstance(m, (*convs, AdaptiveBatchNorm, AdaptiveSpadeBatchNorm))]
    originals = {m: m.forward for m in leaves}

    def recorder(module):
        def forward(x, entries):
            start = taken[0]
            out = originals[module](x, entries)
            consumed[module] = params[start:taken[0]]
            return out
        return forward

    for m in leaves:
        m.forward = recorder(m)
    try:
        with torch.no_grad():
            run(network, counting(params))
    finally:
        for m in leaves:
            del m.forward
    parents = {child: (parent, name) for parent in network.modules() for name, child in parent.named_children()}
    for m in leaves:
        if m not in consumed:
            continue  # a SPADE norm's own conv placeholders: never called
        entries = consumed[m]
        if isinstance(m, convs):
            fixed = _FixedConv1x1(*entries[0])
        elif isinstance(m, AdaptiveBatchNorm):
            scale, shift = entries[0]
            fixed = _FixedAffineNorm(m.norm_layer, scale[:, :, None, None], shift[:, :, None, None])
        else:
            (w_weight, w_bias), (b_weight, b_bias) = entries
            with torch.no_grad():
                scale = adaptive_conv1x1(m.pixel_feats, w_weight, w_bias) + 1.0
                shift = adaptive_conv1x1(m.pixel_feats, b_weight, b_bias)
            fixed = _FixedAffineNorm(m.norm_layer, scale, shift)
        parent, name = parents[m]
        setattr(parent, name, fixed)
    return network


class BakedFrameGraph(_WarpedFrame):
    """The frame graph of one identity: keypoints -> (image, mask[, uv, lowfreq]).

    The identity is folded into the network (`bake_adaptive_layers`): its texture is a buffer
    and every adaptive layer an ordinary layer with constant weights, so the graph has the
    fewest inputs and the ops accelerators take best. Constants are contiguous buffers of their
    own: a converter that keeps a constant as a strided view of a larger tensor can silently
    compute garbage (seen with litert-torch 0.10).
    """

    name = "baked_frame"
    purpose = "once per frame, one identity folded in: driving keypoints -> the frame"

    def __init__(self, model: BilayerModel, state: IdentityState, debug_outputs: bool = False,
                 warp: nn.Module | None = None, for_mobile: bool = True):
        if state.batch_size != 1:
            raise ValueError("bake one identity at a time (state batch must be 1)")
        baked = copy.copy(model)
        baked._modules = dict(model._modules)
        pose = model.keypoints_embedder(torch.zeros(1, 2 * model.config.num_keypoints, dtype=model.dtype))
        network = for_mobile_runtimes(model.inference_generator) if for_mobile else model.inference_generator
        baked.inference_generator = bake_adaptive_layers(network,
                                                         list(state.adaptive_params),
                                                         lambda network, entries: network(pose, entries))
        super().__init__(baked, debug_outputs, warp)
        texture = state.enhanced_texture if state.enhanced_texture is not None else state.texture
        self.texture = texture.detach().clone().contiguous()  # kept for `with_warp`, folded into the warp
        self.baked_warp = self.warp.baked(self.texture)
        self.layout = adaptive_layout(state)

    def with_warp(self, warp: nn.Module) -> "BakedFrameGraph":
        other = super().with_warp(warp)
        other.baked_warp = warp.baked(self.texture)
        return other

    def input_spec(self) -> list[TensorSpec]:
        return [_keypoints("keypoints", self.model.config.num_keypoints, "the driving frame's landmarks, normalised "
                           "like source_keypoints")]

    def forward(self, keypoints: Tensor):
        return self._render(keypoints, self.baked_warp, [])


class SplitFrameGraph(nn.Module):
    """The frame graph without its warp: (keypoints, adaptive_params) -> (uv, lowfreq, mask).

    The app composites image = lowfreq + texture sampled at uv on the GPU (the bundle's shaders);
    validation composites the artifact's outputs with the golden texture the same way.
    """

    name = "split_frame"
    purpose = "once per frame, for apps that warp on the GPU: driving keypoints + adaptive parameters -> uv, lowfreq, mask"
    # the image an app composites from the outputs and the identity's texture, gated like an output
    composited = {"image": {"lowfreq": "lowfreq", "texture": "texture", "uv": "uv"}}

    def __init__(self, model: BilayerModel, layout: list[AdaptiveEntry], for_mobile: bool = True):
        super().__init__()
        self.model = _frame_model(model) if for_mobile else model
        self.layout = layout

    def input_spec(self) -> list[TensorSpec]:
        return [_keypoints("keypoints", self.model.config.num_keypoints, "the driving frame's landmarks, normalised "
                           "like source_keypoints"), _adaptive_params(self.layout)]

    def output_spec(self) -> list[TensorSpec]:
        size = self.model.config.image_size
        outputs = _frame_outputs(size, debug_outputs=True)
        return [outputs[2], _image("lowfreq", size, "low-frequency layer of the image: the shader adds the warped "
                                   "texture to it"), outputs[1]]

    def composite_spec(self) -> list[TensorSpec]:
        """What validation adds: the identity's texture (from the golden set) and the image the
        bundle's compositor makes of it and the outputs (gated)."""
        size = self.model.config.image_size
        return [_image("texture", size, "the identity graph's texture output", rng=None),
                _frame_outputs(size, debug_outputs=False)[0]]

    def forward(self, keypoints: Tensor, adaptive_params: Tensor):
        params = unpack_adaptive_params(adaptive_params, self.layout)
        delta_uv, lowfreq, mask = self.model.predict_layers(keypoints, params)
        return identity_grid_plus(delta_uv, self.model.inference_generator.identity_grid), lowfreq, mask


@torch.no_grad()
def contract_graphs(model: BilayerModel) -> list[nn.Module]:
    """The graphs of a bundle for `model`, as a bundle exports them (frame graphs with their
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
            BakedFrameGraph(model, state, debug_outputs=True), SplitFrameGraph(model, layout)]


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
