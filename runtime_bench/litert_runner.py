"""Run a .tflite model in the LiteRT runtime, by tensor name.

Uses `ai_edge_litert.interpreter.Interpreter` (the maintained successor of the deprecated
`tf.lite.Interpreter`) and its signature runner, so inputs and outputs are addressed by the
names the exporter gave them (`keypoints`, `texture`, ... -> `image`, `mask`, ...), never by
position. A model without a signature (MediaPipe's published face models, which a bundle ships
as they are) is addressed by its input and output tensors' own names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .runner import ModelFileError, Runner, TensorInfo


def tensor_info(name: str, detail: dict) -> TensorInfo:
    """A LiteRT tensor detail (interpreter or signature runner) as a `TensorInfo`."""
    params = detail.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in np.asarray(params.get("scales", []), np.float64).ravel())
    zero_points = tuple(int(z) for z in np.asarray(params.get("zero_points", []), np.int64).ravel())
    return TensorInfo(name=name, shape=tuple(int(s) for s in detail["shape"]), dtype=np.dtype(detail["dtype"]),
                      scales=scales, zero_points=zero_points,
                      quantized_dimension=int(params.get("quantized_dimension", 0)))


class LiteRtRunner(Runner):
    """A .tflite model loaded in the LiteRT interpreter, run through one signature (or, for a
    model that has none, through its input and output tensors).

    runner = LiteRtRunner("frame.tflite")
    out = runner.infer({"keypoints": kp, "texture": tex, "adaptive_params": p})  # {'image': ..., ...}

    `num_threads` is passed to the interpreter (None: the runtime's default). The default
    delegate (XNNPACK on CPU) is applied as in an app; `use_xnnpack=False` runs the builtin
    kernels only (for debugging a delegate difference); `xnnpack_latest_features=True` turns on
    the XNNPACK features LiteRT ships but does not enable by default (the interpreter's
    `experimental_default_delegate_latest_features`; `make bench` times both).
    """

    runtime = "litert"
    file_suffix = ".tflite"
    checks = "LiteRT interpreter (XNNPACK delegate, builtin kernels for the rest) on this machine's CPU"

    def __init__(self, path: Path | str, signature: str | None = None, num_threads: int | None = None,
                 use_xnnpack: bool = True, xnnpack_latest_features: bool = False):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = self.model_file(path)
        resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads,
                                        experimental_op_resolver_type=resolver,
                                        experimental_default_delegate_latest_features=xnnpack_latest_features)
        signatures = self._interpreter.get_signature_list()
        if not signatures and signature is None:  # a published model: its tensors by their own names
            self.signature = None
            self._interpreter.allocate_tensors()
            inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
            self._indices = {d["name"]: d["index"] for d in inputs + outputs}
            self.inputs = [tensor_info(d["name"], d) for d in inputs]
            self.outputs = [tensor_info(d["name"], d) for d in outputs]
            return
        if signature is None:
            if len(signatures) != 1:
                raise ModelFileError(f"{self.path} has signatures {sorted(signatures)}; pass signature=")
            signature = next(iter(signatures))
        elif signature not in signatures:
            raise ModelFileError(f"{self.path} has no signature {signature!r}; it has {sorted(signatures) or 'none'}")
        self.signature = signature
        self._runner = self._interpreter.get_signature_runner(signature)
        self.inputs = [tensor_info(n, d) for n, d in self._runner.get_input_details().items()]
        self.outputs = [tensor_info(n, d) for n, d in self._runner.get_output_details().items()]

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.signature is not None:
            return self._runner(**prepared)
        for info in self.inputs:
            self._interpreter.set_tensor(self._indices[info.name], prepared[info.name])
        self._interpreter.invoke()
        return {info.name: self._interpreter.get_tensor(self._indices[info.name]) for info in self.outputs}
