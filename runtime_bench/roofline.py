"""A roofline estimate of the per-frame graph on phone GPUs and NPUs, from published peak figures.

This is an estimate from peak figures, not a measurement. It answers: given the frame graph's
multiply-accumulates and the bytes it must move, how fast could an accelerator with a given
peak arithmetic rate and DRAM bandwidth run it, and is each layer limited by arithmetic or by
memory traffic?

Per-layer costs (`frame_layers`)
    One frame of `BilayerModel.render` (batch 1, the config's image size) runs under a
    `TorchDispatchMode` that sees every aten operator, while forward hooks on the model's
    modules name the module an operator runs in. That covers the leaf modules (Conv2d, Linear,
    BatchNorm, LeakyReLU, Tanh, Upsample) and the functional operators between them: the
    per-identity adaptive 1x1 convolutions (`torch.bmm` in `networks.adaptive_conv1x1`), the
    adaptive norm affines (mul/add), the sigmoid of the mask, the UV grid addition, the warp's
    `grid_sample` and the final `lowfreq + warped` addition. Operators that move no data (views,
    reshapes, allocations) and the input checks of `render` (boolean isfinite tests) are left out.

    MACs are counted for convolution, addmm/mm and bmm, exactly the operators torch's
    `FlopCounterMode` counts, so the sum equals `summary.pipeline_macs(model)["frame"]`.
    Elementwise arithmetic (norms, activations, adds, the bilinear interpolation of the warp)
    is reported separately as `vector_flops`, a rough per-element count; FlopCounterMode ignores
    it, and it never decides a layer's time because such layers are far below any ridge point.

Traffic model
    Unfused (the estimate's default): every layer reads each of its inputs and weights from DRAM
    once and writes its output to DRAM once; nothing stays in cache between layers. Broadcast
    operands (stride-0 dimensions) count once per distinct element.
    Fused lower bound: the whole frame as one kernel that reads every weight (network parameters,
    buffers and the identity's adaptive parameters) once, reads the graph inputs (keypoints and
    texture) once and writes only the graph outputs (image and mask, the frame graph contract's
    outputs). No implementation can move fewer bytes.
    Bytes are element counts times the element width of the precision (2 for fp16, 1 for int8).

Time per layer = max(flops / peak, bytes / bandwidth) with flops = 2 * MACs + vector_flops,
summed over layers (layers run one after another). "Ideal" is at 100% of the peak figures;
"practical" divides the peaks by typical achieved fractions (`Efficiency`), which are stated
assumptions, not measurements.
"""
from __future__ import annotations

import dataclasses
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..reference.files import atomic_write
from ..reference.model import BilayerModel

PAPER_MS = 42.0
PAPER_DEVICE = "Adreno 640"
PAPER_SOURCE = ("Zakharov, Ivakhnenko, Shysheya, Lempitsky, 'Fast Bi-layer Neural Synthesis of One-Shot "
                "Realistic Head Avatars', ECCV 2020 (arXiv:2008.10174): 42 ms per frame on a Snapdragon 855 "
                "(Adreno 640 GPU) in fp16, measured")
ESTIMATE_LABEL = "Roofline estimate from peak figures, not a measurement"

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


