"""Benchmarks of a bundle's artifacts on an Android phone over adb, with binaries the user gives.

The project never downloads a device binary: the user builds or fetches LiteRT's
`benchmark_model` (and, for `.pte` programs, ExecuTorch's `executor_runner` or its XNNPACK
build `xnn_executor_runner`) for the phone's ABI and passes its host path. This module

- builds the exact adb argument lists (`adb_command`, `push_commands`, `benchmark_command`,
  `executor_runner_command`): pure functions, so the flags are tested without a phone;
- finds the phone (`connected_devices`, `device_info`);
- pushes the binaries and models, runs every delegate, saves each tool's raw output and parses
  it (`parse_benchmark_model`, `parse_executor_runner`) into `LatencyRecord`s of kind "device"
  (`run_android_benchmarks`).

`benchmark_model` prints only a summary of the timed runs (count, first, curr, min, max, avg,
std in microseconds, newer builds also p5/median/p95), never each run, so records carry
`LatencyStats.of_summary`. The format strings are those of LiteRT's
`tflite/tools/benchmark/benchmark_model.cc` (`BenchmarkLoggingListener::OnBenchmarkEnd`,
`BenchmarkModel::Run`) and `Stat::OutputToStream` (`stats_calculator.h`); builds before the
"memory footprint delta" wording print `Peak memory footprint (MB): init=.. overall=..`, and
builds before the `INFO: ` log prefix print bare lines: both are read.

No phone is not an error of the benchmark: `NoAndroidDevice` says what is missing (adb, a
device, an authorised device). The command layer catches it, prints its one-line message, notes
it in the report and carries on with the host results (exit status 0): asking for Android
numbers on a machine without a phone is not a failed benchmark. A delegate that fails on the
phone (the GPU delegate refusing an op, NNAPI failing to compile) is returned as an
`AndroidFailure` beside the records, and the other delegates still run.
"""
from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..reference.errors import BilayerError, InputError
from ..reference.files import write_text_atomic
from .latency import LatencyRecord, LatencyStats

DEVICE_DIR = "/data/local/tmp/bilayer-mobile"
DELEGATES = ("cpu", "gpu", "nnapi")
BENCHMARK_MODEL = "benchmark_model"  # the binaries' names on the device
EXECUTOR_RUNNER = "executor_runner"
RUN_TIMEOUT_S = 900.0  # one benchmark_model run (init + warmup + timed runs) at most
ADB_TIMEOUT_S = 300.0  # a push of a large model, a getprop ...

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_MASK = re.compile(r"^(?:0x)?[0-9a-fA-F]+$")


class NoAndroidDevice(BilayerError):
    """No usable Android device: adb is missing, lists no device, or only unusable ones.

    Not an `InputError`: nothing the user gave is wrong, the machine has no phone. The command
    layer reports it and continues without Android numbers (exit status 0).
    """


class BenchmarkOutputError(InputError):
    """A device tool's output holds no timings (the tool failed; the message quotes it)."""


class AndroidError(InputError):
    """adb failed at something the benchmark cannot do without (making the directory, pushing a binary)."""


# --------------------------------------------------------------------------------------------
# Parsing benchmark_model's output

@dataclass
class RunStats:
    """One `count=... first=... curr=... min=... max=... avg=... std=...` line, in ms."""

    count: int
    first_ms: float | None
    curr_ms: float | None
    min_ms: float
    max_ms: float
    avg_ms: float
    std_ms: float
    p5_ms: float | None = None
    median_ms: float | None = None
    p95_ms: float | None = None


@dataclass
class BenchmarkModelResult:
    """What one `benchmark_model` run printed, times in milliseconds, memory in MB."""

    init_ms: float
    first_ms: float  # the first warmup run: the first inference after initialisation
    warmup_avg_ms: float
    inference_avg_ms: float  # as the "Inference timings" line states it
    inference: RunStats | None  # the timed runs' statistics line (None if the tool printed none)
    warmup: RunStats | None
    memory_init_mb: float | None = None  # footprint delta after init (old builds: max RSS delta)
    memory_overall_mb: float | None = None  # ... after all runs
    memory_format: str | None = None  # "delta" or "peak" (builds before the delta wording)
    peak_memory_mb: float | None = None  # the process's peak via periodic monitoring
    model_size_mb: float | None = None
    op_profiling: bool = False  # an op-profiling table is in the output
    op_summary: list[tuple[str, int, float, float]] = field(default_factory=list)  # (type, count, avg ms, %)
    delegation: list[str] = field(default_factory=list)  # what the tool said about the delegates
    warnings: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.inference.count if self.inference else 0


