"""Run the compositing shaders a bundle ships and gate them like artifacts.

A bundle with the split frame graph ships `shaders/composite.frag` (GLSL ES 3.00) and
`shaders/composite.wgsl`; an app composites image = lowfreq + texture sampled at uv with them.
Here each shader runs on this machine's GPU driver (Mesa llvmpipe through EGL for GLSL, lavapipe
through wgpu for WGSL) on the split graph's golden sample: the reference's uv, lowfreq and the
identity's texture, and its image is compared with the reference's. Two sampling modes each:
"manual" (four fetched texels, bilinear weights in fp32) is gated at the fp32 threshold,
"hardware" (the GPU's bilinear sampler, whose weights have few fractional bits) at fp16.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .compare import THRESHOLDS_DB, compare_output
from .runner import RuntimeUnavailable
from .results import ArtifactResult

# (shader file suffix, API, mode) -> the precision whose gate applies
SHADER_MODES = {("frag", "manual"): "fp32", ("frag", "hardware"): "fp16",
                ("wgsl", "manual"): "fp32", ("wgsl", "hardware"): "fp16"}
SHADER_SAMPLE = 0  # lavapipe and llvmpipe are slow; one golden frame is enough for a shader


def shader_results(bundle: Path, manifest: dict, image_size: int, required: bool) -> tuple[list[ArtifactResult], list[str]]:
    """One result per (shipped shader, sampling mode), and a line for each that could not run
    here (no GPU driver); with `required`, a missing driver raises instead."""
    from .compositor import GpuCompositor

    golden = Path(bundle) / "golden" / "split_frame.npz"
    if not golden.is_file():
        return [], []
    with np.load(golden, allow_pickle=False) as data:
        sample = {k: data[k][SHADER_SAMPLE] for k in ("uv", "lowfreq", "texture", "image")}
    kinds = {"frag": "glsl", "wgsl": "wgsl"}
    results, not_run = [], []
    with GpuCompositor() as gpu:
        for rel in sorted(manifest["shaders"]):
            suffix = rel.rsplit(".", 1)[-1]
            if suffix not in kinds:
                continue
            kind = kinds[suffix]
            source = (Path(bundle) / rel).read_text()
            for (shader_suffix, mode), precision in SHADER_MODES.items():
                if shader_suffix != suffix:
                    continue
                try:
                    image = gpu.composite(kind, source, sample["lowfreq"], sample["texture"], sample["uv"], mode)
                    device = gpu.renderer_description(kind)
                except RuntimeUnavailable as exc:
                    if required:
                        raise
                    not_run.append(f"{rel} ({mode}): {exc}")
                    continue
                comparison = compare_output("image", sample["image"], image, image_size, "image")
                result = ArtifactResult(f"{rel} ({mode} sampling)", kind, precision, "split_frame",
                                        THRESHOLDS_DB[precision], False, {"image": comparison}, ("image",),
                                        runtime=device, samples=1)
                result.passed = bool(comparison.psnr_db >= result.threshold_db)
                results.append(result)
    return results, not_run