# ============================================================================== per-layer costs
@dataclass(frozen=True)
class LayerCost:
    """What one operator of the frame graph computes and moves.

    Element counts are independent of the precision; `*_bytes` multiply them by `dtype_bytes`.
    `first_use_weight_elements` counts only weights not read by an earlier layer, and
    `graph_input_elements` / `graph_output_elements` the part of the layer's inputs / output that
    are the frame graph's inputs / outputs: together they make the fused lower bound.
    """

    name: str
    kind: str  # conv, linear, adaptive_conv, norm, activation, elementwise, upsample, pool, warp, copy, other
    op: str  # the aten operator
    macs: int
    vector_flops: int
    input_elements: int  # activations read
    weight_elements: int  # parameters, buffers and per-identity adaptive parameters read
    output_elements: int
    dtype_bytes: int = 2
    first_use_weight_elements: int = 0
    graph_input_elements: int = 0
    graph_output_elements: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.vector_flops

    @property
    def bytes(self) -> int:
        """Unfused traffic: inputs and weights read once, output written once."""
        return (self.input_elements + self.weight_elements + self.output_elements) * self.dtype_bytes

    @property
    def fused_bytes(self) -> int:
        """This layer's share of the fused lower bound."""
        return (self.first_use_weight_elements + self.graph_input_elements + self.graph_output_elements) * self.dtype_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, flops per byte of unfused traffic."""
        return self.flops / self.bytes if self.bytes else math.inf

    def at_dtype(self, dtype_bytes: int) -> "LayerCost":
        return dataclasses.replace(self, dtype_bytes=dtype_bytes)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "op": self.op, "macs": self.macs,
                "vector_flops": self.vector_flops, "bytes": self.bytes, "intensity": round(self.intensity, 3)}


_KINDS = {
    "convolution": "conv", "addmm": "linear", "mm": "linear", "bmm": "adaptive_conv",
    "native_batch_norm": "norm", "_native_batch_norm_legit_no_training": "norm", "_native_batch_norm_legit": "norm",
    "leaky_relu": "activation", "tanh": "activation", "sigmoid": "activation", "relu": "activation",
    "sin": "activation", "cos": "activation",
    "add": "elementwise", "sub": "elementwise", "mul": "elementwise", "div": "elementwise", "rsub": "elementwise",
    "upsample_nearest2d": "upsample", "upsample_bilinear2d": "upsample",
    "avg_pool2d": "pool", "_adaptive_avg_pool2d": "pool",
    "grid_sampler_2d": "warp",
    "clone": "copy", "index_select": "copy", "cat": "copy", "repeat": "copy", "copy": "copy",
    "_to_copy": "copy", "contiguous": "copy",
}
# Rough elementwise arithmetic per output element (FlopCounterMode counts none of these).
_VECTOR_FLOPS_PER_ELEMENT = {"elementwise": 1, "activation": 1, "norm": 2}  # eval BN folds to x * a + b
_WARP_FLOPS_PER_ELEMENT = 7  # bilinear: 4 multiplies + 3 adds per output channel value
_WARP_FLOPS_PER_PIXEL = 10  # coordinate unnormalisation, floor and the 4 corner weights
# Operators that move no data or only check the inputs.
_SKIP = {"view", "_unsafe_view", "reshape", "permute", "expand", "t", "transpose", "unsqueeze", "squeeze",
         "slice", "select", "alias", "detach", "as_strided", "unbind", "split", "split_with_sizes", "empty",
         "empty_like", "empty_strided", "zeros", "ones", "zeros_like", "ones_like", "lift_fresh",
         "_local_scalar_dense", "is_nonzero", "item", "isfinite", "all", "any"}


def _distinct_elements(t: torch.Tensor) -> int:
    """Elements a read actually touches: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _macs(op: str, args: tuple, outputs: list[torch.Tensor]) -> int:
    if op == "convolution":
        return outputs[0].numel() * math.prod(args[1].shape[1:]) if not args[6] else \
            args[0].numel() * math.prod(args[1].shape[1:])
    if op == "addmm":
        a, b = args[1], args[2]
        return a.shape[0] * a.shape[1] * b.shape[1]
    if op == "mm":
        return args[0].shape[0] * args[0].shape[1] * args[1].shape[1]
    if op == "bmm":
        a, b = args[0], args[1]
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return 0


def _vector_flops(op: str, kind: str, args: tuple, outputs: list[torch.Tensor]) -> int:
    if not outputs:
        return 0
    out = outputs[0].numel()
    if kind == "warp":
        n, c, h, w = outputs[0].shape
        return out * _WARP_FLOPS_PER_ELEMENT + n * h * w * _WARP_FLOPS_PER_PIXEL
    if kind == "pool" and op == "avg_pool2d":
        return out * math.prod(args[1]) if len(args) > 1 else out
    return out * _VECTOR_FLOPS_PER_ELEMENT.get(kind, 0)


class _Recorder(TorchDispatchMode):
    """Records every data-moving aten operator, named after the module it runs in."""

    def __init__(self, weights: set[int], graph_inputs: set[int]):
        super().__init__()
        self.stack: list[str] = []
        self.weights, self.graph_inputs = weights, graph_inputs
        self.records: list[dict] = []
        self.keep: list[torch.Tensor] = []  # keeps outputs alive so storages are not reused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        op = func.overloadpacket.__name__
        if op in _SKIP or getattr(func, "is_view", False):
            return result
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.bool for t in inputs + outputs):  # render's input checks
            return result
        self.records.append({"op": op, "module": self.stack[-1] if self.stack else "", "args": args,
                             "inputs": inputs, "outputs": outputs})
        self.keep += outputs
        return result


