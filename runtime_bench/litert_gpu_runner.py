"""Run a .tflite model on LiteRT's real GPU accelerator and record what the accelerator took.

`ai_edge_litert.compiled_model.CompiledModel` with `HardwareAccelerator.GPU` loads LiteRT's
WebGPU accelerator (ML Drift over Dawn), the GPU path of LiteRT on devices. It runs on any
Vulkan device; on a machine without a GPU, Mesa's software driver lavapipe (>= 25, Debian
bookworm-backports: `make setup` installs it) provides one. lavapipe is slow: its numbers are
verdicts and numerics, never timings.

The accelerator computes in fp16 unless told otherwise (`enforce_f32`): that is the mode an app
gets by default, and the one validation gates. Ops the accelerator rejects run on the CPU
(`HardwareAccelerator.GPU | CPU`); it says which and why only on stderr, so the runner reads
its output while compiling and keeps the verdict (`GpuVerdict`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .litert_runner import tensor_info
from .native_output import native_output_captured
from .own_process import OwnProcess
from .runner import Runner, RuntimeUnavailable

VULKAN_ADVICE = ("the LiteRT GPU accelerator needs a Vulkan device; on a machine without a GPU install Mesa's "
                 "lavapipe >= 25 (Debian: `make setup` as root, or scripts/install-vulkan-driver.sh)")


class GpuUnavailable(RuntimeUnavailable):
    """The GPU accelerator cannot start on this machine (no Vulkan device, old driver)."""


@dataclass
class GpuVerdict:
    """What the GPU accelerator said about one model: whether it took every op, the ops it
    rejected (op type, reason, how many), how many ops it runs and how many it left to the CPU,
    the device, and whether it computes in fp16."""

    fully_accelerated: bool
    rejected: list[dict] = field(default_factory=list)  # {"op", "reason", "count", "tensors"}
    gpu_ops: int | None = None
    cpu_ops: int | None = None
    device: str = ""
    fp16: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line, e.g. `fully accelerated (297 ops on the GPU, fp16)`."""
        mode = "fp16" if self.fp16 else "fp32"
        if self.fully_accelerated:
            return f"fully accelerated ({self.gpu_ops} ops on the GPU, {mode})"
        ops = ", ".join(f"{r['op']} x{r['count']}" for r in self.rejected)
        return f"NOT fully accelerated: {self.gpu_ops} ops on the GPU, {self.cpu_ops} on the CPU ({mode}); rejected: {ops}"


_REJECTED_HEADER = "Following operations are not supported by GPU delegate"
_REJECTED_LINE = re.compile(r"^(?:ERROR: )?([A-Z][A-Z0-9_]+): (.*)$")
_COUNTS = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU")
_DEVICE = re.compile(r"Selected adapter: (.*?), arch=")


def parse_verdict(log: str, fully_accelerated: bool, total_ops: int, fp16: bool) -> GpuVerdict:
    """The accelerator's verdict from what it printed while compiling a model of `total_ops` ops.

    Rejected ops are printed one per line, `OP: reason [tensor]`, after a header, then one line
    with the GPU / CPU op counts; a fully accelerated model prints neither.
    """
    rejected: dict[tuple[str, str], dict] = {}
    in_list = False
    for line in log.splitlines():
        if _REJECTED_HEADER in line:
            in_list = True
            continue
        if in_list:
            match = _REJECTED_LINE.match(line.strip())
            if not match:
                in_list = False
                continue
            op, text = match.groups()
            words = text.split()
            # the last word names the op's output tensor when it contains a module path or ';'
            tensor = words.pop() if words and ("/" in words[-1] or ";" in words[-1]) else None
            entry = rejected.setdefault((op, " ".join(words)), {"op": op, "reason": " ".join(words), "count": 0,
                                                                  "tensors": []})
            entry["count"] += 1
            if tensor:
                entry["tensors"].append(tensor)
    counts = _COUNTS.search(log)
    device = _DEVICE.search(log)
    gpu_ops, cpu_ops = (int(counts.group(1)), int(counts.group(2))) if counts else (
        (total_ops, 0) if fully_accelerated else (None, None))
    return GpuVerdict(fully_accelerated, list(rejected.values()), gpu_ops, cpu_ops,
                      device.group(1) if device else "", fp16)