_LOG_PREFIX = re.compile(r"^\s*(?:(?:INFO|WARN|WARNING|ERROR|VERBOSE|DEBUG|FATAL)\s*:\s*"
                         r"|[VDIWEF]/[\w.-]+\s*(?:\(\s*\d+\))?\s*:\s*)?")
_TIMINGS = re.compile(rf"Inference timings in us:\s*Init:\s*({_NUMBER}),\s*First inference:\s*({_NUMBER}),"
                      rf"\s*Warmup \(avg\):\s*({_NUMBER}),\s*Inference \(avg\):\s*({_NUMBER})")
# Builds of 2018-2019: "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9"
_TIMINGS_OLD = re.compile(rf"Average inference timings in us:\s*Warmup:\s*({_NUMBER}),\s*Init:\s*({_NUMBER}),"
                          rf"\s*(?:no stats:\s*)?Inference:\s*({_NUMBER})")
_MEMORY_DELTA = re.compile(rf"Memory footprint delta from the start of the tool \(MB\):\s*init=({_NUMBER})"
                           rf"\s+overall=({_NUMBER})")
_MEMORY_PEAK_OLD = re.compile(rf"^Peak memory footprint \(MB\):\s*init=({_NUMBER})\s+overall=({_NUMBER})")
_PERIODIC_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*({_NUMBER})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\):\s*({_NUMBER})")
_STATS = re.compile(r"^count=(\d+)(.*)$")
_STAT_FIELD = re.compile(rf"(\w+)=({_NUMBER})")
_DELEGATION = re.compile(r"(Replacing \d+ (?:out of \d+ )?node\(s\) with delegate.*"
                         r"|Explicitly applied .* delegate.*|Though .* delegate is explicitly applied.*"
                         r"|Created TensorFlow Lite (?:XNNPACK )?delegate for .*)")
_OP_TABLE = re.compile(r"=+ (?:Run Order|Top by Computation Time|Summary by node type) =+")


def _num(text: str) -> float:
    return float(text)


def _us(text: str) -> float:
    return float(text) / 1000.0


def _strip(line: str) -> str:
    return _LOG_PREFIX.sub("", line, count=1).strip()


def _run_stats(count: int, rest: str) -> RunStats:
    values = {k: float(v) for k, v in _STAT_FIELD.findall(rest)}
    if "min" not in values:  # "count=N curr=X(all same)": every run took X
        same = values.get("curr", math.nan)
        values.update(min=same, max=same, avg=same, std=0.0, first=values.get("first", same))
    ms = {k: v / 1000.0 for k, v in values.items()}
    return RunStats(count=count, first_ms=ms.get("first"), curr_ms=ms.get("curr"), min_ms=ms["min"],
                    max_ms=ms["max"], avg_ms=ms["avg"], std_ms=ms.get("std", 0.0), p5_ms=ms.get("p5"),
                    median_ms=ms.get("median"), p95_ms=ms.get("p95"))