def _live(records: list[dict], returned: set[int]) -> list[dict]:
    """Drop operators whose outputs nothing uses (e.g. the float half of render's isfinite checks,
    whose boolean consumers are not recorded): dead-code elimination over the recorded graph."""
    storage = lambda t: t.untyped_storage().data_ptr()
    needed, live = set(returned), []
    for rec in reversed(records):
        if any(storage(t) in needed for t in rec["outputs"]):
            live.append(rec)
            needed |= {storage(t) for t in rec["inputs"]}
    return live[::-1]


class FrameLayers(list):
    """`list[LayerCost]` of one frame, plus what it was traced from."""

    image_size: int = 0
    dtype_bytes: int = 2


@torch.no_grad()
def frame_layers(model: BilayerModel, dtype_bytes: int = 2) -> FrameLayers:
    """Per-operator MACs and traffic of one frame (`model.render`, batch 1) at `dtype_bytes` per element.

    The identity state comes from zero inputs as in `summary.pipeline_macs` (costs do not depend
    on values); the enhancer is skipped while making it, since the enhanced texture has the same
    shape and the frame's work does not change.
    """
    cfg = model.config
    s = cfg.image_size
    image = torch.zeros(1, 3, s, s, dtype=model.dtype)
    keypoints = torch.zeros(1, 2 * cfg.num_keypoints, dtype=model.dtype)
    had_enhancer = model.has_enhancer
    model.has_enhancer = False
    try:
        state = model.init_identity(image, keypoints)
    finally:
        model.has_enhancer = had_enhancer

    storage = lambda t: t.untyped_storage().data_ptr()
    weights = {storage(t) for t in list(model.parameters()) + list(model.buffers())}
    weights |= {storage(t) for pair in state.adaptive_params for t in pair}
    graph_inputs = {storage(keypoints), storage(state.texture)}

    names = {module: name for name, module in model.named_modules()}
    recorder = _Recorder(weights, graph_inputs)
    def enter(name):
        def hook(module, args) -> None:
            recorder.stack.append(name)
        return hook

    def leave(module, args, output) -> None:  # returns None: the output is left unchanged
        recorder.stack.pop()

    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with recorder:
            out = model.render(state, keypoints, enhanced=False)
    finally:
        for h in handles:
            h.remove()
    graph_outputs = {storage(out.image), storage(out.mask)}
    records = _live(recorder.records, {storage(t) for t in out.as_dict().values()})

    layers = FrameLayers()
    layers.image_size, layers.dtype_bytes = s, dtype_bytes
    seen_weights: set[tuple] = set()
    counts: Counter = Counter()
    for rec in records:
        op, module = rec["op"], rec["module"]
        kind = _KINDS.get(op, "other")
        activations = weight = first_use = graph_in = 0
        for t in rec["inputs"]:
            n = _distinct_elements(t)
            if storage(t) in weights:
                weight += n
                if _key(t) not in seen_weights:
                    seen_weights.add(_key(t))
                    first_use += n
            else:
                activations += n
                if storage(t) in graph_inputs:
                    graph_in += n
        written = sum(t.numel() for t in rec["outputs"])
        graph_out = sum(t.numel() for t in rec["outputs"] if storage(t) in graph_outputs)
        base = f"{module or 'render'}:{kind if kind != 'other' else op}"
        counts[base] += 1
        name = base if counts[base] == 1 else f"{base}#{counts[base]}"
        layers.append(LayerCost(
            name=name, kind=kind, op=op, macs=_macs(op, rec["args"], rec["outputs"]),
            vector_flops=_vector_flops(op, kind, rec["args"], rec["outputs"]),
            input_elements=activations, weight_elements=weight, output_elements=written, dtype_bytes=dtype_bytes,
            first_use_weight_elements=first_use, graph_input_elements=graph_in, graph_output_elements=graph_out,
        ))
    return layers


def total_macs(layers: Iterable[LayerCost]) -> int:
    return sum(layer.macs for layer in layers)


def unfused_bytes(layers: Iterable[LayerCost]) -> int:
    return sum(layer.bytes for layer in layers)