def _op_count(path: Path) -> int:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    return len(model.subgraphs[0].operators)


class _CompiledGpuModel:
    """The model compiled for the GPU accelerator, in the process that runs it (the worker)."""

    def __init__(self, path: Path, enforce_f32: bool):
        from ai_edge_litert.compiled_model import CompiledModel, GpuOptions, HardwareAccelerator, Options

        gpu_options = GpuOptions(enforce_f32=True) if enforce_f32 else None
        options = Options(hardware_accelerators=HardwareAccelerator.GPU | HardwareAccelerator.CPU,
                          gpu_options=gpu_options)
        with native_output_captured() as log:
            try:
                self._model = CompiledModel.from_file(str(path), options=options)
                error = None
            except RuntimeError as exc:
                error = exc
        self.log_text = "".join(log)
        if error is not None:
            if "WebGPU environment" in self.log_text or "WebGPU environment" in str(error):
                raise GpuUnavailable(f"cannot run {path.name} on the GPU: {VULKAN_ADVICE}") from None
            raise error
        self.verdict = parse_verdict(self.log_text, bool(self._model.is_fully_accelerated()), _op_count(path),
                                     fp16=not enforce_f32)
        signatures = self._model.get_signature_list()
        self.signature = next(iter(signatures))
        self._index = self._model.get_signature_index(self.signature)
        names = signatures[self.signature]
        inputs = self._model.get_input_tensor_details(self.signature)
        outputs = self._model.get_output_tensor_details(self.signature)
        self.inputs = [tensor_info(n, inputs[n]) for n in names["inputs"]]
        self.outputs = [tensor_info(n, outputs[n]) for n in names["outputs"]]

    def description(self) -> tuple:
        """What the parent keeps: the compile log, the verdict, the signature and its tensors."""
        return self.log_text, self.verdict, self.signature, self.inputs, self.outputs

    def infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = self._model.create_input_buffers(self._index)
        outputs = self._model.create_output_buffers(self._index)
        for info, buffer in zip(self.inputs, inputs):
            buffer.write(prepared[info.name])
        self._model.run_by_index(self._index, inputs, outputs)
        return {info.name: buffer.read(int(np.prod(info.shape)), info.dtype).reshape(info.shape)
                for info, buffer in zip(self.outputs, outputs)}


class LiteRtGpuRunner(Runner):
    """A .tflite model compiled for LiteRT's GPU accelerator (CPU for the ops it rejects).

    runner = LiteRtGpuRunner("frame_fp32.tflite")       # fp16 compute, as on a phone
    runner.verdict.summary()  # 'fully accelerated (268 ops on the GPU, fp16)'
    out = runner.infer({"keypoints": kp, "texture": tex, "adaptive_params": p})

    The accelerator runs in a worker process of its own (`OwnProcess`): in a process that has
    loaded coremltools 9.0, LiteRT 2.3's GPU accelerator crashes with a segmentation fault. A
    crash of the worker raises `WorkerDied`; a script that makes this runner needs the
    `if __name__ == "__main__":` guard.
    """

    runtime = "litert_gpu"
    file_suffix = ".tflite"
    checks = ("LiteRT GPU accelerator (CompiledModel, WebGPU over Vulkan, fp16) on this machine's Vulkan device: "
              "verdicts and fp16 numerics, not phone timings")

    def __init__(self, path: Path | str, enforce_f32: bool = False):
        self.path = self.model_file(path)
        self._model = OwnProcess(_CompiledGpuModel, self.path, enforce_f32,
                                 label=f"LiteRT GPU accelerator ({self.path.name})")
        log_text, self.verdict, self.signature, self.inputs, self.outputs = self._model.call("description")
        logging.getLogger(__name__).info(log_text)

    def _infer(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.call("infer", prepared)

    def close(self) -> None:
        """Stop the worker (also done when the runner is garbage-collected)."""
        if getattr(self, "_model", None) is not None:
            self._model.close()

    def __del__(self):
        self.close()
