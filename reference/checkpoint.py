"""Loading official bi-layer checkpoints.

An official run directory is `runs/<experiment>/` with `args.txt` and
`checkpoints/<epoch>_<network>.pth` (one state dict per network, saved with spectral norm
attached: `weight_orig`, `weight_u`, `weight_v`). The released model keeps the enhancer in a
second run directory; `load_official_checkpoint` takes it as `enhancer_run`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .config import BASE_NETWORK_NAMES, NETWORK_NAMES, BilayerConfig, read_args_txt, resolve_config
from .errors import CheckpointError, ConfigError
from .model import BilayerModel
from .user_files import load_torch_file

Tensor = torch.Tensor
_EPOCH_FILE = re.compile(r"^(\d+)_(" + "|".join(NETWORK_NAMES) + r")\.pth$")


def fold_spectral_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Replace every (`weight_orig`, `weight_u`, `weight_v`) triple by `weight = weight_orig / sigma`.

    sigma = u . (W v) with W = weight_orig reshaped to [out, -1] and the stored u, v; no power
    iteration, as `torch.nn.utils.remove_spectral_norm` does when the official `infer.py`
    removes spectral norm. A plain state dict passes through unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(("weight_u", "weight_v")) and key[:-2] + "_orig" in state_dict:
            continue
        if key.endswith(".weight_orig") or key == "weight_orig":
            prefix = key[: -len("_orig")]
            try:
                u, v = state_dict[prefix + "_u"], state_dict[prefix + "_v"]
            except KeyError as exc:
                raise CheckpointError(f"{key} has no matching {exc.args[0]}; the spectral-norm triple is incomplete") from None
            matrix = value.reshape(value.shape[0], -1)
            if u.shape != (matrix.shape[0],) or v.shape != (matrix.shape[1],):
                raise CheckpointError(
                    f"{prefix}_u/_v have shapes {tuple(u.shape)}/{tuple(v.shape)}, expected "
                    f"({matrix.shape[0]},)/({matrix.shape[1]},) for {key} of shape {tuple(value.shape)}"
                )
            sigma = torch.dot(u, torch.mv(matrix, v))
            out[prefix] = value / sigma
        else:
            out[key] = value
    return out


def load_official_state_dicts(model: BilayerModel, state_dicts: Mapping[str, Mapping[str, Tensor]]) -> BilayerModel:
    """Load official per-network state dicts (spectral-norm or plain form) into `model`.

    The four base networks are required; `texture_enhancer` is optional and switches the
    enhancer on. Spectral norm is folded into plain weights first. Missing or unexpected
    keys and shape mismatches raise `CheckpointError` naming the network and the key.
    """
    missing = [n for n in BASE_NETWORK_NAMES if n not in state_dicts]
    if missing:
        raise CheckpointError(f"state dicts for {', '.join(missing)} are missing; the four base networks are required")
    unknown = sorted(set(state_dicts) - set(NETWORK_NAMES))
    if unknown:
        raise CheckpointError(f"unknown network name(s) {unknown}; expected some of {list(NETWORK_NAMES)}")
    for name, state_dict in state_dicts.items():
        load_network_state_dict(name, getattr(model, name), fold_spectral_norm(state_dict))
    model.has_enhancer = "texture_enhancer" in state_dicts
    return model


def load_network_state_dict(name: str, network: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Strictly load one network's plain state dict with errors that name key and shapes."""
    expected = network.state_dict()
    # Shape mismatches first: they say most about a wrong config (e.g. a 1088-wide first
    # keypoints layer means harmonic encoding, with an extra `frequencies` buffer).
    for key, value in state_dict.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{name}: key {key!r} has shape {tuple(value.shape)} in the checkpoint, but the "
                f"architecture expects {tuple(expected[key].shape)}. The config does not match this "
                "checkpoint: pass the run's args.txt or let the config be inferred from the checkpoint "
                "(load_official_checkpoint does)."
            )
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(
            f"{name}: checkpoint does not match the architecture: {'; '.join(parts)}. "
            "Check that the checkpoint is an official bi-layer state dict of this network and that "
            "the config (args.txt) matches the run that wrote it."
        )
    network.load_state_dict(dict(state_dict), strict=True)


