"""Comparators: how far an artifact's output is from the reference, and the thresholds that gate it.

PSNR takes its peak from the *reference* range (max - min), so it means the same for images in
[-1, 1], masks in [0, 1], UV grids and flat parameter vectors. Thresholds live here and only here;
`validate` prints them beside the results.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Minimum PSNR (dB) of the gated outputs, per precision (the names `export.precisions` defines).
# The bundle's contract marks which outputs are gated (`gated`: the frame graphs' image, the
# identity graph's texture: what the user sees); every other output is reported.
THRESHOLDS_DB = {
    "fp32": 60.0,
    "fp16": 40.0,
    "int8_dynamic": 30.0,
    "int8": 30.0,
}
# Runtimes that compute at a lower precision than the artifact stores: LiteRT's GPU accelerator
# runs in fp16 by default (what an app gets), so its runs are gated at the looser of the
# artifact's precision and fp16 (`gate_precision`), on the gated outputs only: the UV error is
# reported, not gated. fp16 arithmetic through the whole network moves the UV by ~0.14 px
# (default model on lavapipe; the UV gates below are for fp16 *weights* with fp32 compute), and
# what that does to the frame is what the image gate judges (41.9 dB there). A warp that breaks
# in fp16 shows in the image (20.8 dB for a flat-index warp; export/warp.py).
RUNTIME_COMPUTE_PRECISION = {"litert_gpu": "fp16"}


def gate_precision(precision: str, runtime: str) -> str:
    """The precision whose gate applies to an artifact of `precision` run in `runtime`."""
    compute = RUNTIME_COMPUTE_PRECISION.get(runtime)
    if compute is None or THRESHOLDS_DB[compute] >= THRESHOLDS_DB[precision]:
        return precision
    return compute


# The UV gate of frame graphs: maximum mean UV error (output pixels), a floor plus a share of the
# model's own warp. The warp is where quantization fails first: int8 sampling coordinates move
# texels by ~1 px (measured: full int8 0.87-0.96 px, CONV/FC-only int8 0.28 px on a 3 px warp),
# and the image PSNR of such a failure can sit close to its gate. But the same relative precision
# of the displacement means more pixels on a model that moves texels further: a randomly
# initialised official model moves them by ~60 px, and its fp16 artifacts are off by 0.12-0.18 px
# while their images pass at 42-46 dB. So the allowance grows with the reference's mean
# displacement (`warp_px`): fp16 keeps the displacement to 2^-8 of itself (8 units of fp16's
# 2^-11 round-off), int8 to 2 quantization steps (2/127).
@dataclass(frozen=True)
class UvTolerance:
    floor_px: float
    share_of_warp: float

    def limit_px(self, warp_px: float) -> float:
        return self.floor_px + self.share_of_warp * max(0.0, warp_px)


UV_TOLERANCE = {
    "fp32": UvTolerance(0.01, 1e-4),
    "fp16": UvTolerance(0.05, 2 ** -8),
    "int8_dynamic": UvTolerance(0.5, 2 / 127),
    "int8": UvTolerance(0.5, 2 / 127),
}

# `validate` on a machine other than the bundle's compares its figures with the recorded ones
# and reports every gated PSNR that moved by more than FIGURE_DRIFT_DB or UV error that moved by
# more than FIGURE_DRIFT_UV_PX. PSNR above FIGURE_PSNR_CEILING_DB is float round-off whose exact
# value depends on summation order, so it is compared as "at least the ceiling".
FIGURE_DRIFT_DB = 1.0
FIGURE_DRIFT_UV_PX = 0.02
FIGURE_PSNR_CEILING_DB = 80.0


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the peak taken from the reference's range; inf when identical."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs test {test.shape}")
    mse = float(np.mean((reference - test) ** 2))
    peak = float(reference.max() - reference.min()) or 1.0
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denom == 0:  # a zero vector: similar only to itself
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b / denom)


def uv_error_px(reference_uv: np.ndarray, test_uv: np.ndarray, image_size: int) -> float:
    """Mean distance, in output pixels, between two grid_sample grids (x, y in [-1, 1])."""
    diff = (np.asarray(reference_uv, np.float64) - np.asarray(test_uv, np.float64)) * (image_size / 2)
    return float(np.linalg.norm(diff, axis=-1).mean())


def pixel_centre_grid(image_size: int) -> np.ndarray:
    """The identity sampling grid [S, S, 2] (x, y) of `grid_sample(align_corners=False)`."""
    centres = (np.arange(image_size, dtype=np.float64) + 0.5) / image_size * 2 - 1
    v, u = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([u, v], -1)


def warp_px(uv: np.ndarray, image_size: int) -> float:
    """Mean displacement, in output pixels, of a sampling grid from the identity grid: how far
    the model moves texels (about 3 px for a trained model)."""
    delta = (np.asarray(uv, np.float64) - pixel_centre_grid(image_size)) * (image_size / 2)
    return float(np.linalg.norm(delta, axis=-1).mean())


@dataclass
class OutputComparison:
    name: str
    psnr_db: float
    max_abs: float
    cosine: float
    uv_error_px: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if math.isinf(d["psnr_db"]):
            d["psnr_db"] = "inf"
        return d


def compare_output(name: str, reference: np.ndarray, test: np.ndarray, image_size: int | None = None,
                   kind: str = "") -> OutputComparison:
    """All metrics of one output (UV error in pixels for a sampling grid: `kind` "warp")."""
    test = np.asarray(test, dtype=np.float64)
    return OutputComparison(
        name=name,
        psnr_db=psnr_db(reference, test),
        max_abs=float(np.abs(np.asarray(reference, np.float64) - test).max()),
        cosine=cosine(reference, test),
        uv_error_px=uv_error_px(reference, test, image_size) if kind == "warp" and image_size else None,
    )