def fused_lower_bound_bytes(layers: Iterable[LayerCost]) -> int:
    """Weights read once + graph inputs read once + graph outputs written once."""
    return sum(layer.fused_bytes for layer in layers)


# ============================================================================== devices
@dataclass(frozen=True)
class Device:
    """Published (or widely quoted) peak figures of one accelerator.

    peak_fp16_gflops / peak_fp32_gflops: floating-point GFLOP/s (1 FMA = 2 FLOPs).
    peak_int8_tops: INT8 tera-operations/s as vendors quote NPUs (1 MAC = 2 ops); not FLOPs.
    dram_gbps: theoretical peak DRAM bandwidth of the SoC, GB/s (shared with the CPU and display).
    A field is None where no figure was found; `source` says where every figure comes from.
    """

    name: str
    soc: str
    year: int
    kind: str  # "GPU" or "NPU"
    peak_fp16_gflops: float | None
    peak_fp32_gflops: float | None
    peak_int8_tops: float | None
    dram_gbps: float | None
    memory: str
    source: str

    @property
    def default_precision(self) -> str | None:
        if self.peak_fp16_gflops:
            return "fp16"
        if self.peak_int8_tops:
            return "int8"
        return None

    def peak_ops_per_s(self, precision: str) -> float | None:
        value = {"fp16": self.peak_fp16_gflops, "fp32": self.peak_fp32_gflops,
                 "int8": None if self.peak_int8_tops is None else self.peak_int8_tops * 1e3}[precision]
        return None if value is None else value * 1e9

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