def _torch_load(path: Path) -> dict[str, Tensor]:
    state = load_torch_file(path, "checkpoint", CheckpointError)
    fix = ("each checkpoints/<epoch>_<network>.pth must hold one network's state_dict() alone: "
           "torch.save(net.state_dict(), path)")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a state dict "
                              f"(a dict of tensors); {fix}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            # typically {'state_dict': ..., 'optimizer': ..., 'epoch': ...} from a training loop
            raise CheckpointError(f"cannot read checkpoint {path}: it is a dict but entry {str(key)[:60]!r} holds a "
                                  f"{type(value).__name__}, not a tensor (a training checkpoint?); {fix}")
    return dict(state)


@dataclass
class RunFiles:
    """The files of one official run: args.txt (optional) and one .pth per network."""

    args_path: Path | None
    network_files: dict[str, Path]
    epoch: str | None


def find_run_files(run_dir: Path | str, epoch: str | int | None = None,
                   networks: tuple[str, ...] = NETWORK_NAMES) -> RunFiles:
    """Locate `checkpoints/<epoch>_<net>.pth` in an official run directory (latest epoch by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist; expected runs/<experiment>/ with checkpoints/")
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{run_dir} has no checkpoints/ folder; expected checkpoints/<epoch>_<network>.pth")
    by_epoch: dict[str, dict[str, Path]] = {}
    for path in ckpt_dir.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and match.group(2) in networks:
            by_epoch.setdefault(match.group(1), {})[match.group(2)] = path
    if not by_epoch:
        raise CheckpointError(f"{ckpt_dir} holds no <epoch>_<network>.pth files for {', '.join(networks)}")
    if epoch is None:
        epoch = max(by_epoch, key=int)
    epoch = str(epoch)
    if epoch not in by_epoch:
        raise CheckpointError(f"{ckpt_dir} has no checkpoints for epoch {epoch}; available epochs: {sorted(by_epoch, key=int)}")
    args_path = run_dir / "args.txt"
    return RunFiles(args_path if args_path.is_file() else None, by_epoch[epoch], epoch)


def load_official_checkpoint(
    path: Path | str | Mapping[str, Path | str],
    epoch: str | int | None = None,
    enhancer_run: Path | str | None = None,
    enhancer_epoch: str | int | None = None,
    args_txt: Path | str | None = None,
    with_enhancer: bool = True,
) -> BilayerModel:
    """Build a `BilayerModel` (eval mode) from official weights.

    path: an official run directory (`runs/<experiment>/`), or a mapping network name ->
    .pth file. The latest epoch is used unless `epoch` is given. The enhancer is taken from the
    same run if it has one, or from `enhancer_run` (as in the official inference example, where
    it lives in its own run). The config is inferred from the tensor shapes and checked against
    args.txt; a disagreement raises `ConfigError` naming the key.
    """
    if isinstance(path, Mapping):
        files = {name: Path(p) for name, p in path.items()}
        args = read_args_txt(Path(args_txt)) if args_txt else None
    else:
        run = find_run_files(path, epoch)
        files = dict(run.network_files)
        args_file = Path(args_txt) if args_txt else run.args_path
        args = read_args_txt(args_file) if args_file else None
    if enhancer_run is not None:
        enh = find_run_files(enhancer_run, enhancer_epoch, networks=("texture_enhancer",))
        if "texture_enhancer" not in enh.network_files:
            raise CheckpointError(f"{enhancer_run} has no texture_enhancer checkpoint")
        files["texture_enhancer"] = enh.network_files["texture_enhancer"]
    if not with_enhancer:
        files.pop("texture_enhancer", None)
    missing = [n for n in BASE_NETWORK_NAMES if n not in files]
    if missing:
        raise CheckpointError(
            f"no checkpoint for {', '.join(missing)} (found: {', '.join(sorted(files)) or 'none'}); "
            "the four base networks are required"
        )
    state_dicts = {name: _torch_load(p) for name, p in files.items()}
    config = resolve_config(state_dicts, args)
    return load_official_state_dicts(BilayerModel(config), state_dicts).eval()