def _last_error(lines: list[str]) -> str:
    """The most specific error line of a failed run's output."""
    stripped = [(raw, _strip(raw)) for raw in lines if raw.strip()]
    generic = {"Benchmarking failed.", "Benchmarking failed"}
    errors = [s for raw, s in stripped
              if re.match(r"^\s*(?:ERROR|FATAL)\s*:", raw) or re.match(r"^\s*[EF][ /]", raw)]
    specific = [e for e in errors if e not in generic]
    if specific:
        return specific[-1]
    failing = [s for _, s in stripped if re.search(r"fail|error|not found|denied|cannot|abort", s, re.I)]
    failing = [f for f in failing if f not in generic]
    if failing:
        return failing[-1]
    if errors:
        return errors[-1]
    return stripped[-1][1] if stripped else "(no output at all)"


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """The timings, memory and delegate notes one `benchmark_model` run printed.

    Raises `BenchmarkOutputError` naming the tool's own error when the output has no
    "Inference timings" line (the tool failed before or during the timed runs).
    """
    lines = text.splitlines()
    stats: list[RunStats] = []
    timings = timings_old = None
    result: dict = {"delegation": [], "warnings": [], "op_profiling": False}
    in_node_summary = False
    op_summary: list[tuple[str, int, float, float]] = []
    for raw in lines:
        line = _strip(raw)
        if in_node_summary:
            cells = raw.strip().split("\t") if "\t" in raw else raw.split()
            cells = [c.strip() for c in cells if c.strip()]
            if len(cells) >= 4 and not cells[0].startswith("["):
                try:
                    op_summary.append((cells[0], int(cells[1]), float(cells[2]), float(cells[3].rstrip("%"))))
                    continue
                except ValueError:
                    pass
            if cells and cells[0].startswith("["):
                continue
            in_node_summary = False
        if _OP_TABLE.search(line):
            result["op_profiling"] = True
            if "Summary by node type" in line:
                in_node_summary, op_summary = True, []
            continue
        if m := _STATS.match(line):
            stats.append(_run_stats(int(m.group(1)), m.group(2)))
        elif m := _TIMINGS.search(line):
            timings, stats_at_timings = m, list(stats)
        elif m := _TIMINGS_OLD.search(line):
            timings_old, stats_at_timings = m, list(stats)
        elif m := _MEMORY_DELTA.search(line):
            result.update(memory_init_mb=_num(m.group(1)), memory_overall_mb=_num(m.group(2)), memory_format="delta")
        elif m := _MEMORY_PEAK_OLD.search(line):
            result.update(memory_init_mb=_num(m.group(1)), memory_overall_mb=_num(m.group(2)), memory_format="peak")
        elif m := _PERIODIC_PEAK.search(line):
            result["peak_memory_mb"] = _num(m.group(1))
        elif m := _MODEL_SIZE.search(line):
            result["model_size_mb"] = _num(m.group(1))
        elif m := _DELEGATION.search(line):
            if m.group(1) not in result["delegation"]:
                result["delegation"].append(m.group(1))
        elif re.match(r"^\s*(?:WARN|WARNING)\s*:", raw):
            result["warnings"].append(line)
    result["op_summary"] = op_summary
    if timings is None and timings_old is None:
        raise BenchmarkOutputError(f"benchmark_model printed no inference timings; it said: {_last_error(lines)!r}. "
                                   "Fix what it names (or leave that delegate out) and run again")
    # The timed runs' line is the last statistics line before the timings; the one before it
    # is the warmup's (the op profiler's "Timings (microseconds): count=..." does not match).
    inference = stats_at_timings[-1] if stats_at_timings else None
    warmup = stats_at_timings[-2] if len(stats_at_timings) >= 2 else None
    if timings is not None:
        init, first, warm, avg = (_us(timings.group(i)) for i in range(1, 5))
    else:  # the oldest wording has no first inference: the warmup stats' first run is it
        warm, init, avg = (_us(timings_old.group(i)) for i in range(1, 4))
        first = warmup.first_ms if warmup and warmup.first_ms is not None else warm
    return BenchmarkModelResult(init_ms=init, first_ms=first, warmup_avg_ms=warm, inference_avg_ms=avg,
                                inference=inference, warmup=warmup, **result)


# --------------------------------------------------------------------------------------------
# Parsing executor_runner's output

@dataclass
class ExecutorRunnerResult:
    """What one `executor_runner` run printed, in milliseconds."""

    executions: int
    total_ms: float
    load_ms: float | None = None  # "Model loaded in X ms." (newer runners)
    iterations_ms: list[float] = field(default_factory=list)  # "Iteration i of N: X ms" (newer runners)
    method: str | None = None

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.executions


_ET_LOG = re.compile(r"^\s*([DIEF]) \d\d:\d\d:\d\d\.\d+ executorch:[^\]]*\]\s?(.*)$")
_ET_DONE = re.compile(rf"Model executed successfully (\d+) time\(s\) in ({_NUMBER}) ms")
_ET_LOADED = re.compile(rf"Model loaded in ({_NUMBER}) ms")
_ET_ITERATION = re.compile(rf"Iteration (\d+) of (\d+): ({_NUMBER}) ms")
_ET_METHOD = re.compile(r"Using method (\S+)")


