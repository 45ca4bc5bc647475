"""Typed configuration of the bi-layer model.

Field names are the official command-line flags (`runs/<experiment>/args.txt` uses them), so a
config can be read from an official run without a translation table. Only the flags that change
the inference networks are kept; `BilayerConfig.paper()` is the configuration of the released
model (argparse defaults plus the flags of the official training scripts, with the traps of
those scripts resolved as documented in docs/reference.md).

A config can come from three places: the paper defaults, an official `args.txt`, and the tensor
shapes of a checkpoint. `resolve_config` merges the last two and raises `ConfigError` naming the
key when they disagree.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError, ConfigError
from .user_files import read_text

NETWORK_NAMES = (
    "identity_embedder",
    "texture_generator",
    "keypoints_embedder",
    "inference_generator",
    "texture_enhancer",
)
BASE_NETWORK_NAMES = NETWORK_NAMES[:4]

# Flags whose value is fixed in this reference: the inference networks are only implemented
# for these choices (those of the released model). Any other value in args.txt is rejected.
SUPPORTED_FIXED_FLAGS = {
    "emb_norm_layer_type": "none",
    "emb_activation_type": "leakyrelu",
    "emb_downsampling_type": "avgpool",
    "tex_norm_layer_type": "ada_spade_bn",
    "tex_activation_type": "leakyrelu",
    "tex_upsampling_type": "nearest",
    "tex_skip_layer_type": "ada_conv",
    "tex_pixelwise_bias_type": "none",
    "inf_norm_layer_type": "ada_bn",
    "inf_activation_type": "leakyrelu",
    "inf_upsampling_type": "nearest",
    "inf_skip_layer_type": "ada_conv",
    "pse_norm_layer_type": "none",
    "pse_activation_type": "leakyrelu",
    "enh_norm_layer_type": "none",
    "enh_activation_type": "leakyrelu",
    "enh_downsampling_type": "avgpool",
    "enh_upsampling_type": "nearest",
    "num_source_frames": 1,
}


@dataclass(frozen=True)
class BilayerConfig:
    """Architecture of the five inference networks (official flag names)."""

    image_size: int = 256
    num_keypoints: int = 68
    eps: float = 1e-7
    # identity embedder
    emb_num_channels: int = 64
    emb_max_channels: int = 512
    emb_output_tensor_size: int = 8
    emb_no_stickman: bool = False
    emb_apply_masks: bool = True
    # texture generator
    tex_num_channels: int = 64
    tex_max_channels: int = 512
    tex_input_tensor_size: int = 4
    # keypoints embedder
    pse_in_channels: int = 136
    pse_num_channels: int = 256
    pse_num_blocks: int = 4
    pse_use_harmonic_enc: bool = False
    pse_num_harmonics: int = 4
    # inference generator
    inf_num_channels: int = 32
    inf_max_channels: int = 256
    inf_input_tensor_size: int = 4
    inf_pred_segmentation: bool = True
    # texture enhancer
    enh_num_channels: int = 64
    enh_max_channels: int = 128
    enh_bottleneck_tensor_size: int = 128
    enh_num_blocks: int = 8
    enh_unrolling_depth: int = 4
    enh_guiding_rgb_loss_type: str = "sse"
    # stickman drawing
    stickmen_thickness: int = 2

    @classmethod
    def paper(cls) -> "BilayerConfig":
        """The configuration of the released model (image 256, the official scripts' flags)."""
        return cls()

    def __post_init__(self) -> None:
        for name, size in (
            ("emb_output_tensor_size", self.emb_output_tensor_size),
            ("tex_input_tensor_size", self.tex_input_tensor_size),
            ("inf_input_tensor_size", self.inf_input_tensor_size),
            ("enh_bottleneck_tensor_size", self.enh_bottleneck_tensor_size),
        ):
            ratio = self.image_size // size if size > 0 else 0
            if size <= 0 or self.image_size % size or ratio & (ratio - 1):
                raise ConfigError(
                    f"{name}={size} must divide image_size={self.image_size} by a power of two"
                )
        if self.enh_guiding_rgb_loss_type not in ("sse", "l1"):
            raise ConfigError(
                f"enh_guiding_rgb_loss_type={self.enh_guiding_rgb_loss_type!r} is not supported; use 'sse' or 'l1'"
            )
        if self.pse_num_blocks < 1:
            raise ConfigError(f"pse_num_blocks={self.pse_num_blocks} must be >= 1")

    # ----- derived sizes (the official networks compute these the same way) -----
    @property
    def num_generator_blocks(self) -> int:
        """Upsampling blocks of the texture generator (= decoder blocks of the embedder)."""
        return int(math.log2(self.image_size // self.tex_input_tensor_size))

    @property
    def num_inference_blocks(self) -> int:
        return int(math.log2(self.image_size // self.inf_input_tensor_size))

    @property
    def num_embedder_down_blocks(self) -> int:
        return int(math.log2(self.image_size // self.emb_output_tensor_size))

    @property
    def num_enhancer_down_blocks(self) -> int:
        return int(math.log2(self.image_size // self.enh_bottleneck_tensor_size))

    @property
    def keypoints_embedder_in_features(self) -> int:
        if self.pse_use_harmonic_enc:
            return self.pse_in_channels * self.pse_num_harmonics * 2
        return self.pse_in_channels


_FIELDS = {f.name: f for f in dataclasses.fields(BilayerConfig)}


def _parse_value(raw: str, like):
    if isinstance(like, bool):
        if raw not in ("True", "False"):
            raise ConfigError(f"expected True or False, found {raw!r}")
        return raw == "True"
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


def read_args_txt(path: Path) -> dict[str, str]:
    """Read an official `args.txt` (one `key: value` per line) into a dict of raw strings.

    A missing, empty, binary or non-UTF-8 file raises `CheckpointError` naming it (args.txt is
    part of the run directory); a line that is not `key: value` raises `ConfigError`.
    """
    text = read_text(path, "args.txt", CheckpointError,
                     fix="restore the args.txt the training run wrote (UTF-8 text, one 'key: value' per line), "
                         "or remove it to infer the config from the checkpoint alone")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            # `key:` with an empty value is written as "key: " and stripped by editors.
            key, sep, value = line.partition(":")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected 'key: value', found {line!r}")
        values[key.strip()] = value.strip()
    return values


def config_values_from_args(args: Mapping[str, str]) -> dict[str, object]:
    """Turn raw args.txt values into typed `BilayerConfig` fields.

    Architecture flags with a value this reference does not implement raise `ConfigError`.
    The inference overrides of the official README (`inf_apply_masks=False`,
    `enh_apply_masks=False`, `inf_pred_source_data=True`) are applied by the model itself, so
    those flags are ignored here.
    """
    for key, supported in SUPPORTED_FIXED_FLAGS.items():
        if key in args and str(args[key]) != str(supported):
            raise ConfigError(
                f"args.txt sets {key}={args[key]!r}, but this reference implements only "
                f"{key}={supported!r} (the released model's choice)"
            )
    if "folder_postfix" in args and not any(t in args["folder_postfix"] for t in ("2d", "3d")):
        raise ConfigError(
            f"args.txt sets folder_postfix={args['folder_postfix']!r}: only 68-point '2d'/'3d' "
            "keypoints are supported (the ArcSoft 197-point layout is not)"
        )
    values: dict[str, object] = {}
    for key, raw in args.items():
        if key in _FIELDS:
            try:
                values[key] = _parse_value(raw, _FIELDS[key].default)
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"args.txt key {key}: cannot parse {raw!r} ({exc})") from None
    return values


def config_values_from_state_dicts(state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, object]:
    """Infer architecture fields from the tensor shapes of official state dicts.

    Works on both the spectral-norm form (`weight_orig`) and the plain form (`weight`).
    Only the values the shapes determine are returned; the rest come from args.txt or the
    paper defaults.
    """

    def weight(sd: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
        for suffix in ("weight", "weight_orig"):
            if f"{prefix}.{suffix}" in sd:
                return sd[f"{prefix}.{suffix}"]
        return None

    def count_blocks(sd, prefix: str) -> int:
        indices = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
        return max(indices) + 1 if indices else 0

    values: dict[str, object] = {}
    inf = state_dicts.get("inference_generator")
    if inf is not None and "identity_grid" in inf:
        values["image_size"] = int(inf["identity_grid"].shape[1])
    tex = state_dicts.get("texture_generator")
    if tex is not None and "gen_tex_input" in tex:
        shape = tex["gen_tex_input"].shape
        values["tex_max_channels"] = int(shape[1])
        values["tex_input_tensor_size"] = int(shape[2])
        # the final norm sits after the upsampling blocks; its pixel_feats give the image size
        n_blocks = count_blocks(tex, "gen_tex.blocks.") - 1  # minus the final norm (the activation has no keys)
        head = weight(tex, "gen_tex.heads.0.0")
        if head is not None:
            values["tex_num_channels"] = int(head.shape[1])
        if n_blocks > 0:
            values.setdefault("image_size", int(shape[2]) * 2**n_blocks)
    emb = state_dicts.get("identity_embedder")
    if emb is not None:
        first = weight(emb, "net.enc.0")
        if first is not None:
            values["emb_num_channels"] = int(first.shape[0])
            values["emb_no_stickman"] = int(first.shape[1]) == 3
        n_down = count_blocks(emb, "net.enc.") - 1
        outs = [weight(emb, f"net.enc.{i}.block_feats.1") for i in range(1, n_down + 1)]
        if outs and all(o is not None for o in outs):
            values["emb_max_channels"] = max(int(o.shape[0]) for o in outs)
        if n_down > 0 and "image_size" in values:
            values["emb_output_tensor_size"] = int(values["image_size"]) // 2**n_down
    pse = state_dicts.get("keypoints_embedder")
    if pse is not None:
        first = weight(pse, "net.mlp.0")
        linears = sorted(
            int(k.split(".")[2]) for k in pse if k.startswith("net.mlp.") and k.endswith((".weight", ".weight_orig"))
        )
        harmonic = "frequencies" in pse
        values["pse_use_harmonic_enc"] = harmonic
        if first is not None:
            in_features = int(first.shape[1])
            if harmonic:
                num_harmonics = int(pse["frequencies"].shape[-1])
                values["pse_num_harmonics"] = num_harmonics
                values["pse_in_channels"] = in_features // (2 * num_harmonics)
            else:
                values["pse_in_channels"] = in_features
            values["pse_num_blocks"] = len(linears)
            if len(linears) > 1:
                values["pse_num_channels"] = int(first.shape[0])
    if inf is not None:
        first_norm = inf.get("gen_inf.blocks.0.block_feats.0.weight")
        if first_norm is not None:
            values["inf_max_channels"] = int(first_norm.shape[0])
        head = weight(inf, "gen_inf.heads.0.0")
        if head is not None:
            values["inf_num_channels"] = int(head.shape[1])
        values["inf_pred_segmentation"] = weight(inf, "gen_inf.heads.2.0") is not None
        n_blocks = count_blocks(inf, "gen_inf.blocks.") - 1
        if n_blocks > 0 and "image_size" in values:
            values["inf_input_tensor_size"] = int(values["image_size"]) // 2**n_blocks
    enh = state_dicts.get("texture_enhancer")
    if enh is not None:
        first = weight(enh, "net.blocks.0")
        if first is not None:
            values["enh_num_channels"] = int(first.shape[0])
        n_layers = count_blocks(enh, "net.blocks.")
        resblocks = [i for i in range(1, n_layers) if weight(enh, f"net.blocks.{i}.block_feats.1") is not None
                     or weight(enh, f"net.blocks.{i}.block_feats.2") is not None]
        # down blocks have their conv at block_feats.1, up blocks at block_feats.2 (nearest first)
        ups = [i for i in resblocks if weight(enh, f"net.blocks.{i}.block_feats.2") is not None]
        n_down = len(ups)
        values["enh_num_blocks"] = len(resblocks) - 2 * n_down
        chans = [int(weight(enh, f"net.blocks.{i}.block_feats.1").shape[0]) for i in resblocks if i not in ups]
        if chans:
            values["enh_max_channels"] = max(chans)
        if "image_size" in values:
            values["enh_bottleneck_tensor_size"] = int(values["image_size"]) // 2**n_down
    return values


def resolve_config(
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    args: Mapping[str, str] | None = None,
    base: BilayerConfig | None = None,
) -> BilayerConfig:
    """Build the config of a checkpoint from its shapes and/or its args.txt.

    A key given by both sources with different values raises `ConfigError` naming the key, e.g.
    an args.txt that says `inf_max_channels: 256` next to a checkpoint whose tensors have 128
    channels.
    """
    values: dict[str, object] = {}
    from_args = config_values_from_args(args) if args else {}
    from_shapes = config_values_from_state_dicts(state_dicts) if state_dicts else {}
    for key in sorted(set(from_args) & set(from_shapes)):
        if from_args[key] != from_shapes[key]:
            raise ConfigError(
                f"args.txt and the checkpoint disagree on {key}: args.txt says {from_args[key]!r}, "
                f"the checkpoint's tensor shapes say {from_shapes[key]!r}. Use the args.txt of the "
                "run that wrote these checkpoints."
            )
    values.update(from_args)
    values.update(from_shapes)
    return dataclasses.replace(base or BilayerConfig.paper(), **values)
