"""Host latency of a bundle's artifacts and of the PyTorch reference, side by side in one run.

Every contestant (an artifact in one runtime configuration, or the reference network in one
PyTorch mode) is loaded, run `warmup` times, then timed in rounds: one call of each contestant
per round, with a pause between calls, so that whatever else the machine does in that time hits
all of them alike. The pause is there because onnxruntime's worker threads spin for a while
after a run and slowed whatever ran next (a LiteRT graph timed right after an onnxruntime run
took 42 ms instead of 25 ms). The frame graphs and the (seconds-long) identity graphs are timed
in separate groups with their own number of rounds.

Thread counts are explicit: LiteRT's XNNPACK at 1 and N threads, onnxruntime's intra-op pool at
N, ExecuTorch's threadpool at N, torch at N (`runners.make_runner` sets each runtime's). Eager torch's OpenMP threads spin-wait
between parallel regions unless `OMP_WAIT_POLICY=PASSIVE`; the policy in effect is recorded with
the numbers (`bilayer-mobile bench` sets PASSIVE unless told otherwise).

Peak memory is measured per artifact in a fresh process of its own (`own_process.OwnProcess`):
the runtime is imported and touched once, the kernel's resident high-water mark is reset
(`/proc/self/clear_refs`), the model is loaded and run, and the new high-water mark minus the
resident size before loading is what the model and its calls added (Linux only; elsewhere None).

These are host numbers, for comparing artifacts and runtimes on one machine; phones are timed
over adb (`android.py`). Nothing is asserted about time in tests.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..reference.model import BilayerModel
from ..reference.summary import pipeline_macs
from .latency import LatencyRecord
from .native_output import native_output_captured
from .own_process import OwnProcess
from .validate import BundleError, load_artifact

FRAME_GRAPHS = ("frame", "baked_frame", "split_frame")
IDENTITY_GRAPHS = ("identity",)
RUNTIMES = ("litert", "onnxruntime", "executorch")
REFERENCE_MODES = ("eager", "channels_last", "compile")
PAUSE_S = 0.2  # between timed calls: longer than onnxruntime's spin-wait after a run


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run times, and how."""

    threads: int = 2
    runs: int = 30  # timed rounds of the frame graphs
    identity_runs: int = 5  # timed rounds of the identity graphs (seconds each)
    warmup: int = 3
    pause_s: float = PAUSE_S
    graphs: tuple[str, ...] = ("frame", "baked_frame", "identity")
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8_dynamic", "int8")
    runtimes: tuple[str, ...] = RUNTIMES
    single_thread: bool = True  # LiteRT at 1 thread as well
    reference_modes: tuple[str, ...] = REFERENCE_MODES
    memory: bool = True

    def as_dict(self) -> dict:
        return {"threads": self.threads, "runs": self.runs, "identity_runs": self.identity_runs,
                "warmup": self.warmup, "pause_s": self.pause_s, "graphs": list(self.graphs),
                "precisions": list(self.precisions), "runtimes": list(self.runtimes),
                "single_thread": self.single_thread, "reference_modes": list(self.reference_modes),
                "memory": self.memory, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default)"),
                "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------ runtimes
def configurations(runtime: str, settings: BenchSettings) -> list[tuple[str, int]]:
    """(configuration in words, threads) for each way `runtime` is timed."""
    n = settings.threads
    if runtime == "litert":
        counts = sorted({1, n}) if settings.single_thread else [n]
        return [(f"XNNPACK, {t} thread{'s' if t > 1 else ''}", t) for t in counts]
    if runtime == "onnxruntime":
        return [(f"CPU provider, {n} intra-op threads", n)]
    if runtime == "executorch":
        return [(f"XNNPACK delegate, {n}-thread pool", n)]
    raise ValueError(f"no benchmark configuration for runtime {runtime!r}")


def golden_feed(bundle: Path, artifact: dict) -> dict[str, np.ndarray]:
    """The artifact's inputs of its first golden sample."""
    with np.load(Path(bundle) / artifact["golden"], allow_pickle=False) as golden:
        return {i["name"]: golden[i["name"]][0] for i in artifact["inputs"]}