ADRENO_640 = Device(
    name="Adreno 640", soc="Qualcomm Snapdragon 855", year=2019, kind="GPU",
    peak_fp16_gflops=1797.1, peak_fp32_gflops=898.5, peak_int8_tops=None, dram_gbps=34.1,
    memory="LPDDR4X-2133 (4266 MT/s), 4 x 16-bit channels",
    source=("Peaks: estimate (768 FP32 ALU lanes at 585 MHz; FP16 at twice the FP32 rate), as quoted by "
            "azhirnov/cpu-gpu-arch, gpu/Adreno-600.md (GitHub), citing Chips and Cheese, 'Inside the "
            "Snapdragon 855's iGPU' (2024); other pages quote ~954 GFLOPS FP32 at a higher clock. "
            "Bandwidth: estimate from the memory interface (LPDDR4x 2133 MHz, 4 x 16-bit = 34.13 GB/s), as "
            "quoted by phonedb.net (Snapdragon 855+ SM8150-AC detailed specs, same memory controller) and "
            "nanoreview.net (Snapdragon 855 vs A16 Bionic: 34.1 GB/s). Qualcomm publishes neither figure."),
)
ADRENO_750 = Device(
    name="Adreno 750", soc="Qualcomm Snapdragon 8 Gen 3", year=2023, kind="GPU",
    peak_fp16_gflops=6140.0, peak_fp32_gflops=3070.0, peak_int8_tops=None, dram_gbps=76.8,
    memory="LPDDR5X-9600 (4800 MHz), 64-bit",
    source=("Estimate (256 SIMD / 1536 threads at 1 GHz: 3.07 TFLOPS FP32, 6.14 TFLOPS FP16; LPDDR5X-9600 "
            "64-bit, 77 GB/s), as quoted by azhirnov/cpu-gpu-arch, gpu/Adreno-700.md (GitHub). Qualcomm "
            "publishes only relative figures (+25% over Adreno 740). Memory LPDDR5X up to 4800 MHz also per "
            "fyss.in Snapdragon 8 Gen 3 specs; 9600 MT/s x 8 bytes = 76.8 GB/s."),
)
ADRENO_830 = Device(
    name="Adreno 830", soc="Qualcomm Snapdragon 8 Elite", year=2024, kind="GPU",
    peak_fp16_gflops=None, peak_fp32_gflops=None, peak_int8_tops=None, dram_gbps=84.8,
    memory="LPDDR5X-10600 (5300 MHz), 64-bit",
    source=("Bandwidth: LPDDR5X at 5300 MHz (10600 MT/s) = 84.8 GB/s, as quoted by geektopia.es ('Qualcomm "
            "anuncia el Snapdragon 8 Elite', 2024-10-22; GPU three slices at 1.1 GHz); LPDDR5X-5300 also per "
            "hi-tech.ua. No published or widely quoted FLOPS figure was found: peaks left None, not estimated."),
)
IMMORTALIS_G720 = Device(
    name="Immortalis-G720 MC12", soc="MediaTek Dimensity 9300", year=2023, kind="GPU",
    peak_fp16_gflops=None, peak_fp32_gflops=None, peak_int8_tops=None, dram_gbps=76.8,
    memory="LPDDR5T-9600, 64-bit",
    source=("Memory: LPDDR5T up to 9600 Mbps, per MediaTek's announcement as reported by punto-informatico.it "
            "('MediaTek annuncia Dimensity 9300') and gagadget.com; 9600 MT/s x 8 bytes = 76.8 GB/s assumes "
            "the usual 64-bit phone bus. Arm publishes no FLOPS figure for the G720 and none was found: "
            "peaks left None, not estimated."),
)
APPLE_A17_PRO_GPU = Device(
    name="Apple A17 Pro GPU (6-core)", soc="Apple A17 Pro", year=2023, kind="GPU",
    peak_fp16_gflops=2150.0, peak_fp32_gflops=2150.0, peak_int8_tops=None, dram_gbps=51.2,
    memory="LPDDR5-6400, 64-bit (assumed)",
    source=("Peaks: estimate (768 ALUs at 1398 MHz; Apple GPUs run FP16 at the FP32 rate), as quoted by "
            "hmc-tech.com ('6-Core A17 Pro vs Imagination IMG AXE-2-16'). Apple publishes neither figure. "
            "Bandwidth: estimate, LPDDR5 (per the Unknownz21 leak reported by neowin.net, 2023-08-09) at "
            "6400 MT/s on a 64-bit bus = 51.2 GB/s, the figure nanoreview.net quotes for the A16 Bionic."),
)
HEXAGON_8_GEN_3 = Device(
    name="Hexagon NPU (8 Gen 3)", soc="Qualcomm Snapdragon 8 Gen 3", year=2023, kind="NPU",
    peak_fp16_gflops=None, peak_fp32_gflops=None, peak_int8_tops=45.0, dram_gbps=76.8,
    memory="LPDDR5X-9600, 64-bit (shared with the GPU)",
    source=("INT8 TOPS: 45, as quoted by runlocalai.co (hardware/snapdragon-8-gen-3); Qualcomm itself gives "
            "only relative figures for this NPU (98% faster than 8 Gen 2, per counterpointresearch.com), so "
            "treat it as a widely quoted estimate. INT8 ops, not FP16 FLOPs. Bandwidth as Adreno 750."),
)
APPLE_NEURAL_ENGINE_A17 = Device(
    name="Apple Neural Engine (A17 Pro)", soc="Apple A17 Pro", year=2023, kind="NPU",
    peak_fp16_gflops=None, peak_fp32_gflops=None, peak_int8_tops=35.0, dram_gbps=51.2,
    memory="LPDDR5-6400, 64-bit (assumed, shared)",
    source=("35 trillion operations per second for the 16-core Neural Engine, Apple's A17 Pro announcement "
            "(2023-09-12, as reported by grokipedia.com 'Apple A17' and downcodes.com: up from 17 TOPS on A16). "
            "Apple does not state the precision; it is taken as INT8 here, an assumption. Bandwidth as the "
            "A17 Pro GPU (estimate)."),
)

DEVICES: tuple[Device, ...] = (ADRENO_640, ADRENO_750, ADRENO_830, IMMORTALIS_G720, APPLE_A17_PRO_GPU,
                               HEXAGON_8_GEN_3, APPLE_NEURAL_ENGINE_A17)


# ============================================================================== estimate
@dataclass(frozen=True)
class Efficiency:
    """Fractions of the peak figures a real implementation reaches (assumptions, not measurements)."""

    compute: float
    memory: float
    note: str = ""


# Assumption: conv nets on mobile GPUs reach roughly 30-50% of peak FLOPs and memory-bound kernels
# 60-80% of theoretical DRAM bandwidth; the middle of both ranges is the "practical" figure.
TYPICAL_EFFICIENCY = Efficiency(0.4, 0.7, "assumption: 40% of peak FLOPs, 70% of peak DRAM bandwidth")
EFFICIENCY_RANGE = (Efficiency(0.5, 0.8, "assumption, optimistic end"), Efficiency(0.3, 0.6, "assumption, pessimistic end"))


