"""The split variant's compositing shaders (export/shaders) against torch's grid_sample + lowfreq.

One realistic frame at 256 x 256: the real source photo as the texture, a smooth ~3 px warp with
a band beyond the right border (zero padding), a smooth low-frequency image. Manual sampling is
gated like an fp32 artifact, the GPU's bilinear sampler like an fp16 one. The GPU tests run on
whatever EGL / WebGPU device the machine has (Mesa's llvmpipe and lavapipe without a GPU) and
fail with the compositor's own message, never skip, when there is none.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bilayer_mobile.reference.errors import BilayerError, InputError
from bilayer_mobile.reference.face_samples import photo_path
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, pixel_centre_grid, psnr_db, warp_px
from bilayer_mobile.runtime_bench.compositor import CompositorUnavailable, GpuCompositor, composite_numpy

SHADERS = Path(__file__).resolve().parents[2] / "export" / "shaders"
SIZE = 256
BAND = 24  # the right-most columns, whose samples move out past the border
SHADER_FILES = {"glsl": "composite.frag", "wgsl": "composite.wgsl"}
GATES = {"manual": THRESHOLDS_DB["fp32"], "hardware": THRESHOLDS_DB["fp16"]}
COMBINATIONS = [(kind, mode) for kind in SHADER_FILES for mode in GATES]


@pytest.fixture(scope="module")
def gpu():
    """One compositor (one worker process) for the module's GPU tests."""
    with GpuCompositor() as compositor:
        yield compositor


def run(gpu: GpuCompositor, kind: str, mode: str, lowfreq, texture, uv) -> np.ndarray:
    return gpu.composite(kind, (SHADERS / SHADER_FILES[kind]).read_text(), lowfreq, texture, uv, mode)