@dataclass
class Contestant:
    """One thing timed: a zero-argument call, the fields of its record, and its runs."""

    call: Callable[[], object]
    record: dict  # LatencyRecord fields other than the runs
    runs_ms: list[float] = field(default_factory=list)

    def to_record(self) -> LatencyRecord:
        return LatencyRecord.from_runs(self.runs_ms, **self.record)


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1e3


def artifact_contestants(bundle: Path, manifest: dict, settings: BenchSettings, macs: dict[str, int],
                         progress=None) -> list[Contestant]:
    """A loaded, prepared contestant for every published artifact the settings select, in every
    configuration of its runtime; load time and first call recorded."""
    contestants = []
    for artifact in manifest["artifacts"]:
        if not (artifact["graph"] in settings.graphs and artifact["precision"] in settings.precisions
                and artifact["runtime"] in settings.runtimes):
            continue
        feed = golden_feed(bundle, artifact)
        for configuration, threads in configurations(artifact["runtime"], settings):
            if progress:
                progress(f"loading {artifact['name']} ({configuration})")
            with native_output_captured():  # the runtimes' banners: to the log, not the console
                runner, load_ms = _timed(lambda: load_artifact(bundle, artifact, threads=threads))
                prepared = runner.prepare(feed)
                _, first_ms = _timed(lambda: runner._infer(prepared))
            contestants.append(Contestant(
                call=lambda runner=runner, prepared=prepared: runner._infer(prepared),  # the prepared feed: time the runtime
                record=dict(name=f"{artifact['name']} @ {artifact['runtime']} {configuration}", kind="artifact",
                            graph=artifact["graph"], precision=artifact["precision"], runtime=artifact["runtime"],
                            configuration=configuration, threads=threads, artifact=artifact["name"],
                            model_bytes=artifact.get("size_bytes"), macs=macs.get(artifact["graph"]),
                            load_ms=load_ms, first_run_ms=first_ms, device="host",
                            notes=[f"warp: {artifact['warp']}"] if artifact.get("warp") else [])))
    return contestants


# ------------------------------------------------------------------------------ the reference
def check_model_matches(model: BilayerModel, manifest: dict) -> None:
    """Refuse to time a reference that is not the model the bundle was exported from."""
    declared = manifest.get("model", {}).get("config")
    if declared != dataclasses.asdict(model.config):
        raise BundleError("the model given does not have the configuration the bundle was exported from "
                          f"({manifest.get('model', {}).get('source', 'unknown source')}); pass the bundle's own "
                          "--checkpoint RUN_DIR (or none for the built-in default model)")


def graph_macs(model: BilayerModel) -> dict[str, int]:
    """Multiply-accumulates of one call of each graph (batch 1), counted on the reference: the
    frame graphs all do the frame's work (the baked graph has the adaptive parameters folded in,
    the split graph stops before the warp, which FlopCounterMode does not count)."""
    totals = pipeline_macs(model)
    return {"identity": totals["identity"], "frame": totals["frame"], "baked_frame": totals["frame"],
            "split_frame": totals["frame"]}


def _identity_inputs(bundle: Path, manifest: dict) -> dict[str, torch.Tensor]:
    entry = next((a for a in manifest["artifacts"] if a["graph"] == "identity"), None)
    golden = Path(bundle) / (entry["golden"] if entry else "golden/identity.npz")
    if not golden.is_file():
        raise BundleError(f"the bundle has no identity golden vectors ({golden}); export it with the identity graph")
    with np.load(golden, allow_pickle=False) as data:
        return {k: torch.from_numpy(data[k][0]) for k in ("source_image", "source_stickman", "source_keypoints", "source_mask")}


def _frame_keypoints(bundle: Path) -> torch.Tensor:
    with np.load(Path(bundle) / "golden" / "frame.npz", allow_pickle=False) as data:
        return torch.from_numpy(data["keypoints"][0])


