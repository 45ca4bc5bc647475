"""Run an exported .onnx graph in onnxruntime (CPUExecutionProvider), by input/output name."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runner import Runner

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


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints, or strings / None for dynamic dimensions
    dtype: np.dtype


class OnnxRuntimeRunner(Runner):
    """One onnxruntime session on the CPU provider.

    `run(feed)` takes a dict input name -> array (every input, cast to the declared dtype) and
    returns a dict output name -> array.
    """

    def __init__(self, path: Path | str, intra_op_threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; export the graph first")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = [self._info(i) for i in self.session.get_inputs()]
        self._outputs = [self._info(o) for o in self.session.get_outputs()]

    @staticmethod
    def _info(arg) -> TensorInfo:
        return TensorInfo(arg.name, tuple(arg.shape), np.dtype(_ORT_TYPES.get(arg.type, np.float32)))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise KeyError(f"feed lacks inputs {missing}; {self.path.name} needs {self.input_names}")
        prepared = {}
        for info in self._inputs:
            value = feed[info.name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.array(value, dtype=info.dtype, order="C")
            static = [d for d in info.shape if isinstance(d, int)]
            if len(info.shape) != value.ndim or (len(static) == len(info.shape) and tuple(info.shape) != value.shape):
                raise ValueError(f"input {info.name} has shape {value.shape}, expected {info.shape}")
            prepared[info.name] = value
        results = self.session.run(self.output_names, prepared)
        return dict(zip(self.output_names, results))