@dataclass(frozen=True)
class LayerTime:
    name: str
    kind: str
    seconds: float
    bound: str  # "compute" or "memory"
    intensity: float


@dataclass(frozen=True)
class RooflineEstimate:
    """The roofline estimate of one frame on one device (times in milliseconds)."""

    device: Device
    precision: str
    peak_gflops: float
    bandwidth_gbps: float
    macs: int
    flops: int
    bytes_unfused: int
    bytes_fused: int
    intensity: float  # whole graph, flops per unfused byte
    ridge_intensity: float  # peak / bandwidth: layers below it are memory-bound
    ideal_ms: float
    practical_ms: float
    practical_range_ms: tuple[float, float]
    fused_bound_ms: float
    compute_only_ms: float
    memory_only_ms: float
    efficiency: Efficiency
    layer_times: tuple[LayerTime, ...] = field(repr=False)

    @property
    def memory_bound_layers(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.layer_times if t.bound == "memory")

    @property
    def memory_bound_share(self) -> float:
        """Fraction of the ideal time spent in memory-bound layers."""
        total = sum(t.seconds for t in self.layer_times)
        return sum(t.seconds for t in self.layer_times if t.bound == "memory") / total if total else 0.0

    def as_dict(self) -> dict:
        return {
            "device": self.device.name, "soc": self.device.soc, "precision": self.precision,
            "peak_gflops": self.peak_gflops, "bandwidth_gbps": self.bandwidth_gbps, "macs": self.macs,
            "flops": self.flops, "bytes_unfused": self.bytes_unfused, "bytes_fused": self.bytes_fused,
            "intensity_flops_per_byte": round(self.intensity, 3), "ridge_flops_per_byte": round(self.ridge_intensity, 3),
            "ideal_ms": round(self.ideal_ms, 3), "practical_ms": round(self.practical_ms, 3),
            "practical_range_ms": [round(v, 3) for v in self.practical_range_ms],
            "fused_bound_ms": round(self.fused_bound_ms, 3), "compute_only_ms": round(self.compute_only_ms, 3),
            "memory_only_ms": round(self.memory_only_ms, 3),
            "efficiency": dataclasses.asdict(self.efficiency),
            "memory_bound_layers": len(self.memory_bound_layers), "layers": len(self.layer_times),
            "memory_bound_share_of_time": round(self.memory_bound_share, 3),
        }


def _layer_seconds(layer: LayerCost, peak: float, bandwidth: float) -> tuple[float, str]:
    compute, memory = layer.flops / peak, layer.bytes / bandwidth
    return (compute, "compute") if compute >= memory else (memory, "memory")


def roofline(layers: Sequence[LayerCost], device: Device, efficiency: Efficiency = TYPICAL_EFFICIENCY,
             precision: str | None = None) -> RooflineEstimate:
    """Roofline time of `layers` on `device`.

    precision: "fp16", "fp32" or "int8" (default: fp16 where the device has an fp16 peak, else
    int8). The layers' element counts are priced at that precision's width (2, 4 or 1 bytes),
    whatever `dtype_bytes` they were made with. Raises ValueError for a device without a peak
    figure at that precision or without a bandwidth figure.
    """
    precision = precision or device.default_precision
    peak = device.peak_ops_per_s(precision) if precision else None
    if not peak or not device.dram_gbps:
        raise ValueError(f"{device.name}: no published peak ({precision or 'any precision'}) or bandwidth figure")
    width = BYTES_PER_ELEMENT[precision]
    layers = [layer.at_dtype(width) for layer in layers]
    bandwidth = device.dram_gbps * 1e9

    def total(peak_: float, bandwidth_: float) -> float:
        return sum(_layer_seconds(layer, peak_, bandwidth_)[0] for layer in layers)

    times = []
    for layer in layers:
        seconds, bound = _layer_seconds(layer, peak, bandwidth)
        times.append(LayerTime(layer.name, layer.kind, seconds, bound, layer.intensity))
    flops = sum(layer.flops for layer in layers)
    moved = unfused_bytes(layers)
    fused = fused_lower_bound_bytes(layers)
    practical = lambda e: 1e3 * total(peak * e.compute, bandwidth * e.memory)
    return RooflineEstimate(
        device=device, precision=precision, peak_gflops=peak / 1e9, bandwidth_gbps=device.dram_gbps,
        macs=total_macs(layers), flops=flops, bytes_unfused=moved, bytes_fused=fused,
        intensity=flops / moved if moved else math.inf, ridge_intensity=peak / bandwidth,
        ideal_ms=1e3 * sum(t.seconds for t in times), practical_ms=practical(efficiency),
        practical_range_ms=tuple(sorted(practical(e) for e in EFFICIENCY_RANGE)),
        fused_bound_ms=1e3 * max(flops / peak, fused / bandwidth),
        compute_only_ms=1e3 * flops / peak, memory_only_ms=1e3 * moved / bandwidth,
        efficiency=efficiency, layer_times=tuple(times),
    )