def parse_executor_runner(text: str) -> ExecutorRunnerResult:
    """The executions, total time and (newer runners) per-iteration times `executor_runner` printed.

    Raises `BenchmarkOutputError` quoting the runner's last error when it did not finish.
    """
    done = loaded = method = None
    iterations: list[float] = []
    messages: list[tuple[str, str]] = []  # (level, message) of every line
    for raw in text.splitlines():
        m = _ET_LOG.match(raw)
        level, message = (m.group(1), m.group(2)) if m else ("", raw.strip())
        if message:
            messages.append((level, message))
        if d := _ET_DONE.search(message):
            done = d
        elif d := _ET_LOADED.search(message):
            loaded = float(d.group(1))
        elif d := _ET_ITERATION.search(message):
            iterations.append(float(d.group(3)))
        elif d := _ET_METHOD.search(message):
            method = d.group(1)
    if done is None:
        errors = [msg for lvl, msg in messages if lvl in "EF" and lvl]
        said = errors[-1] if errors else (messages[-1][1] if messages else "(no output at all)")
        raise BenchmarkOutputError(f"executor_runner did not report a successful run; it said: {said!r}. "
                                   "Fix what it names (a runner built with the program's delegates and "
                                   "kernels) and run again")
    executions = int(done.group(1))
    if executions <= 0:
        raise BenchmarkOutputError("executor_runner ran the program 0 times: give --num_executions of 1 or more")
    if len(iterations) != executions:
        iterations = []
    return ExecutorRunnerResult(executions=executions, total_ms=float(done.group(2)), load_ms=loaded,
                                iterations_ms=iterations, method=method)


# --------------------------------------------------------------------------------------------
# Configuration and the exact commands

@dataclass
class AndroidBenchmark:
    """How to reach the phone and what to run on it.

    benchmark_model / executor_runner: host paths of the user's device binaries (arm64 builds);
    cpu_mask: a `taskset` mask of the big cores (e.g. "f0"), None not to pin;
    gpu_precision_loss_allowed: True lets the GPU delegate compute in fp16 (the tool's
    default), False asks it for fp32.
    """

    benchmark_model: Path | str | None = None
    executor_runner: Path | str | None = None
    adb: str = "adb"
    serial: str | None = None
    device_dir: str = DEVICE_DIR
    threads: int = 4
    warmup_runs: int = 5
    num_runs: int = 50
    min_secs: float | None = None  # the tool's own default (1 s) may add runs beyond num_runs
    cpu_mask: str | None = None
    gpu_precision_loss_allowed: bool = True
    nnapi_accelerator: str | None = None
    op_profiling: bool = False
    report_peak_memory: bool = True
    memory_check_interval_ms: int | None = None
    executorch_threads: int | None = None  # --cpu_threads, which only newer runners take
    run_timeout_s: float = RUN_TIMEOUT_S

    def __post_init__(self):
        for name in ("threads", "warmup_runs", "num_runs"):
            value = getattr(self, name)
            low = 0 if name == "warmup_runs" else 1
            if not isinstance(value, int) or value < low:
                raise InputError(f"Android benchmark {name}={value!r} is invalid: give an integer of {low} or more")
        if self.cpu_mask is not None:
            if not _MASK.match(self.cpu_mask) or int(self.cpu_mask, 16) == 0:
                raise InputError(f"CPU mask {self.cpu_mask!r} is not a non-zero hexadecimal taskset mask: "
                                 "give e.g. f0 for cores 4-7")
        if self.serial is not None and (not self.serial or re.search(r"\s", self.serial)):
            raise InputError(f"device serial {self.serial!r} is invalid: give one listed by `adb devices`")
        if not self.device_dir.startswith("/") or re.search(r"\s", self.device_dir):
            raise InputError(f"device directory {self.device_dir!r} must be an absolute path without spaces, "
                             f"e.g. {DEVICE_DIR}")
        self.device_dir = self.device_dir.rstrip("/") or "/"

    @property
    def device_benchmark_model(self) -> str:
        return f"{self.device_dir}/{BENCHMARK_MODEL}"

    @property
    def device_executor_runner(self) -> str:
        return f"{self.device_dir}/{EXECUTOR_RUNNER}"

    def device_path(self, host_path: Path | str) -> str:
        return f"{self.device_dir}/{Path(host_path).name}"


def adb_command(cfg: AndroidBenchmark, *args: str) -> list[str]:
    """`adb [-s SERIAL] ARGS...`."""
    serial = ["-s", cfg.serial] if cfg.serial else []
    return [cfg.adb, *serial, *args]


