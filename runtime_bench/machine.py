"""The machine a figure was measured on: CPU, the ISA features that change int8/fp16 kernels,
and the version of every runtime.

Every parity figure depends on the kernels that computed it, and runtimes pick kernels by CPU
feature at run time: onnxruntime's x86 int8 GEMM multiplies u8 x s8 with VPMADDUBSW (int16 pair
sums that saturate) unless the CPU has VNNI (VPDPBUSD, exact int32 sums); ARM kernels use SDOT /
UDOT with dotprod, SMMLA with i8mm. So a figure without its machine cannot be compared with
another machine's, and `describe_machine()` is recorded beside every figure a bundle holds.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

# /proc/cpuinfo flag -> the name recorded, for the features that select different int8 / fp16
# kernels in onnxruntime (MLAS), XNNPACK (LiteRT) or PyTorch.
X86_KERNEL_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
}
ARM_KERNEL_FEATURES = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "fphp": "fp16",
    "asimdhp": "fp16_simd",
    "sve": "sve",
    "bf16": "bf16",
}
RUNTIMES = ("onnxruntime", "ai-edge-litert", "torch", "numpy")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """CPU model name and flag set from /proc/cpuinfo (empty when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def int8_dot_product(arch: str, features: list[str]) -> str:
    """How the CPU's int8 GEMM kernels accumulate, which decides whether u8 x s8 products can
    saturate (onnxruntime's x86 U8S8 path without VNNI)."""
    if arch in ("x86_64", "amd64", "i686"):
        if "avx512_vnni" in features or "avx_vnni" in features:
            return "vnni (VPDPBUSD: exact int32 accumulation)"
        if "avx2" in features:
            return "no vnni (VPMADDUBSW: u8 x s8 pair sums saturate at int16)"
        return "no avx2 (SSE4.1 PMADDUBSW: u8 x s8 pair sums saturate at int16)"
    if arch in ("aarch64", "arm64"):
        if "i8mm" in features:
            return "i8mm (SMMLA / UMMLA) and dotprod"
        if "dotprod" in features:
            return "dotprod (SDOT / UDOT: exact int32 accumulation)"
        return "neon (widening multiply-accumulate)"
    return "unknown"


def runtime_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for dist in RUNTIMES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def describe_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """CPU model, architecture, cores, kernel-selecting ISA features and runtime versions.

    The features are the subset of the CPU flags that change which int8 / fp16 kernels a runtime
    picks (`X86_KERNEL_FEATURES`, `ARM_KERNEL_FEATURES`); `int8_dot_product` says in one phrase
    what that means for int8 accumulation.
    """
    arch = platform.machine().lower()
    model, flags = _cpuinfo(cpuinfo)
    table = ARM_KERNEL_FEATURES if arch in ("aarch64", "arm64") else X86_KERNEL_FEATURES
    features = sorted(name for flag, name in table.items() if flag in flags)
    return {
        "cpu": model or platform.processor() or "unknown",
        "arch": arch,
        "cores": os.cpu_count() or 0,
        "kernel_features": features,
        "int8_dot_product": int8_dot_product(arch, features),
        "os": f"{platform.system()} {platform.release()}",
        "runtimes": runtime_versions(),
    }


def machine_line(machine: dict) -> str:
    """One line naming a machine, for tables and messages."""
    features = ", ".join(machine.get("kernel_features", [])) or "no listed features"
    return (f"{machine.get('cpu', 'unknown')} ({machine.get('arch', '?')}, {machine.get('cores', '?')} cores; "
            f"{features}; int8: {machine.get('int8_dot_product', '?')})")


def same_kernels(a: dict, b: dict) -> bool:
    """Whether two machines run the same kernels: same architecture, features and runtimes."""
    keys = ("arch", "kernel_features", "runtimes")
    return all(a.get(k) == b.get(k) for k in keys)