def reference_contestants(model: BilayerModel, bundle: Path, manifest: dict, settings: BenchSettings,
                          macs: dict[str, int], progress=None) -> list[Contestant]:
    """The PyTorch reference timed like the artifacts: the frame (`render`) in each of
    `settings.reference_modes` and the identity (`init_identity`) with and without the enhancer,
    eager, at `settings.threads` torch threads."""
    torch.set_num_threads(settings.threads)
    x = _identity_inputs(bundle, manifest)
    keypoints = _frame_keypoints(bundle)
    identity = lambda m: m.init_identity(x["source_image"], x["source_keypoints"], x["source_mask"], x["source_stickman"])
    size = lambda *nets: sum(p.numel() * p.element_size() for net in nets for p in net.parameters())
    frame_bytes = size(model.keypoints_embedder, model.inference_generator.gen_inf)  # what `render` reads
    base = dict(kind="reference", precision="fp32", runtime="torch", threads=settings.threads, device="host")
    contestants = []
    if "frame" in settings.graphs:
        state = identity(model)
        modes = {"eager": lambda: (model, state, keypoints)}
        if "channels_last" in settings.reference_modes:
            def channels_last():
                m = copy.deepcopy(model).to(memory_format=torch.channels_last)
                s = copy.copy(state)
                s.texture = state.texture.contiguous(memory_format=torch.channels_last)
                if state.enhanced_texture is not None:
                    s.enhanced_texture = state.enhanced_texture.contiguous(memory_format=torch.channels_last)
                return m, s, keypoints
            modes["channels_last"] = channels_last
        for mode in [m for m in settings.reference_modes if m in modes or m == "compile"]:
            if progress:
                progress(f"preparing the reference frame ({mode})")
            if mode == "compile":
                render = torch.compile(lambda k: model.render(state, k))
                call = lambda render=render: render(keypoints)
                note = "torch.compile (inductor); compile time is the first call"
            else:
                m, s, k = modes[mode]()
                call = lambda m=m, s=s, k=k: m.render(s, k)
                note = "BilayerModel.render"
            with torch.no_grad():
                _, first_ms = _timed(call)
            contestants.append(Contestant(call=call, record=dict(
                base, name=f"reference frame @ torch {mode}", graph="frame", configuration=f"{mode}, {settings.threads} threads",
                model_bytes=frame_bytes,
                macs=macs["frame"], first_run_ms=first_ms, notes=[note])))
    if "identity" in settings.graphs:
        plain = copy.copy(model)
        plain.has_enhancer = False
        variants = [("with enhancer", model, macs["identity"])] if model.has_enhancer else []
        variants.append(("without enhancer", plain, pipeline_macs(plain)["identity"]))
        for label, m, count in variants:
            call = lambda m=m: identity(m)
            with torch.no_grad():
                _, first_ms = _timed(call)
            contestants.append(Contestant(call=call, record=dict(
                base, name=f"reference identity {label} @ torch eager", graph="identity",
                configuration=f"eager, {settings.threads} threads", macs=count, first_run_ms=first_ms,
                model_bytes=size(m) - (0 if m.has_enhancer else size(getattr(m, "texture_enhancer", torch.nn.Module()))),
                notes=[f"BilayerModel.init_identity, {label}"])))
    return contestants


# ------------------------------------------------------------------------------ timing
def time_interleaved(contestants: list[Contestant], runs: int, warmup: int, pause_s: float, progress=None,
                     label: str = "") -> None:
    """Warm every contestant up, then time `runs` rounds of one call each (the order rotated by
    one each round), appending to runs_ms."""
    with torch.no_grad():
        for _ in range(warmup):
            for c in contestants:
                c.call()
        time.sleep(pause_s)
        for k in range(runs):
            # each round starts one contestant later, so none always runs right after the same other
            shift = k % len(contestants) if contestants else 0
            for c in contestants[shift:] + contestants[:shift]:
                start = time.perf_counter()
                c.call()
                c.runs_ms.append((time.perf_counter() - start) * 1e3)
                time.sleep(pause_s)
            if progress:
                progress(f"{label} round {k + 1}/{runs}")


