"""The built-in default model: the paper architecture with deterministic, *untrained* weights.

It exists so that demos, tests and benchmarks run with no download. Random weights alone would
make parity and quantization figures meaningless in two places, so the recipe fixes those:

1. Spectral normalisation. Every Conv2d/Linear weight is divided by its largest singular value,
   as spectral norm does in the official training, so activations keep trained-like scales.
2. Standing statistics. BatchNorm running statistics are the average of per-batch statistics
   over augmented real faces (the packaged photos `face_samples.DEFAULT_MODEL_PHOTOS`, named
   explicitly), the idea of the official runner's `calculate_batchnorm_stats`, instead of the
   init values (mean 0, var 1).
3. A realistic warp. A trained model moves texture pixels by a few pixels; a randomly
   initialised one by ~60 px, and the warp then amplifies every rounding error of the UV field.
   The UV head is scaled so that the mean displacement on real-face keypoints is
   `target_uv_px` (3 px), measured by `mean_uv_displacement_px`.

The result is cached (keyed by the recipe) so it is built once per machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_official_state_dicts
from .config import BilayerConfig
from .errors import CheckpointError
from .files import atomic_write
from .face_samples import DEFAULT_MODEL_PHOTOS, augmented_crops, load_face_photos, perturb_keypoints
from .model import BilayerModel
from .user_files import load_torch_file

RECIPE_VERSION = 2


@dataclass(frozen=True)
class DefaultModelRecipe:
    """Everything that determines the default model's weights."""

    seed: int = 1234
    with_enhancer: bool = True
    stats_identities: int = 16
    stats_batch: int = 4
    stats_frames_per_identity: int = 4
    target_uv_px: float = 3.0
    uv_identities: int = 8

    def key(self, config: BilayerConfig) -> str:
        blob = json.dumps({"v": RECIPE_VERSION, "recipe": dataclasses.asdict(self),
                           "config": dataclasses.asdict(config)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where built-in models are cached: $BILAYER_MOBILE_CACHE or ~/.cache/bilayer-mobile."""
    return Path(os.environ.get("BILAYER_MOBILE_CACHE", "~/.cache/bilayer-mobile")).expanduser()


def largest_singular_value(matrix: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """Power iteration from a fixed start vector (deterministic, far cheaper than an SVD)."""
    v = torch.ones(matrix.shape[1], dtype=matrix.dtype) / matrix.shape[1] ** 0.5
    for _ in range(iterations):
        u = torch.nn.functional.normalize(matrix @ v, dim=0)
        v = torch.nn.functional.normalize(matrix.T @ u, dim=0)
    return torch.dot(u, matrix @ v)


def spectral_normalise_(model: nn.Module) -> None:
    """Divide every Conv2d/Linear weight by its largest singular value (in place), as spectral
    norm does in the official training."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                matrix = module.weight.reshape(module.weight.shape[0], -1).double()
                module.weight.div_(largest_singular_value(matrix).to(module.weight.dtype))


def batchnorm_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def compute_standing_statistics(model: BilayerModel, crops, frames_per_identity: int, batch: int, seed: int,
                                progress=None) -> None:
    """Set BatchNorm running statistics to the average of per-batch statistics over real faces.

    Identities go through `init_identity` (texture generator statistics) and their perturbed
    keypoints through `render` (inference generator statistics), with BatchNorm in training mode
    and a cumulative average (momentum=None). The enhancer is switched off meanwhile: it has no
    BatchNorm, and its source-pose pass would only repeat the source poses.
    """
    norms = batchnorm_layers(model)
    had_enhancer = model.has_enhancer
    model.has_enhancer = False
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for start in range(0, len(crops), batch):
            chunk = crops[start : start + batch]
            images = torch.stack([c.image for c in chunk])
            keypoints = torch.stack([c.keypoints for c in chunk])
            state = model.init_identity(images, keypoints)
            drivers = torch.cat([
                perturb_keypoints(c.keypoints, frames_per_identity, seed=seed + start + i) for i, c in enumerate(chunk)
            ])
            model.render(state, drivers)
            if progress:
                progress(min(start + batch, len(crops)), len(crops))
    finally:
        for norm in norms:
            norm.momentum = 0.1
            norm.eval()
        model.has_enhancer = had_enhancer


def real_face_drives(model: BilayerModel, crops, frames_per_identity: int = 4, seed: int = 0):
    """Identity states of real-face crops and perturbed driving keypoints for each of them."""
    had_enhancer = model.has_enhancer
    model.has_enhancer = False  # the UV field does not depend on the texture
    try:
        images = torch.stack([c.image for c in crops])
        keypoints = torch.stack([c.keypoints for c in crops])
        state = model.init_identity(images, keypoints)
    finally:
        model.has_enhancer = had_enhancer
    drivers = torch.cat([perturb_keypoints(c.keypoints, frames_per_identity, seed=seed + i) for i, c in enumerate(crops)])
    return state, drivers


def mean_uv_displacement_px(model: BilayerModel, state, drivers: torch.Tensor) -> float:
    """Mean length, in output pixels, of the UV displacement (warp minus identity grid)."""
    out = model.render(state, drivers, enhanced=False)
    delta = out.uv - model.inference_generator.identity_grid
    return float((delta * (model.config.image_size / 2)).norm(dim=-1).mean())


def measure_uv_displacement_px(model: BilayerModel, photos: Sequence[str] | Path | str = DEFAULT_MODEL_PHOTOS,
                               count: int = 8, seed: int = 4321) -> float:
    """Mean UV displacement (px) of any model on augmented real faces (printed by `info`);
    `photos` as `load_face_photos` takes them (packaged photo names or a directory)."""
    crops = augmented_crops(load_face_photos(photos), count, seed=seed, image_size=model.config.image_size)
    return mean_uv_displacement_px(model, *real_face_drives(model, crops, seed=seed))


def scale_uv_head_(model: BilayerModel, crops, target_px: float, frames_per_identity: int, iterations: int = 4) -> float:
    """Scale the UV head's conv so the mean displacement on real faces is `target_px`.

    The head ends in tanh, so the scale is refined a few times; returns the final displacement.
    The identity states are computed once: the UV head does not change them.
    """
    head = model.inference_generator.gen_inf.heads[0][0]
    state, drivers = real_face_drives(model, crops, frames_per_identity)
    measured = mean_uv_displacement_px(model, state, drivers)
    for _ in range(iterations):
        with torch.no_grad():
            factor = target_px / measured
            head.weight.mul_(factor)
            head.bias.mul_(factor)
        measured = mean_uv_displacement_px(model, state, drivers)
        if abs(measured - target_px) < 0.01 * target_px:
            break
    return measured


def build_default_model(config: BilayerConfig | None = None, recipe: DefaultModelRecipe | None = None,
                        photos: Sequence[str] | Path | str = DEFAULT_MODEL_PHOTOS, progress=None) -> BilayerModel:
    """Build the default model from scratch (no cache); see the module docstring for the recipe."""
    config = config or BilayerConfig.paper()
    recipe = recipe or DefaultModelRecipe()
    torch.manual_seed(recipe.seed)
    model = BilayerModel(config).eval()
    spectral_normalise_(model)
    photos = load_face_photos(photos)
    crops = augmented_crops(photos, recipe.stats_identities, seed=recipe.seed, image_size=config.image_size)
    compute_standing_statistics(model, crops, recipe.stats_frames_per_identity, recipe.stats_batch, recipe.seed, progress)
    uv_crops = augmented_crops(photos, recipe.uv_identities, seed=recipe.seed + 1, image_size=config.image_size)
    scale_uv_head_(model, uv_crops, recipe.target_uv_px, frames_per_identity=4)
    model.has_enhancer = recipe.with_enhancer
    return model


def official_state_dicts(model: BilayerModel) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights as official plain-form per-network state dicts."""
    names = list(model.networks())
    if not model.has_enhancer:
        names.remove("texture_enhancer")
    return {name: {k: v.detach().clone() for k, v in getattr(model, name).state_dict().items()} for name in names}


def default_model(config: BilayerConfig | None = None, recipe: DefaultModelRecipe | None = None,
                  use_cache: bool = True, progress=None) -> BilayerModel:
    """The built-in default model (eval mode), from the cache when it was built before."""
    config = config or BilayerConfig.paper()
    recipe = recipe or DefaultModelRecipe()
    path = cache_dir() / f"default-{recipe.key(config)}.pt"
    if use_cache and path.is_file():
        try:
            model = BilayerModel(config)
            load_official_state_dicts(model, load_torch_file(path, "cached default model"))
            return model.eval()
        except CheckpointError as exc:  # our own cache: rebuild it rather than stop the user
            warnings.warn(f"{exc}; rebuilding it")
    model = build_default_model(config, recipe, progress=progress)
    if use_cache:
        with atomic_write(path) as f:
            torch.save(official_state_dicts(model), f)
    return model
