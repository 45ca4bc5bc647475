"""Run an exported .onnx graph in onnxruntime (CPUExecutionProvider), by input/output name."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .runner import Runner, TensorInfo

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def ort_session(model: Path | bytes, intra_op_threads: int | None = None):
    """An onnxruntime CPU session of a model file or serialized model, quiet (errors only):
    the one set-up every ONNX run here uses, so they all run the same kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(Runner):
    """One onnxruntime session on the CPU provider."""

    runtime = "onnxruntime"
    file_suffix = ".onnx"
    checks = "onnxruntime, CPU execution provider, on this machine"

    def __init__(self, path: Path | str, intra_op_threads: int | None = None):
        self.path = self.model_file(path)
        self.session = ort_session(self.path, intra_op_threads)
        self.inputs = [self._info(i) for i in self.session.get_inputs()]
        self.outputs = [self._info(o) for o in self.session.get_outputs()]

    @staticmethod
    def _info(arg) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
        return TensorInfo(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, prepared)))