# ------------------------------------------------------------------------------ memory
def _status_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (resident high-water mark) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _release_freed_memory() -> None:
    """Return what Python and the C allocator hold freed to the system, so a baseline taken next
    is not padded with free memory the next load would silently reuse."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class MemoryProbe:
    """Loads one artifact in the process it lives in and reports what it added to the peak
    resident memory (built in a fresh process by `peak_memory_mb`)."""

    def __init__(self, bundle: str, artifact: dict, threads: int, feed: dict[str, np.ndarray]):
        warm = load_artifact(Path(bundle), artifact, threads=threads)  # import and initialise the runtime: not counted
        del warm
        _release_freed_memory()
        self.before_mb = _status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size (Linux >= 4.0)
        self.runner = load_artifact(Path(bundle), artifact, threads=threads)
        self.prepared = self.runner.prepare(feed)

    def measure(self, calls: int = 3) -> float:
        for _ in range(calls):
            self.runner._infer(self.prepared)
        return max(_status_mb("VmHWM") - self.before_mb, 0.0)


def peak_memory_mb(bundle: Path, artifact: dict, threads: int) -> float:
    """Peak resident memory (MB) that loading and running `artifact` adds, in a fresh process."""
    with OwnProcess(MemoryProbe, str(bundle), artifact, threads, golden_feed(bundle, artifact),
                    label=f"memory of {artifact['name']}") as probe:
        return probe.call("measure")


# ------------------------------------------------------------------------------ one run
@dataclass
class BenchRun:
    """Everything one benchmark run measured on the host."""

    records: list[LatencyRecord]
    settings: BenchSettings
    failures: list[str]  # contestants that could not be timed, with the reason


def benchmark_bundle(bundle: Path, manifest: dict, model: BilayerModel | None, settings: BenchSettings,
                     progress=None) -> BenchRun:
    """Time the bundle's selected artifacts and (when `model` is given) the PyTorch reference,
    the frame graphs and the identity graphs each interleaved in their own rounds."""
    macs = graph_macs(model) if model is not None else {}
    failures: list[str] = []
    groups = []
    # the identity graphs take seconds a call: one warm-up call is enough to load their kernels
    for graphs, runs, warmup in ((FRAME_GRAPHS, settings.runs, settings.warmup),
                                 (IDENTITY_GRAPHS, settings.identity_runs, min(settings.warmup, 1))):
        chosen = tuple(g for g in settings.graphs if g in graphs)
        if not chosen or runs == 0:
            continue
        group_settings = dataclasses.replace(settings, graphs=chosen)
        contestants = artifact_contestants(bundle, manifest, group_settings, macs, progress)
        if model is not None:
            contestants += reference_contestants(model, bundle, manifest, group_settings, macs, progress)
        groups.append((chosen[0] if len(chosen) == 1 else "frame graphs", contestants, runs, warmup))
    if not any(contestants for _, contestants, _, _ in groups):
        raise BundleError(f"nothing to time: the bundle has no artifact of graphs {', '.join(settings.graphs)} at "
                          f"precisions {', '.join(settings.precisions)} for runtimes {', '.join(settings.runtimes)}; "
                          "choose others (bilayer-mobile validate BUNDLE lists its artifacts)")
    for label, contestants, runs, warmup in groups:
        time_interleaved(contestants, runs, warmup, settings.pause_s, progress, label)
    records = [c.to_record() for _, contestants, _, _ in groups for c in contestants]
    if settings.memory and Path("/proc/self/clear_refs").exists():
        by_name = {a["name"]: a for a in manifest["artifacts"]}
        for record in records:
            if record.kind == "artifact":
                if progress:
                    progress(f"peak memory of {record.name}")
                try:
                    record.peak_memory_mb = peak_memory_mb(bundle, by_name[record.artifact], record.threads)
                except Exception as exc:  # noqa: BLE001  (a worker that died: reported, the timings stand)
                    failures.append(f"{record.name}: peak memory not measured ({type(exc).__name__}: {exc})")
    return BenchRun(records, settings, failures)
