"""Run a `.pte` program in the ExecuTorch runtime (`executorch.runtime`), by tensor name.

The program's `forward` takes and returns tensors by position; the names come from the two
constant methods the exporter stores in every program (`input_names`, `output_names`, see
`export.executorch_export`), so a program without them is refused rather than guessed at.
XNNPACK-delegated partitions run in XNNPACK, the rest on ExecuTorch's portable kernels, as in
an app.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .native_output import native_output_captured
from .runner import Runner, TensorInfo

# ExecuTorch's ScalarType codes (those of c10) -> numpy.
_SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                 7: np.float64, 11: np.bool_}


def _names(program, method: str, path: Path, count: int) -> list[str]:
    if method not in program.method_names:
        raise ValueError(f"{path} has no {method!r} method: export it with `bilayer-mobile export --targets executorch`")
    names = program.load_method(method).execute([])[0].split(",")
    if len(names) != count:
        raise ValueError(f"{path}: {method} names {len(names)} tensors, forward has {count}")
    return names


def _info(name: str, meta) -> TensorInfo:
    return TensorInfo(name, tuple(int(s) for s in meta.sizes()), np.dtype(_SCALAR_TYPES.get(meta.dtype(), np.float32)))


class ExecutorchRunner(Runner):
    """One `.pte` program loaded in the ExecuTorch runtime, its `forward` method run by name.

    runner = ExecutorchRunner("frame_fp32.pte")
    out = runner.infer({"keypoints": kp, "texture": tex, "adaptive_params": p})  # {'image': ..., ...}
    """

    runtime = "executorch"
    file_suffix = ".pte"
    checks = "ExecuTorch runtime (XNNPACK delegate, portable kernels for the rest) on this machine's CPU"

    def __init__(self, path: Path | str):
        import torch

        self.path = self.model_file(path)
        self._torch = torch
        with native_output_captured():  # the runtime's cpuinfo notices
            from executorch.runtime import Runtime

            program = Runtime.get().load_program(str(self.path))
            self._method = program.load_method("forward")
            meta = self._method.metadata
            inputs = _names(program, "input_names", self.path, meta.num_inputs())
            outputs = _names(program, "output_names", self.path, meta.num_outputs())
        self.inputs = [_info(n, meta.input_tensor_meta(i)) for i, n in enumerate(inputs)]
        self.outputs = [_info(n, meta.output_tensor_meta(i)) for i, n in enumerate(outputs)]

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._method.execute([self._torch.from_numpy(prepared[n]) for n in self.input_names])
        return {n: v.numpy() for n, v in zip(self.output_names, values, strict=True)}
