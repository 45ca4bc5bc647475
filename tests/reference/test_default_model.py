"""The built-in default model (paper configuration, seeded untrained weights).

Slow: the model is built from scratch once per session (standing statistics on real faces).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bilayer_mobile.reference import BilayerConfig
from bilayer_mobile.reference.default_model import default_model, measure_uv_displacement_px
from bilayer_mobile.reference.face_samples import augmented_crops, load_face_photos, perturb_keypoints

pytestmark = pytest.mark.slow


def psnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    peak = float(reference.max() - reference.min())
    mse = float(((reference.double() - test.double()) ** 2).mean())
    return 10 * math.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def real_faces(photos_dir):
    crops = augmented_crops(load_face_photos(photos_dir), 2, seed=777)
    images = torch.stack([c.image for c in crops])
    keypoints = torch.stack([c.keypoints for c in crops])
    drivers = torch.cat([perturb_keypoints(c.keypoints, 3, seed=900 + i) for i, c in enumerate(crops)])
    return images, keypoints, drivers


def test_paper_architecture_with_enhancer(default_model_paper):
    assert default_model_paper.config == BilayerConfig.paper()
    assert default_model_paper.has_enhancer and not default_model_paper.training


def test_warp_is_realistic_on_held_out_faces(default_model_paper, photos_dir):
    # held-out: other augmentation seed than the one the UV head was scaled on
    displacement = measure_uv_displacement_px(default_model_paper, photos_dir, count=3, seed=2024)
    assert 1.0 <= displacement <= 5.0, displacement


def test_standing_statistics_replace_init_values(default_model_paper):
    norms = [m for m in default_model_paper.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2 * 6 + 1 + 2 * 6 + 1  # texture + inference generators
    for norm in norms:
        assert torch.isfinite(norm.running_mean).all() and (norm.running_var > 0).all()
        assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))


def test_weights_are_spectrally_normalised(default_model_paper):
    uv_head = default_model_paper.inference_generator.gen_inf.heads[0][0]
    layers = [m for m in default_model_paper.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not uv_head]
    for module in layers[::10]:  # an SVD per layer is slow; every 10th layer, all networks covered
        sigma = torch.linalg.matrix_norm(module.weight.reshape(module.weight.shape[0], -1), ord=2)
        assert abs(float(sigma) - 1) < 2e-2, module  # the recipe uses power iteration, not an SVD


def test_cache_round_trip_is_exact(default_model_paper, default_model_cache, monkeypatch):
    monkeypatch.setenv("BILAYER_MOBILE_CACHE", str(default_model_cache))
    cached = default_model()
    assert cached.has_enhancer
    for name, net in default_model_paper.networks().items():
        ours = net.state_dict()
        for key, value in getattr(cached, name).state_dict().items():
            assert torch.equal(value, ours[key]), (name, key)


def test_real_faces_render_finite_and_fp16_rounding_keeps_the_image(default_model_paper, real_faces):
    """With a 3 px warp, fp16-rounded frame weights keep the image far above 40 dB
    (a ~60 px random warp would amplify the rounding to ~34 dB)."""
    model = default_model_paper
    images, keypoints, drivers = real_faces
    state = model.init_identity(images, keypoints)
    out = model.render(state, drivers)
    for value in out.as_dict().values():
        assert torch.isfinite(value).all()
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    saved = {k: v.clone() for k, v in model.inference_generator.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.inference_generator.parameters():
                p.copy_(p.half().float())
        rounded = model.render(state, drivers)
    finally:
        model.inference_generator.load_state_dict(saved)
    assert psnr_db(out.lowfreq, rounded.lowfreq) > 50
    assert psnr_db(out.image, rounded.image) > 45


def test_a_corrupt_cache_is_rebuilt_not_fatal(default_model_paper, tmp_path, monkeypatch):
    import bilayer_mobile.reference.default_model as module

    monkeypatch.setenv("BILAYER_MOBILE_CACHE", str(tmp_path))
    path = tmp_path / f"default-{module.DefaultModelRecipe().key(default_model_paper.config)}.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    built = []
    monkeypatch.setattr(module, "build_default_model", lambda *a, **k: built.append(1) or default_model_paper)
    with pytest.warns(UserWarning, match="cached default model .* rebuilding it"):
        model = module.default_model()
    assert built == [1] and model is default_model_paper
    assert module.default_model().has_enhancer and built == [1]  # the rewritten cache now loads