def shell_command(cfg: AndroidBenchmark, *remote: str) -> list[str]:
    """`adb shell` running `remote` (each word quoted for the device's shell, which re-splits them)."""
    return adb_command(cfg, "shell", *(shlex.quote(word) for word in remote))


def mkdir_command(cfg: AndroidBenchmark) -> list[str]:
    return shell_command(cfg, "mkdir", "-p", cfg.device_dir)


def push_commands(cfg: AndroidBenchmark, host_path: Path | str, device_path: str,
                  executable: bool = False) -> list[list[str]]:
    """`adb push HOST DEVICE`, then `chmod +x` for a binary."""
    commands = [adb_command(cfg, "push", str(host_path), device_path)]
    if executable:
        commands.append(shell_command(cfg, "chmod", "+x", device_path))
    return commands


def _pinned(cfg: AndroidBenchmark) -> list[str]:
    return ["taskset", cfg.cpu_mask] if cfg.cpu_mask else []


def benchmark_flags(cfg: AndroidBenchmark, device_model_path: str, delegate: str) -> list[str]:
    """`benchmark_model`'s flags for one delegate ("cpu": XNNPACK, "gpu", "nnapi")."""
    if delegate not in DELEGATES:
        raise InputError(f"unknown Android delegate {delegate!r}: give one of {', '.join(DELEGATES)}")
    flags = [f"--graph={device_model_path}", f"--num_threads={cfg.threads}",
             f"--warmup_runs={cfg.warmup_runs}", f"--num_runs={cfg.num_runs}"]
    if cfg.min_secs is not None:
        flags.append(f"--min_secs={cfg.min_secs:g}")
    if delegate == "cpu":
        flags.append("--use_xnnpack=true")
    elif delegate == "gpu":
        flags += ["--use_gpu=true", f"--gpu_precision_loss_allowed={str(cfg.gpu_precision_loss_allowed).lower()}"]
    else:
        flags.append("--use_nnapi=true")
        if cfg.nnapi_accelerator:
            flags.append(f"--nnapi_accelerator_name={cfg.nnapi_accelerator}")
    if cfg.op_profiling:
        flags.append("--enable_op_profiling=true")
    if cfg.report_peak_memory:
        flags.append("--report_peak_memory_footprint=true")
        if cfg.memory_check_interval_ms is not None:
            flags.append(f"--memory_footprint_check_interval_ms={cfg.memory_check_interval_ms}")
    return flags


def benchmark_command(cfg: AndroidBenchmark, device_model_path: str, delegate: str) -> list[str]:
    """`adb shell [taskset MASK] DIR/benchmark_model --graph=... <delegate flags>`."""
    return shell_command(cfg, *_pinned(cfg), cfg.device_benchmark_model,
                         *benchmark_flags(cfg, device_model_path, delegate))


def executor_runner_command(cfg: AndroidBenchmark, device_program_path: str) -> list[str]:
    """`adb shell [taskset MASK] DIR/executor_runner --model_path=... --num_executions=N`."""
    flags = [f"--model_path={device_program_path}", f"--num_executions={cfg.num_runs}"]
    if cfg.executorch_threads is not None:
        flags.append(f"--cpu_threads={cfg.executorch_threads}")
    return shell_command(cfg, *_pinned(cfg), cfg.device_executor_runner, *flags)


def configuration(cfg: AndroidBenchmark, delegate: str) -> str:
    """The record's configuration in words: "XNNPACK 4 threads, big cores f0", "GPU fp16", "NNAPI"."""
    if delegate == "cpu":
        words = f"XNNPACK {cfg.threads} threads"
    elif delegate == "gpu":
        words = "GPU fp16" if cfg.gpu_precision_loss_allowed else "GPU fp32"
    elif delegate == "nnapi":
        words = f"NNAPI {cfg.nnapi_accelerator}" if cfg.nnapi_accelerator else "NNAPI"
    else:  # executorch
        words = "XNNPACK as delegated in the program" + (
            f", {cfg.executorch_threads} threads" if cfg.executorch_threads is not None else "")
    return words + (f", big cores {cfg.cpu_mask}" if cfg.cpu_mask else "")


