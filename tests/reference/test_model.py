"""BilayerModel behaviour: shapes, ranges, batching, determinism and input checks."""
from __future__ import annotations

import pytest
import torch

from bilayer_mobile.reference import InputError, IdentityState


@pytest.fixture(scope="module")
def inputs(golden):
    t = lambda key: torch.from_numpy(golden[key])
    return t("source_img"), t("source_kp"), t("target_kp")


def test_shapes_and_ranges(tiny_model, inputs):
    image, kp, targets = inputs
    state = tiny_model.init_identity(image, kp)
    assert isinstance(state, IdentityState)
    assert state.texture.shape == (1, 3, 256, 256) and state.enhanced_texture.shape == (1, 3, 256, 256)
    assert state.texture.abs().max() <= 1  # tanh
    assert len(state.adaptive_params) == 18
    out = tiny_model.render(state, targets)
    assert out.image.shape == (2, 3, 256, 256) and out.mask.shape == (2, 1, 256, 256)
    assert out.uv.shape == (2, 256, 256, 2) and out.lowfreq.shape == (2, 3, 256, 256)
    assert 0 <= out.mask.min() and out.mask.max() <= 1
    assert out.lowfreq.abs().max() <= 1
    assert out.image.abs().max() <= 1 + state.enhanced_texture.abs().max()  # lowfreq + warped texture
    torch.testing.assert_close(out.image, out.lowfreq + out.warped_texture)
    # the enhanced texture is the start texture plus up to 4 tanh steps
    assert (state.enhanced_texture - state.texture).abs().max() <= tiny_model.config.enh_unrolling_depth


def test_identity_grid_is_an_exact_identity_warp(tiny_model):
    grid = tiny_model.inference_generator.identity_grid
    texture = torch.randn(1, 3, 256, 256)
    from bilayer_mobile.reference.model import warp

    torch.testing.assert_close(warp(texture, grid), texture, rtol=0, atol=1e-6)
    assert grid[0, 0, -1, 0] > 0.99 and grid[0, -1, 0, 1] > 0.99  # channel 0 is x (width), 1 is y


def test_batch_equals_per_sample(tiny_model, inputs, golden):
    image, kp, targets = inputs
    flipped = image.flip(-1)
    batch_images = torch.cat([image, flipped])
    batch_kp = torch.cat([kp, targets[:1]])
    state = tiny_model.init_identity(batch_images, batch_kp)
    drivers = torch.cat([targets, targets.flip(0)])  # 2 frames per identity, grouped by identity
    batched = tiny_model.render(state, drivers)
    for i in range(2):
        single_state = tiny_model.init_identity(batch_images[i : i + 1], batch_kp[i : i + 1])
        torch.testing.assert_close(state.select(i).texture, single_state.texture, rtol=0, atol=1e-4)  # float32 round-off
        torch.testing.assert_close(state.select(i).enhanced_texture, single_state.enhanced_texture, rtol=0, atol=1e-3)
        single = tiny_model.render(single_state, drivers[2 * i : 2 * i + 2])
        torch.testing.assert_close(batched.uv[2 * i : 2 * i + 2], single.uv, rtol=0, atol=2e-5)
        torch.testing.assert_close(batched.mask[2 * i : 2 * i + 2], single.mask, rtol=0, atol=2e-5)
        torch.testing.assert_close(batched.image[2 * i : 2 * i + 2], single.image, rtol=0, atol=2e-3)
    # and the two identities really differ
    assert (state.texture[0] - state.texture[1]).abs().max() > 1e-3


def test_render_is_deterministic(tiny_model, inputs):
    image, kp, targets = inputs
    state = tiny_model.init_identity(image, kp)
    first = tiny_model.render(state, targets)
    second = tiny_model.render(state, targets)
    for name, value in first.as_dict().items():
        assert torch.equal(value, second.as_dict()[name]), name


def test_mask_default_is_all_ones(tiny_model, inputs):
    image, kp, _ = inputs
    a = tiny_model.init_identity(image, kp)
    b = tiny_model.init_identity(image, kp, mask=torch.ones(1, 1, 256, 256))
    assert torch.equal(a.texture, b.texture)
    c = tiny_model.init_identity(image, kp, mask=torch.zeros(1, 1, 256, 256))
    assert not torch.equal(a.texture, c.texture)


@pytest.mark.parametrize(
    "image_shape, kp_shape, message",
    [
        ((1, 3, 128, 128), (1, 136), r"image has shape \(1, 3, 128, 128\), expected \[B, 3, 256, 256\]"),
        ((1, 1, 256, 256), (1, 136), r"image has shape \(1, 1, 256, 256\), expected \[B, 3, 256, 256\]"),
        ((1, 3, 256, 256), (1, 68), r"keypoints have shape \(1, 68\), expected \[N, 136\]"),
        ((2, 3, 256, 256), (1, 136), "batch 2 and keypoints batch 1 differ"),
    ],
)
def test_bad_shapes_are_named(tiny_model, image_shape, kp_shape, message):
    with pytest.raises(InputError, match=message):
        tiny_model.init_identity(torch.zeros(image_shape), torch.zeros(kp_shape))


def test_nan_inputs_are_rejected(tiny_model, inputs):
    image, kp, targets = inputs
    bad_kp = kp.clone()
    bad_kp[0, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tiny_model.init_identity(image, bad_kp)
    state = tiny_model.init_identity(image, kp)
    bad_targets = targets.clone()
    bad_targets[1, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        tiny_model.render(state, bad_targets)
    bad_image = image.clone()
    bad_image[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="image contains NaN"):
        tiny_model.init_identity(bad_image, kp)


def test_frames_must_split_over_identities(tiny_model, inputs):
    image, kp, targets = inputs
    state = tiny_model.init_identity(torch.cat([image, image]), torch.cat([kp, kp]))
    with pytest.raises(InputError, match="3 keypoint rows cannot be split evenly over 2 identities"):
        tiny_model.render(state, torch.cat([targets, targets[:1]]))


@pytest.mark.parametrize("size", [32, 16, 8, 4, 6])
def test_projector_resize_equals_the_official_adaptive_pool(size):
    """The exporter-friendly resize (repeat / avg pool) is bit-identical to adaptive_avg_pool2d."""
    from bilayer_mobile.reference.networks import _resize_embedding

    x = torch.randn(2, 5, 8, 8)
    assert torch.equal(_resize_embedding(x, size), torch.nn.functional.adaptive_avg_pool2d(x, (size, size)))