def torch_image(lowfreq, texture, uv) -> np.ndarray:
    warped = F.grid_sample(torch.from_numpy(texture), torch.from_numpy(uv), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return (torch.from_numpy(lowfreq) + warped).numpy()


@pytest.fixture(scope="module")
def frame() -> dict[str, np.ndarray]:
    """texture, uv, lowfreq of one 256 x 256 frame, the torch image, and masks of the pixels
    that sample only zeros (`outside`) and that blend the last texel with zero (`edge`)."""
    photo = Image.open(photo_path("source.jpg")).convert("RGB")
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    photo = photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    texture = (np.asarray(photo, np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]

    identity = pixel_centre_grid(SIZE)
    v, u = identity[..., 1], identity[..., 0]
    amplitude = 3 / 128  # uv units: 3 px at 256
    delta = np.stack([amplitude * (np.sin(2.1 * u + 3.3 * v + 0.4) + 0.6 * np.sin(5.2 * v - 1.7 * u + 1.1)),
                      amplitude * (np.cos(2.9 * u - 1.3 * v + 0.8) + 0.6 * np.sin(4.4 * u + 3.9 * v + 2.0))], -1)
    # The band ramps from the warp alone to 0.25 (32 px) beyond the right edge: its samples cross
    # the texel-wide zone where grid_sample blends the last texel with zero, then read zeros only.
    ramp = np.clip((np.arange(SIZE) - (SIZE - BAND)) / BAND, 0, None)
    delta[..., 0] += 0.25 * ramp[None, :]
    uv = (identity + delta).astype(np.float32)[None]

    lowfreq = np.stack([0.3 * np.sin(1.5 * u + 0.5 * c) * np.cos(1.1 * v - 0.3 * c) + 0.1 * c
                        for c in range(3)]).astype(np.float32)[None]
    x = ((uv[0, ..., 0].astype(np.float64) + 1) * SIZE - 1) / 2
    return {"texture": texture, "uv": uv, "lowfreq": lowfreq, "reference": torch_image(lowfreq, texture, uv),
            "outside": x >= SIZE,  # both horizontal taps beyond the last texel
            "edge": (x > SIZE - 1) & (x < SIZE)}  # the last texel blended with zero


def test_the_frame_is_realistic(frame):
    inner = (frame["uv"][0, :, : SIZE - BAND] - pixel_centre_grid(SIZE)[:, : SIZE - BAND]) * SIZE / 2
    assert 2 < np.linalg.norm(inner, axis=-1).mean() < 4  # a trained model's ~3 px
    assert warp_px(frame["uv"], SIZE) > 4  # the band moves further
    assert frame["outside"].sum() > 10 * SIZE and frame["edge"].sum() > SIZE // 8


def test_numpy_composite_is_grid_sample(frame):
    image = composite_numpy(frame["lowfreq"], frame["texture"], frame["uv"])
    assert image.shape == (1, 3, SIZE, SIZE)
    assert np.abs(image - frame["reference"]).max() < 1e-5


def test_numpy_composite_takes_non_square_inputs_in_tensor_axis_order():
    rng = np.random.default_rng(3)
    texture = rng.standard_normal((1, 3, 6, 9)).astype(np.float32)
    uv = rng.uniform(-1.3, 1.3, (1, 5, 7, 2)).astype(np.float32)
    lowfreq = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    expected = torch_image(lowfreq, texture, uv)
    assert np.abs(composite_numpy(lowfreq, texture, uv) - expected).max() < 1e-5
    with pytest.raises(InputError, match="lowfreq has shape"):
        composite_numpy(lowfreq[:, :, :4], texture, uv)
    with pytest.raises(InputError, match="uv has shape"):
        composite_numpy(lowfreq, texture, uv.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("kind,mode", COMBINATIONS)
def test_gpu_composite_passes_its_gate(gpu, frame, kind, mode):
    image = run(gpu, kind, mode, frame["lowfreq"], frame["texture"], frame["uv"])
    assert image.shape == (1, 3, SIZE, SIZE) and image.dtype == np.float32
    psnr = psnr_db(frame["reference"], image)
    assert psnr >= GATES[mode], f"{kind} {mode} on {gpu.renderer_description(kind)}: {psnr:.1f} dB"


@pytest.mark.parametrize("kind,mode", COMBINATIONS)
def test_gpu_composite_pads_with_zeros(gpu, frame, kind, mode):
    image = run(gpu, kind, mode, frame["lowfreq"], frame["texture"], frame["uv"])
    outside, edge = frame["outside"], frame["edge"]
    assert np.array_equal(image[0][:, outside], frame["lowfreq"][0][:, outside])
    # Within the half texel past the edge the last texel fades to zero: manual sampling to fp32
    # round-off, the sampler's weights at least to 1/512 of a texel (8 fractional bits).
    allowed = 1e-5 if mode == "manual" else 2**-9 * float(np.abs(frame["texture"]).max()) + 1e-5
    assert np.abs(image[0][:, edge] - frame["reference"][0][:, edge]).max() <= allowed


@pytest.mark.parametrize("kind,mode", COMBINATIONS)
def test_gpu_composite_keeps_rows_and_columns(gpu, kind, mode):
    # Sizes that differ in every axis and points all over (and beyond) the texture: a flipped row
    # order or swapped axes cannot match.
    rng = np.random.default_rng(5)
    texture = rng.standard_normal((1, 3, 6, 9)).astype(np.float32)
    uv = rng.uniform(-1.3, 1.3, (1, 5, 7, 2)).astype(np.float32)
    lowfreq = rng.standard_normal((1, 3, 5, 7)).astype(np.float32)
    image = run(gpu, kind, mode, lowfreq, texture, uv)
    assert np.abs(image - torch_image(lowfreq, texture, uv)).max() < 1e-5


def test_phone_sampler_precision_passes_the_fp16_gate(frame):
    """The hardware mode predicted for a GPU whose sampler resolves 1/256 texel (most phones),
    on a half-float texture: above the fp16 gate, though well below manual sampling."""
    exact = composite_numpy(frame["lowfreq"], frame["texture"], frame["uv"])
    predicted = composite_numpy(frame["lowfreq"], frame["texture"].astype(np.float16), frame["uv"], subtexel_bits=8)
    assert GATES["hardware"] <= psnr_db(frame["reference"], predicted) < psnr_db(frame["reference"], exact) - 20


def test_error_types(gpu):
    assert issubclass(CompositorUnavailable, BilayerError)
    with pytest.raises(ValueError, match="sampling mode"):
        run(gpu, "glsl", "nearest", np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 3, 2, 2), np.float32),
            np.zeros((1, 2, 2, 2), np.float32))


def test_wgsl_hardware_mode_samples_half_floats_without_float32_filterable(frame):
    """A device without "float32-filterable" (most phones and browsers) gets an rgba16float copy."""
    with GpuCompositor(float32_filterable=False) as phone_like:
        assert phone_like.hardware_texture_format("wgsl") == "rgba16float"
        image = run(phone_like, "wgsl", "hardware", frame["lowfreq"], frame["texture"], frame["uv"])
    half = composite_numpy(frame["lowfreq"], frame["texture"].astype(np.float16), frame["uv"])
    assert np.abs(image - half).max() < 1e-5  # the texels are rounded to fp16, nothing else
    assert psnr_db(frame["reference"], image) >= GATES["hardware"]