def _label(cfg: AndroidBenchmark, delegate: str) -> str:
    if delegate == "cpu":
        return f"android litert xnnpack {cfg.threads} threads"
    if delegate == "gpu":
        return f"android litert gpu {'fp16' if cfg.gpu_precision_loss_allowed else 'fp32'}"
    if delegate == "nnapi":
        return "android litert nnapi" + (f" {cfg.nnapi_accelerator}" if cfg.nnapi_accelerator else "")
    return "android executorch"


# --------------------------------------------------------------------------------------------
# Running adb

def _resolve_adb(adb: str) -> str:
    found = shutil.which(adb)
    if found is None:
        raise NoAndroidDevice(f"adb ({adb}) not found on PATH: install Android platform-tools and put adb on "
                              "PATH (or give its path), or drop --android")
    return found


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run one adb command, stdout and stderr together (the device tools log to stderr)."""
    command = [_resolve_adb(command[0]), *command[1:]]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=timeout, check=False)


def parse_adb_devices(text: str) -> list[tuple[str, str]]:
    """(serial, state) of each device `adb devices` lists ("device", "unauthorized", "offline", ...)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue  # the header and "* daemon started successfully" notices
        parts = line.split()
        if len(parts) >= 2:
            devices.append((parts[0], parts[1]))
    return devices


def connected_devices(adb: str = "adb") -> list[str]:
    """Serials of the devices ready for commands (state "device").

    Raises `NoAndroidDevice` when adb is not on PATH, lists no device, or lists only devices
    that are unauthorized or offline (the message says which, and what to do).
    """
    try:
        listing = _run([adb, "devices"], timeout=60.0)
    except subprocess.TimeoutExpired:
        raise NoAndroidDevice("`adb devices` did not answer within 60 s: restart the adb server "
                              "(adb kill-server), or drop --android") from None
    devices = parse_adb_devices(listing.stdout)
    ready = [serial for serial, state in devices if state == "device"]
    if ready:
        return ready
    unusable = [(serial, state) for serial, state in devices if state != "device"]
    if unusable:
        states = ", ".join(f"{serial} ({state})" for serial, state in unusable)
        hint = ("accept the USB debugging prompt on the phone" if any(s == "unauthorized" for _, s in unusable)
                else "reconnect the phone")
        raise NoAndroidDevice(f"no usable Android device: adb lists only {states}: {hint}, or drop --android")
    raise NoAndroidDevice("no Android device attached (adb devices lists none): connect a phone with USB "
                          "debugging, or drop --android")


def choose_device(cfg: AndroidBenchmark) -> str:
    """The serial to run on: `cfg.serial` if attached, else the only attached device."""
    ready = connected_devices(cfg.adb)
    if cfg.serial:
        if cfg.serial not in ready:
            raise NoAndroidDevice(f"Android device {cfg.serial} is not attached (adb lists {', '.join(ready)}): "
                                  "connect it, give another serial, or drop --android")
        return cfg.serial
    if len(ready) > 1:
        raise InputError(f"{len(ready)} Android devices attached ({', '.join(ready)}): choose one with --serial SERIAL")
    return ready[0]


@dataclass
class DeviceInfo:
    serial: str
    model: str
    soc: str | None
    android: str | None

    def describe(self) -> str:
        return f"{self.model} ({self.soc or 'unknown SoC'}, Android {self.android or '?'})"


def _getprop(cfg: AndroidBenchmark, name: str) -> str | None:
    done = _run(shell_command(cfg, "getprop", name), timeout=ADB_TIMEOUT_S)
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def device_info(cfg: AndroidBenchmark) -> DeviceInfo:
    """The phone's model, SoC (ro.soc.model, Android 12+; else ro.board.platform) and Android version."""
    model = _getprop(cfg, "ro.product.model") or "unknown Android device"
    soc = _getprop(cfg, "ro.soc.model") or _getprop(cfg, "ro.board.platform")
    return DeviceInfo(serial=cfg.serial or "", model=model, soc=soc, android=_getprop(cfg, "ro.build.version.release"))


# --------------------------------------------------------------------------------------------
# The benchmark run

@dataclass(frozen=True)
class AndroidFailure:
    """An artifact and delegate that gave no timings, and why (one line)."""

    name: str
    delegate: str
    message: str


Artifact = tuple  # (name, host_path, graph, precision, macs | None)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        said = _last_error(done.stdout.splitlines())
        raise AndroidError(f"adb could not {what}: {said}; check the phone's storage and the path, and run again")


