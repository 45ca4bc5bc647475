"""The interface every export target implements: one small class per target module.

A target turns a graph (`export.graphs`) into a model file of one format at one precision
(`export.precisions`). It converts each graph to float once (`convert_float`) and derives every
precision's artifact from that float model (`export`). It also says which runtime runs its
artifacts (a name `runtime_bench.runners` knows) and what it cannot do. Adding a target is one
module with one `Target` subclass, listed in `export.targets.TARGETS`.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..reference.errors import BilayerError
from .errors import ConversionError


@dataclass
class ArtifactNotes:
    """What a target reports about one artifact it wrote: the op types (with counts) still
    computing in float after quantization, notes on how it was made, and what is known at
    export of how the artifact maps onto its runtime's accelerators (`accelerator`: ExecuTorch's
    delegation summary, Core ML's op list and Neural Engine notes), for the coverage report."""

    float_ops: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)
    accelerator: dict | None = None


class Target(ABC):
    """One export format."""

    name: str  # as on the command line and in manifests: "onnx"
    extension: str  # of its files: ".onnx"
    runtime: str  # the runtime that runs its artifacts (runtime_bench.runners): "onnxruntime"
    precisions: tuple[str, ...]  # the precisions it can produce (export.precisions names)
    limitations: dict[str, str]  # what it cannot do -> why (recorded in the manifest)
    graphs: tuple[str, ...] | None = None  # the graphs it exports (None: every graph asked for)

    @abstractmethod
    def convert_float(self, graph: torch.nn.Module, example_inputs: dict[str, torch.Tensor]):
        """The graph's float model in this target's own form, from which `export` derives
        every precision (so each graph is converted once per target)."""

    @abstractmethod
    def export(self, graph: torch.nn.Module, example_inputs: dict[str, torch.Tensor], precision: str, path: Path,
               calibration: list[dict[str, np.ndarray]] | None = None, float_model=None) -> ArtifactNotes:
        """Write the artifact of `graph` at `precision` to `path` (atomically). Inputs are named
        after `example_inputs`' keys, outputs after `graph.output_spec()`. `calibration` (feeds
        by input name) is needed by calibrated precisions; `float_model` is what
        `convert_float` returned for this graph (converted here when None)."""

    def graph_for(self, graph: torch.nn.Module, warp: str) -> torch.nn.Module:
        """The form of `graph` this target converts, for the warp asked for (`export.warp.WARPS`,
        `--warp`). By default the graph as it is: its warp is torch's grid_sample."""
        return graph

    def warp_of(self, graph: torch.nn.Module) -> str | None:
        """How the converted `graph` (from `graph_for`) warps, for the manifest; None for a graph
        without a warp."""
        return getattr(graph, "warp_kind", None)

    def describe(self) -> dict:
        """The manifest's entry for this target."""
        return {"runtime": self.runtime, "extension": self.extension, "precisions": list(self.precisions),
                "graphs": list(self.graphs) if self.graphs else "all", "limitations": dict(self.limitations)}


def output_names(graph: torch.nn.Module) -> list[str]:
    """The names of a graph's outputs, in order, from its contract."""
    return [t.name for t in graph.output_spec()]


@contextlib.contextmanager
def converting(what: str):
    """Re-raise whatever a third-party converter raises inside the block as a `ConversionError`
    naming `what` (converters raise many exception types; the toolchain's errors pass)."""
    try:
        yield
    except BilayerError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:500]
        raise ConversionError(f"{what} failed: {type(exc).__name__}: {first_line}") from exc
