"""Steady landmarks: the One Euro filter over a stream of 68-point frames.

Landmarks from any tracker jitter by a pixel or so from frame to frame on a still face, and the
bi-layer model turns that into a shaking head. A fixed low-pass filter would steady a still face
but drag behind a moving one; the One Euro filter (Casiez, Roussel and Vogel, CHI 2012), the
usual choice for interactive tracking, is a first-order low-pass whose cut-off frequency rises
with the signal's speed: `cutoff = min_cutoff + beta * |speed|`. Slow motion is smoothed hard,
fast motion passes with little lag.

Here every coordinate of every point is filtered on its own, and speeds are measured in
inter-ocular distances per second (the eye centres' distance of the incoming frame), so the
parameters do not depend on the face's size in pixels. Time comes from the frame timestamps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class OneEuroParams:
    """The filter's parameters; speeds in inter-ocular distances (IOD) per second."""

    min_cutoff_hz: float = 0.6  # cut-off of a still face: lower = steadier, more lag when starting to move
    beta: float = 8.0  # how fast the cut-off rises with speed, Hz per (IOD/s): higher = less lag
    derivative_cutoff_hz: float = 1.0  # low-pass on the speed estimate itself

    def __post_init__(self) -> None:
        if not (self.min_cutoff_hz > 0 and self.derivative_cutoff_hz > 0 and self.beta >= 0):
            raise InputError(f"One Euro parameters must be positive (beta >= 0), got {self}")

    def to_manifest(self) -> dict:
        return {"kind": "one_euro", "speed_unit": "inter-ocular distances per second", **asdict(self)}


def _smoothing(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
    """The exponential smoothing factor of a first-order low-pass at `cutoff_hz` for a step `dt`."""
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff_hz))
    return 1.0 / (1.0 + tau / dt)


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres of 68 iBUG landmarks [68, 2] (pixels)."""
    return float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))


@dataclass
class LandmarkFilter:
    """One Euro filter over [68, 2] landmark frames; `reset()` between clips."""

    params: OneEuroParams = field(default_factory=OneEuroParams)
    _value: np.ndarray | None = field(default=None, init=False, repr=False)
    _speed: np.ndarray | None = field(default=None, init=False, repr=False)
    _time: float | None = field(default=None, init=False, repr=False)

    def reset(self) -> None:
        self._value = self._speed = self._time = None

    def __call__(self, landmarks: np.ndarray, time_s: float) -> np.ndarray:
        """The filtered landmarks of a frame at `time_s` seconds (strictly increasing)."""
        x = np.asarray(landmarks, np.float64)
        if x.shape != (68, 2) or not np.isfinite(x).all():
            raise InputError(f"landmarks to filter must be a finite (68, 2) array, got shape {x.shape}")
        if self._value is None:
            self._value, self._speed, self._time = x, np.zeros_like(x), float(time_s)
            return x.astype(np.float32)
        dt = float(time_s) - self._time
        if not dt > 0:
            raise InputError(f"frame times must increase: {time_s} s after {self._time} s")
        scale = max(inter_ocular_distance(x), 1e-6)
        raw_speed = (x - self._value) / dt / scale
        self._speed = self._speed + _smoothing(self.params.derivative_cutoff_hz, dt) * (raw_speed - self._speed)
        cutoff = self.params.min_cutoff_hz + self.params.beta * np.abs(self._speed)
        self._value = self._value + _smoothing(cutoff, dt) * (x - self._value)
        self._time = float(time_s)
        return self._value.astype(np.float32)
