"""What every runtime runner has in common: tensor metadata and one feed check.

A runner (one per runtime, as in Polygraphy) loads one model file and describes its inputs and
outputs as `TensorInfo`s. `Runner.infer(feed)` checks the feed once, for every runtime alike:
exactly the model's input names, each of the declared shape, of a dtype that converts to the
input's without changing its meaning. Only then does the runtime's own `_infer` run, with
arrays already of the input's dtype, C-contiguous. Outputs come back by name, never by
position, as float arrays (quantized outputs dequantized).

`check_contract` holds a loaded model against the tensors a bundle's manifest declares for it,
so an artifact whose boundary differs from the contract fails before it runs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..reference.errors import BilayerError, InputError


class RuntimeUnavailable(BilayerError):
    """A runtime a bundle names cannot run on this machine (no runner, no device, no driver);
    the message says what is missing and how to get it."""


class FeedError(InputError):
    """A feed does not match a model's inputs (names, shapes or dtypes)."""


class ModelFileError(InputError):
    """A model file is missing, or is not of the format its runtime reads (a bundle whose
    manifest names the wrong runtime for a file, or a path given by hand)."""


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as a runtime sees it.

    shape: ints, with None for a dimension the model leaves dynamic.
    scales / zero_points: quantization parameters of an integer tensor that stands for real
    values (one entry: per tensor; several: per channel along `quantized_dimension`); empty
    for float tensors.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.scales) and np.issubdtype(self.dtype, np.integer)

    def describe(self) -> dict:
        """The manifest's form: name, shape, dtype (quantization only when there is one)."""
        entry = {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}
        if self.quantized:
            entry["quantization"] = {"scale": list(self.scales), "zero_point": list(self.zero_points),
                                     "dimension": self.quantized_dimension}
        return entry


def _broadcast(values: tuple, info: TensorInfo, ndim: int) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.size > 1:  # per channel: one parameter per index of the quantized dimension
        shape = [1] * ndim
        shape[info.quantized_dimension] = -1
        array = array.reshape(shape)
    return array


def quantize(value: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Real values -> the integer tensor `info` describes (round to nearest, saturate)."""
    q = np.round(np.asarray(value, np.float64) / _broadcast(info.scales, info, np.ndim(value)))
    q = q + _broadcast(info.zero_points, info, np.ndim(value))
    limits = np.iinfo(info.dtype)
    return np.clip(q, limits.min, limits.max).astype(info.dtype)


def dequantize(value: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The integer tensor `info` describes -> float32 real values."""
    zero = _broadcast(info.zero_points, info, np.ndim(value))
    return ((np.asarray(value, np.float64) - zero) * _broadcast(info.scales, info, np.ndim(value))).astype(np.float32)


class Runner(ABC):
    """One model file loaded in one runtime. Subclasses set `path`, `inputs`, `outputs` and
    implement `_infer(prepared) -> {output name: array}`."""

    runtime: str  # the name bundles use for this runtime (`RUNNERS` in runtime_bench.runners)
    checks: str  # what a pass in this runner establishes, for the reports ("what was checked where")
    file_suffix: str  # the model format this runtime reads, by its file name's ending
    path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @classmethod
    def model_file(cls, path: Path | str) -> Path:
        """`path` checked before any runtime opens it: it exists and has the suffix of the format
        this runtime reads (a file of another format would fail deep inside the runtime, or
        be taken for something it is not)."""
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"{path} does not exist; export the model first")
        if path.suffix != cls.file_suffix:
            raise ModelFileError(f"{path.name} is not a {cls.file_suffix} file, so {cls.runtime!r} cannot run it; "
                                 f"check the runtime its manifest entry names (re-run `bilayer-mobile export`)")
        return path

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feed` against the inputs, run once, return every output by name (float)."""
        raw = self._infer(self.prepare(feed))
        out = {}
        for info in self.outputs:
            value = np.array(raw[info.name], copy=True)
            out[info.name] = dequantize(value, info) if info.quantized else value
        return out

    def prepare(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feed checked and converted to each input's dtype (real values quantized for an
        integer input that has quantization parameters)."""
        names = set(self.input_names)
        missing, unexpected = sorted(names - set(feed)), sorted(set(feed) - names)
        if missing or unexpected:
            raise FeedError(f"the feed does not match the inputs of {self.path.name} {self.input_names}: "
                            f"missing {missing}, unexpected {unexpected}")
        prepared = {}
        for info in self.inputs:
            value = feed[info.name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if len(value.shape) != len(info.shape) or any(d is not None and d != s for d, s in zip(info.shape, value.shape)):
                raise FeedError(f"input {info.name!r} of {self.path.name} has shape {tuple(value.shape)}, "
                                f"the model expects {tuple(info.shape)}")
            if info.quantized and not np.issubdtype(value.dtype, np.integer):
                value = quantize(value, info)
            elif not np.can_cast(value.dtype, info.dtype, casting="same_kind"):
                raise FeedError(f"input {info.name!r} of {self.path.name} is {value.dtype}, the model expects "
                                f"{np.dtype(info.dtype).name}")
            prepared[info.name] = np.ascontiguousarray(value, dtype=info.dtype)
        return prepared

    @abstractmethod
    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the runtime on a checked feed."""

    def check_contract(self, inputs: list[dict], outputs: list[dict]) -> list[str]:
        """Differences between this model's boundary and the declared tensors (manifest entries
        with name, shape, dtype): names in any order, then each tensor's shape and dtype."""
        problems = []
        for kind, declared, actual in (("input", inputs, self.inputs), ("output", outputs, self.outputs)):
            have = {t.name: t for t in actual}
            want = {d["name"]: d for d in declared}
            if set(have) != set(want):
                problems.append(f"{kind}s are {sorted(have)}, the contract declares {sorted(want)}")
                continue
            for name, entry in want.items():
                info = have[name]
                if list(info.shape) != list(entry["shape"]) or np.dtype(info.dtype).name != entry["dtype"]:
                    problems.append(f"{kind} {name} is {np.dtype(info.dtype).name}{list(info.shape)}, the contract "
                                    f"declares {entry['dtype']}{list(entry['shape'])}")
        return problems

    def __repr__(self) -> str:
        fmt = lambda ts: ", ".join(f"{t.name}{list(t.shape)}:{np.dtype(t.dtype).name}" for t in ts)
        return f"{type(self).__name__}({self.path.name}: ({fmt(self.inputs)}) -> ({fmt(self.outputs)}))"