def _litert_record(cfg: AndroidBenchmark, artifact: Artifact, delegate: str, result: BenchmarkModelResult,
                   device: DeviceInfo) -> LatencyRecord:
    name, host_path, graph, precision, macs = artifact
    runs = result.inference
    if runs is None:  # a build that printed no statistics line: only the average is known
        stats = LatencyStats.of_summary(count=cfg.num_runs, mean_ms=result.inference_avg_ms,
                                        min_ms=result.inference_avg_ms)
    else:
        stats = LatencyStats.of_summary(count=runs.count, mean_ms=runs.avg_ms, min_ms=runs.min_ms,
                                        max_ms=runs.max_ms, stdev_ms=runs.std_ms)
        if runs.median_ms is not None:  # newer builds print percentiles: the median, as on the host
            stats.p50_ms = runs.median_ms
    notes = [f"benchmark_model on {device.describe()}: {stats.count} timed runs after "
             f"{result.warmup.count if result.warmup else cfg.warmup_runs} warmup runs "
             f"(avg {result.warmup_avg_ms:.2f} ms); summary statistics only (mean, min, max, std)"]
    if runs is None:
        notes.append("the tool printed no run statistics line: min is the mean")
    if runs is not None and runs.median_ms is not None:
        notes.append(f"tool percentiles: p5 {runs.p5_ms:.2f} ms, median {runs.median_ms:.2f} ms, "
                     f"p95 {runs.p95_ms:.2f} ms")
    if delegate == "gpu":
        notes.append("--gpu_precision_loss_allowed=true: the GPU delegate may compute in fp16"
                     if cfg.gpu_precision_loss_allowed else
                     "--gpu_precision_loss_allowed=false: the GPU delegate computes in fp32")
    notes += result.delegation
    if delegate in ("gpu", "nnapi") and any("will not be executed by the delegate" in d for d in result.delegation):
        notes.append(f"the {delegate.upper()} delegate took no node: these timings are of the CPU")
    if result.memory_overall_mb is not None:
        kind = "footprint delta" if result.memory_format == "delta" else "peak RSS delta"
        notes.append(f"memory {kind} (MB): init {result.memory_init_mb:g}, overall {result.memory_overall_mb:g}")
    if result.peak_memory_mb is not None:
        notes.append(f"process peak memory {result.peak_memory_mb:g} MB (periodic monitoring, tool included)")
    if result.op_profiling:
        notes.append("op profiling on (its overhead is in these timings); the per-op table is in the raw output")
    return LatencyRecord(
        name=f"{name} @ {_label(cfg, delegate)}", kind="device", graph=graph, precision=precision,
        runtime="android litert", configuration=configuration(cfg, delegate), threads=cfg.threads, stats=stats,
        artifact=name, model_bytes=Path(host_path).stat().st_size, macs=macs,
        peak_memory_mb=result.memory_overall_mb if result.memory_overall_mb is not None else result.peak_memory_mb,
        first_run_ms=result.first_ms, load_ms=result.init_ms, device=device.model, notes=notes)


def _executorch_record(cfg: AndroidBenchmark, artifact: Artifact, result: ExecutorRunnerResult,
                       device: DeviceInfo) -> LatencyRecord:
    name, host_path, graph, precision, macs = artifact
    notes = [f"executor_runner on {device.describe()}: {result.executions} executions, no warmup"]
    if result.iterations_ms:
        stats = LatencyStats.of_runs(result.iterations_ms)
        runs, first = list(result.iterations_ms), result.iterations_ms[0]
        notes.append("per-execution times as the runner printed them (the first one included)")
    else:
        stats = LatencyStats.of_summary(count=result.executions, mean_ms=result.mean_ms, min_ms=result.mean_ms)
        runs, first = None, None
        notes.append("the runner printed only the total time: mean only (min is the mean, no spread)")
    return LatencyRecord(
        name=f"{name} @ {_label(cfg, 'executorch')}", kind="device", graph=graph, precision=precision,
        runtime="android executorch", configuration=configuration(cfg, "executorch"),
        threads=cfg.executorch_threads, stats=stats, runs_ms=runs, artifact=name,
        model_bytes=Path(host_path).stat().st_size, macs=macs, first_run_ms=first, load_ms=result.load_ms,
        device=device.model, notes=notes)


