"""Run Core ML packages (.mlpackage): in Core ML on macOS, or their MIL program on any host.

- `CoreMlRunner` ("coreml"): `coremltools.models.MLModel(path).predict(feed)`, macOS only;
  elsewhere its constructor raises `RuntimeUnavailable`.
- `MilProgramRunner` ("coreml_mil_host"): the package's saved MIL program evaluated with numpy
  (`runtime_bench.mil_program`). It checks what conversion and serialisation produced (ops,
  attributes such as the warp's convention, weights, fp16 storage), not Core ML's own kernels,
  compute-unit placement or on-device arithmetic.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .mil_program import MilProgram
from .runner import ModelFileError, Runner, RuntimeUnavailable, TensorInfo


def _package_io(path: Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs from the package's model description (names, shapes, dtypes)."""
    from coremltools.proto import FeatureTypes_pb2, Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((path / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    kinds = {FeatureTypes_pb2.ArrayFeatureType.FLOAT32: np.float32, FeatureTypes_pb2.ArrayFeatureType.FLOAT16: np.float16,
             FeatureTypes_pb2.ArrayFeatureType.DOUBLE: np.float64, FeatureTypes_pb2.ArrayFeatureType.INT32: np.int32}

    def info(t) -> TensorInfo:
        if t.type.WhichOneof("Type") != "multiArrayType":
            raise RuntimeUnavailable(f"{path.name}: feature {t.name!r} is a {t.type.WhichOneof('Type')}, not a tensor")
        a = t.type.multiArrayType
        return TensorInfo(t.name, tuple(int(s) for s in a.shape), np.dtype(kinds.get(a.dataType, np.float32)))

    return [info(t) for t in spec.description.input], [info(t) for t in spec.description.output]


def _check_package(runner: type[Runner], path: Path | str) -> Path:
    """`path` is a saved .mlpackage: a directory of that suffix holding the model description."""
    path = runner.model_file(path)
    if not (path / "Data" / "com.apple.CoreML" / "model.mlmodel").is_file():
        raise ModelFileError(f"{path} is not a saved .mlpackage (no Data/com.apple.CoreML/model.mlmodel); "
                             "re-export the graph")
    return path


class MilProgramRunner(Runner):
    """A .mlpackage's MIL program evaluated on the host with numpy kernels."""

    runtime = "coreml_mil_host"
    file_suffix = ".mlpackage"
    checks = "MIL program evaluated on host; Core ML runtime not run"

    def __init__(self, path: Path | str):
        self.path = _check_package(type(self), path)
        self.inputs, self.outputs = _package_io(self.path)
        self.program = MilProgram.load(self.path)

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.program.run(prepared)
        return {info.name: np.asarray(out[info.name]).astype(info.dtype) for info in self.outputs}


class CoreMlRunner(Runner):
    """A .mlpackage in Core ML (`MLModel.predict`): macOS only."""

    runtime = "coreml"
    file_suffix = ".mlpackage"
    checks = "Core ML runtime prediction (compute units: all)"

    def __init__(self, path: Path | str, compute_units: str = "ALL"):
        if platform.system() != "Darwin":
            raise RuntimeUnavailable(
                f"Core ML prediction needs macOS (this is {platform.system()}); the package's MIL program is "
                f"evaluated on the host instead (MilProgramRunner, runtime {MilProgramRunner.runtime!r})")
        import coremltools as ct

        self.path = _check_package(type(self), path)
        self.inputs, self.outputs = _package_io(self.path)
        self.model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, compute_units))

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict(prepared)
        return {info.name: np.asarray(out[info.name]).astype(info.dtype) for info in self.outputs}