def estimate_devices(layers: Sequence[LayerCost], devices: Iterable[Device] = DEVICES,
                     efficiency: Efficiency = TYPICAL_EFFICIENCY) -> tuple[list[RooflineEstimate], list[Device]]:
    """(estimates, devices skipped for lack of a peak or bandwidth figure)."""
    estimates, skipped = [], []
    for device in devices:
        try:
            estimates.append(roofline(layers, device, efficiency))
        except ValueError:
            skipped.append(device)
    return estimates, skipped


# ============================================================================== reporting
def _fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def roofline_table_markdown(estimates: Sequence[RooflineEstimate], paper_ms: float = PAPER_MS,
                            skipped: Sequence[Device] = ()) -> str:
    """The estimates as a Markdown table, labelled as estimates, beside the paper's measured figure."""
    lines = [
        f"**{ESTIMATE_LABEL}.** Per-layer max(flops / peak, bytes / DRAM bandwidth), summed; unfused "
        f"traffic (every layer reads its inputs and weights and writes its output through DRAM). "
        f"Practical = peaks scaled by {TYPICAL_EFFICIENCY.compute:.0%} (compute) and "
        f"{TYPICAL_EFFICIENCY.memory:.0%} (bandwidth), an assumption; range "
        f"{EFFICIENCY_RANGE[1].compute:.0%}-{EFFICIENCY_RANGE[0].compute:.0%} / "
        f"{EFFICIENCY_RANGE[1].memory:.0%}-{EFFICIENCY_RANGE[0].memory:.0%}.",
        "",
        "| Device | SoC | Precision | Peak | DRAM GB/s | Ideal ms | Practical ms (range) | Fused lower bound ms "
        "| Memory-bound layers (share of time) | Paper, measured |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in estimates:
        peak = f"{e.peak_gflops / 1e3:.2f} INT8 TOPS" if e.precision == "int8" else f"{e.peak_gflops:.0f} {e.precision.upper()} GFLOP/s"
        paper = "-"
        if e.device.name == PAPER_DEVICE and paper_ms:
            paper = f"{paper_ms:g} ms ({paper_ms / e.ideal_ms:.1f}x ideal, {paper_ms / e.practical_ms:.1f}x practical)"
        lo, hi = e.practical_range_ms
        lines.append(
            f"| {e.device.name} | {e.device.soc} | {e.precision} | {peak} | {e.bandwidth_gbps:g} | {_fmt_ms(e.ideal_ms)} "
            f"| {_fmt_ms(e.practical_ms)} ({_fmt_ms(lo)}-{_fmt_ms(hi)}) | {_fmt_ms(e.fused_bound_ms)} "
            f"| {len(e.memory_bound_layers)}/{len(e.layer_times)} ({e.memory_bound_share:.0%}) | {paper} |")
    for d in skipped:
        lines.append(f"| {d.name} | {d.soc} | - | no published peak | {d.dram_gbps if d.dram_gbps else '-'} "
                     f"| not estimated | - | - | - | - |")
    lines += ["", f"Paper figure: {paper_ms:g} ms per frame measured on {PAPER_DEVICE} (Snapdragon 855), fp16 "
                  f"(Zakharov et al., ECCV 2020). Every other number in this table is an estimate."]
    return "\n".join(lines) + "\n"


_KIND_COLOURS = {"conv": "tab:blue", "linear": "tab:purple", "adaptive_conv": "tab:cyan", "norm": "tab:orange",
                 "activation": "tab:red", "elementwise": "tab:pink", "upsample": "tab:olive", "pool": "tab:brown",
                 "warp": "tab:green", "copy": "tab:gray", "other": "black"}


def plot_roofline(layers: Sequence[LayerCost], devices: Iterable[Device], path, reference: Device = ADRENO_640) -> None:
    """Log-log roofline chart: device ceilings (fp16, or int8 for NPUs) and each layer at its
    arithmetic intensity and attainable GFLOP/s on `reference` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    finite = [l.intensity for l in layers if math.isfinite(l.intensity) and l.intensity > 0]
    lo = min(finite + [0.05]) / 2
    hi = max(finite + [1e3]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for device in devices:
        precision = device.default_precision
        if precision is None or not device.dram_gbps:
            continue
        peak = device.peak_ops_per_s(precision) / 1e9
        style = "-" if device.name == reference.name else ("--" if device.kind == "GPU" else ":")
        ax.plot(xs, [min(peak, x * device.dram_gbps) for x in xs], style,
                lw=2.2 if device.name == reference.name else 1.2,
                label=f"{device.name} ({precision}, {peak:.0f} G/s, {device.dram_gbps:g} GB/s)")
    ref_peak = reference.peak_ops_per_s(reference.default_precision) / 1e9
    seen = set()
    for layer in layers:
        if not (math.isfinite(layer.intensity) and layer.intensity > 0):
            continue
        y = min(ref_peak, layer.intensity * reference.dram_gbps)
        ax.scatter([layer.intensity], [y], s=14 + 60 * (layer.macs > 0), color=_KIND_COLOURS.get(layer.kind, "black"),
                   alpha=0.75, edgecolors="none", label=None if layer.kind in seen else f"layer: {layer.kind}", zorder=3)
        seen.add(layer.kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of unfused DRAM traffic, fp16)")
    ax.set_ylabel("attainable GFLOP/s (NPUs: G int8 op/s)")
    ax.set_title(f"Frame graph roofline, layers on {reference.name}: {ESTIMATE_LABEL.lower()}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def _by_kind(layers: Sequence[LayerCost]) -> dict:
    out: dict[str, dict] = {}
    for layer in layers:
        entry = out.setdefault(layer.kind, {"layers": 0, "macs": 0, "bytes": 0})
        entry["layers"] += 1
        entry["macs"] += layer.macs
        entry["bytes"] += layer.bytes
    return out


def roofline_document(model: BilayerModel, devices: Sequence[Device] = DEVICES,
                      efficiency: Efficiency = TYPICAL_EFFICIENCY, paper_ms: float = PAPER_MS,
                      layers: FrameLayers | None = None) -> dict:
    """Everything above as one JSON-ready dict for the benchmark report (`layers`: the model's
    `frame_layers` at fp16 when the caller has them already)."""
    from ..reference.summary import pipeline_macs

    layers = layers if layers is not None else frame_layers(model, dtype_bytes=2)
    estimates, skipped = estimate_devices(layers, devices, efficiency)
    macs = total_macs(layers)
    moved, fused = unfused_bytes(layers), fused_lower_bound_bytes(layers)
    flops = sum(layer.flops for layer in layers)
    return {
        "label": ESTIMATE_LABEL,
        "traffic_model": {
            "unfused": "every layer reads its inputs and weights from DRAM once and writes its output once",
            "fused_lower_bound": "weights (incl. the identity's adaptive parameters) + graph inputs (keypoints, "
                                 "texture) read once, graph outputs (image, mask) written once",
            "compute": "flops = 2 * MACs + elementwise flops; layer time = max(flops / peak, bytes / bandwidth)",
        },
        "efficiency": {"practical": dataclasses.asdict(efficiency),
                       "range": [dataclasses.asdict(e) for e in EFFICIENCY_RANGE]},
        "paper": {"ms": paper_ms, "device": PAPER_DEVICE, "source": PAPER_SOURCE},
        "frame": {
            "image_size": model.config.image_size, "layers": len(layers), "macs": macs,
            "pipeline_macs_frame": pipeline_macs(model)["frame"], "flops": flops,
            "bytes_unfused_fp16": moved, "bytes_fused_fp16": fused,
            "intensity_flops_per_byte": round(flops / moved, 3) if moved else None,
            "by_kind": _by_kind(layers), "per_layer": [layer.as_dict() for layer in layers],
        },
        "devices": [d.as_dict() for d in devices],
        "estimates": [e.as_dict() for e in estimates],
        "not_estimated": [{"device": d.name, "reason": "no published peak or bandwidth figure"} for d in skipped],
    }
