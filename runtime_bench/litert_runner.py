"""Run a .tflite model in the LiteRT runtime through its signature, by tensor name.

Uses `ai_edge_litert.interpreter.Interpreter` (the maintained successor of the deprecated
`tf.lite.Interpreter`) and its signature runner, so inputs and outputs are addressed by the
names the exporter gave them (`keypoints`, `texture`, ... -> `image`, `mask`, ...), never by
position.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runner import Runner


@dataclass(frozen=True)
class TensorInfo:
    """One signature input or output.

    scale / zero_point are per-tensor quantization parameters; both are None for float
    tensors (and for per-channel tensors, whose parameters are in `scales` / `zero_points`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float | None = None
    zero_point: int | None = None
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()

    @property
    def quantized(self) -> bool:
        return bool(self.scales)


def _tensor_info(name: str, detail: dict) -> TensorInfo:
    params = detail.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in np.asarray(params.get("scales", []), np.float64).ravel())
    zero_points = tuple(int(z) for z in np.asarray(params.get("zero_points", []), np.int64).ravel())
    scale = scales[0] if len(scales) == 1 else None
    zero_point = zero_points[0] if len(zero_points) == 1 else None
    return TensorInfo(name=name, shape=tuple(int(s) for s in detail["shape"]), dtype=np.dtype(detail["dtype"]),
                      scale=scale, zero_point=zero_point, scales=scales, zero_points=zero_points)


class LiteRtRunner(Runner):
    """A .tflite model loaded in the LiteRT interpreter, run through one signature.

    runner = LiteRtRunner("frame.tflite")
    runner.input_names        # ['adaptive_params', 'keypoints', 'texture']
    out = runner.run({"keypoints": kp, "texture": tex, "adaptive_params": p})  # {'image': ..., ...}

    `num_threads` is passed to the interpreter (None: the runtime's default). The default
    delegate (XNNPACK on CPU) is applied as in an app; `use_xnnpack=False` runs the builtin
    kernels only (for debugging a delegate difference).
    """

    def __init__(self, path: Path | str, signature: str | None = None, num_threads: int | None = None,
                 use_xnnpack: bool = True):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist; export the model first")
        resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads,
                                        experimental_op_resolver_type=resolver)
        signatures = self._interpreter.get_signature_list()
        if not signatures:
            raise ValueError(f"{self.path} has no signature; export it with litert_torch (export.tflite)")
        if signature is None:
            if len(signatures) != 1:
                raise ValueError(f"{self.path} has signatures {sorted(signatures)}; pass signature=")
            signature = next(iter(signatures))
        elif signature not in signatures:
            raise ValueError(f"{self.path} has no signature {signature!r}; it has {sorted(signatures)}")
        self.signature = signature
        self._runner = self._interpreter.get_signature_runner(signature)
        self._inputs = [_tensor_info(n, d) for n, d in self._runner.get_input_details().items()]
        self._outputs = [_tensor_info(n, d) for n, d in self._runner.get_output_details().items()]

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        fmt = lambda ts: ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in ts)
        return f"LiteRtRunner({self.path.name}: ({fmt(self._inputs)}) -> ({fmt(self._outputs)}))"

    # ------------------------------------------------------------------ running
    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; `feed` maps every input name to an array of its shape.

        Float arrays are cast to the input's dtype (float64 -> float32); a quantized integer
        input is quantized with its scale and zero point. Outputs are returned as copies
        (quantized outputs dequantized to float32), keyed by output name.
        """
        names = set(self.input_names)
        missing, unexpected = sorted(names - set(feed)), sorted(set(feed) - names)
        if missing or unexpected:
            raise KeyError(f"feed does not match the model's inputs {self.input_names}: "
                           f"missing {missing}, unexpected {unexpected}")
        prepared = {}
        for info in self._inputs:
            value = np.asarray(feed[info.name])
            if tuple(value.shape) != info.shape:
                raise ValueError(f"input {info.name!r} has shape {tuple(value.shape)}, the model expects {info.shape}")
            if info.quantized and np.issubdtype(info.dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
                q = np.round(value / info.scale) + info.zero_point
                limits = np.iinfo(info.dtype)
                value = np.clip(q, limits.min, limits.max)
            prepared[info.name] = np.ascontiguousarray(value, dtype=info.dtype)
        raw = self._runner(**prepared)
        out = {}
        for info in self._outputs:
            value = np.array(raw[info.name], copy=True)
            if info.quantized and np.issubdtype(value.dtype, np.integer) and info.scale is not None:
                value = ((value.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)
            out[info.name] = value
        return out
