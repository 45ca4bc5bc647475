"""The machine a figure was measured on: CPU, the ISA features that change int8/fp16 kernels,
and the version of every runtime.

Every parity figure depends on the kernels that computed it, and runtimes pick kernels by CPU
feature at run time: onnxruntime's x86 int8 GEMM multiplies u8 x s8 with VPMADDUBSW (int16 pair
sums that saturate) unless the CPU has VNNI (VPDPBUSD, exact int32 sums); ARM kernels use SDOT /
UDOT with dotprod, SMMLA with i8mm. So a figure without its machine cannot be compared with
another machine's, and `describe_machine()` is recorded beside every figure a bundle holds.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from ..reference.environment import toolchain_versions

# The features that select different int8 / fp16 kernels in onnxruntime (MLAS), XNNPACK (LiteRT)
# or PyTorch, by the name recorded. They are read from CPUID as this process sees it (NumPy's
# runtime dispatch table), which is what the runtimes see too, also under an emulator or a
# hypervisor that masks features; /proc/cpuinfo (the kernel's view of the host) adds the ones
# NumPy does not detect.
CPUID_FEATURES = {  # NumPy's name -> recorded name
    "AVX2": "avx2", "FMA3": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
    "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
    "ASIMD": "neon", "ASIMDDP": "dotprod", "FPHP": "fp16", "ASIMDHP": "fp16_simd", "SVE": "sve",
}
CPUINFO_ONLY_FEATURES = {  # /proc/cpuinfo flag -> recorded name
    "avx_vnni": "avx_vnni", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "i8mm": "i8mm", "bf16": "bf16",
}
# /proc/cpuinfo flags of the CPUID features, to notice when the two views disagree
CPUINFO_FLAG_OF = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
                   "avx512_vnni": "avx512_vnni", "neon": "asimd", "dotprod": "asimddp"}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """CPU model name (with its x86 family / model, or ARM part number, which name the core when
    a hypervisor shortens the name) and flag set from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "", set()
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags = flags or set(value.split())
        elif key and key not in fields:
            fields[key] = value.strip()
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware", "")
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    elif "cpu part" in fields:
        model += f" (implementer {fields.get('cpu implementer', '?')}, part {fields['cpu part']})"
    return model.strip(), flags


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


def cpuid_features() -> dict[str, bool]:
    """NumPy's CPUID-based feature table of this process (empty if NumPy does not expose it)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def describe_machine(cpuinfo: Path = Path("/proc/cpuinfo"), cpuid: dict[str, bool] | None = None) -> dict:
    """CPU model, architecture, cores, kernel-selecting ISA features and runtime versions.

    `kernel_features` are the CPU features that change which int8 / fp16 kernels a runtime picks,
    as this process sees them (`CPUID_FEATURES`, plus `CPUINFO_ONLY_FEATURES` from /proc/cpuinfo
    when that agrees with CPUID); `int8_dot_product` says in one phrase what they mean for int8
    accumulation. `cpuid` overrides the detected table (tests).
    """
    arch = platform.machine().lower()
    model, flags = _cpuinfo(cpuinfo)
    cpuid = cpuid_features() if cpuid is None else cpuid
    seen = {name for key, name in CPUID_FEATURES.items() if cpuid.get(key)}
    note = None
    if cpuid:
        masked = sorted(n for n, flag in CPUINFO_FLAG_OF.items() if (flag in flags) != (n in seen) and flags)
        if masked:
            note = (f"CPUID and /proc/cpuinfo disagree on {', '.join(masked)} (an emulator or a hypervisor masks "
                    "features): CPUID, what the runtimes see, is recorded")
        else:
            seen |= {name for flag, name in CPUINFO_ONLY_FEATURES.items() if flag in flags}
    else:  # no CPUID table: the kernel's flags
        seen = {name for key, name in CPUID_FEATURES.items() if CPUINFO_FLAG_OF.get(name, name) in flags}
        seen |= {name for flag, name in CPUINFO_ONLY_FEATURES.items() if flag in flags}
    features = sorted(seen)
    machine = {
        "cpu": model or platform.processor() or "unknown",
        "arch": arch,
        "cores": os.cpu_count() or 0,
        "kernel_features": features,
        "int8_dot_product": int8_dot_product(arch, features),
        "os": f"{platform.system()} {platform.release()}",
        "runtimes": toolchain_versions(),
    }
    if note:
        machine["note"] = note
    return machine


def machine_line(machine: dict) -> str:
    """One line naming a machine, for tables and messages."""
    features = ", ".join(machine.get("kernel_features", [])) or "no listed features"
    masked = "; features masked or emulated: CPUID recorded" if machine.get("note") else ""
    return (f"{machine.get('cpu', 'unknown')} ({machine.get('arch', '?')}, {machine.get('cores', '?')} cores; "
            f"{features}; int8: {machine.get('int8_dot_product', '?')}{masked})")


KERNEL_RUNTIMES = ("onnxruntime", "ai-edge-litert")


def same_kernels(a: dict, b: dict) -> bool:
    """Whether two machines run the same artifact kernels: same architecture, kernel-selecting
    features and versions of the runtimes that run artifacts (not of Python or NumPy)."""
    runtimes = lambda m: {k: m.get("runtimes", {}).get(k) for k in KERNEL_RUNTIMES}
    return (a.get("arch"), a.get("kernel_features"), runtimes(a)) == (b.get("arch"), b.get("kernel_features"), runtimes(b))