def run_android_benchmarks(cfg: AndroidBenchmark, artifacts: Sequence[Artifact], delegates: Sequence[str] = ("cpu",),
                           output_dir: Path | str | None = None,
                           progress: Callable[[str], None] | None = None
                           ) -> tuple[list[LatencyRecord], list[AndroidFailure]]:
    """Benchmark each artifact on the phone; the records and the runs that gave no timings.

    artifacts: (name, host path, graph, precision, MACs or None); `.tflite` files run in
    `benchmark_model` once per delegate, `.pte` programs once in `executor_runner` (the
    program's own delegation). Each tool's raw output is saved under `output_dir` as
    `<artifact>.<delegate>.txt`. Raises `NoAndroidDevice` without a usable phone and
    `InputError` for a missing binary the artifacts need.
    """
    for delegate in delegates:
        if delegate not in DELEGATES:
            raise InputError(f"unknown Android delegate {delegate!r}: give one of {', '.join(DELEGATES)}")
    kinds = {Path(a[1]).suffix for a in artifacts}
    binaries = {".tflite": ("benchmark_model", cfg.benchmark_model), ".pte": ("executor_runner", cfg.executor_runner)}
    for suffix, (tool, path) in binaries.items():
        if suffix in kinds and path is not None and not Path(path).is_file():
            raise InputError(f"{tool} binary {path} does not exist: give the host path of your Android build of {tool}")
    say = progress or (lambda message: None)
    serial = choose_device(cfg)
    cfg = replace(cfg, serial=serial)  # every later command names it, in case another phone is plugged in
    device = device_info(cfg)
    say(f"Android device {serial}: {device.describe()}")
    _check(_run(mkdir_command(cfg), ADB_TIMEOUT_S), f"create {cfg.device_dir} on the device")
    pushed: set[str] = set()

    def push_binary(host: Path | str, device_path: str) -> None:
        if device_path in pushed:
            return
        for command in push_commands(cfg, host, device_path, executable=True):
            _check(_run(command, ADB_TIMEOUT_S), f"install {Path(host).name} as {device_path}")
        pushed.add(device_path)

    def save(artifact_name: str, delegate: str, text: str) -> None:
        if output_dir is not None:
            write_text_atomic(Path(output_dir) / f"{_safe(artifact_name)}.{delegate}.txt", text)

    records: list[LatencyRecord] = []
    failures: list[AndroidFailure] = []
    for artifact in artifacts:
        name, host_path = artifact[0], Path(artifact[1])
        if host_path.suffix not in binaries:
            failures.append(AndroidFailure(name, "-", f"{host_path.name} is neither .tflite nor .pte: "
                                                      "only those run on the phone"))
            continue
        is_pte = host_path.suffix == ".pte"
        tool, binary = binaries[".pte" if is_pte else ".tflite"]
        runs_for = ["executorch"] if is_pte else list(delegates)
        if binary is None:
            failures += [AndroidFailure(name, d, f"no {tool} binary given: give its host path to benchmark "
                                                 f"{host_path.suffix} files on the phone") for d in runs_for]
            continue
        push_binary(binary, cfg.device_executor_runner if is_pte else cfg.device_benchmark_model)
        device_path = cfg.device_path(host_path)
        say(f"pushing {host_path.name}")
        done = _run(push_commands(cfg, host_path, device_path)[0], ADB_TIMEOUT_S)
        if done.returncode != 0:
            message = f"adb push failed: {_last_error(done.stdout.splitlines())}"
            failures += [AndroidFailure(name, d, message) for d in runs_for]
            continue
        for delegate in runs_for:
            say(f"{name}: {configuration(cfg, delegate)}")
            command = (executor_runner_command(cfg, device_path) if is_pte
                       else benchmark_command(cfg, device_path, delegate))
            try:
                output = _run(command, cfg.run_timeout_s).stdout
            except subprocess.TimeoutExpired as exc:
                partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                save(name, delegate, partial)
                failures.append(AndroidFailure(name, delegate, f"{tool} did not finish within {cfg.run_timeout_s:g} s"))
                continue
            save(name, delegate, output)
            try:
                if is_pte:
                    records.append(_executorch_record(cfg, artifact, parse_executor_runner(output), device))
                else:
                    records.append(_litert_record(cfg, artifact, delegate, parse_benchmark_model(output), device))
            except BenchmarkOutputError as exc:
                failures.append(AndroidFailure(name, delegate, str(exc)))
                say(f"{name}: {delegate} failed: {exc}")
    return records, failures
