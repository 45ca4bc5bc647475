"""The machine description names the CPU and the features that choose int8 kernels."""
from __future__ import annotations

import platform

import pytest

from bilayer_mobile.reference.environment import toolchain_versions
from bilayer_mobile.runtime_bench.machine import describe_machine, int8_dot_product, machine_line, same_kernels

AVX2_ONLY = "cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7763\nflags\t\t: fpu sse4_1 avx fma f16c avx2 bmi2\n"
VNNI = "model name\t: Intel Xeon Platinum 8375C\nflags\t\t: avx2 fma f16c avx512f avx512bw avx512_vnni\n"


CPUID_AVX2 = {"AVX2": True, "FMA3": True, "F16C": True, "AVX512F": False, "AVX512VNNI": False}
CPUID_VNNI = {"AVX2": True, "FMA3": True, "F16C": True, "AVX512F": True, "AVX512BW": True, "AVX512VNNI": True}


@pytest.mark.parametrize("text, cpuid, expected, saturates", [
    (AVX2_ONLY, CPUID_AVX2, ["avx2", "f16c", "fma"], True),
    (VNNI, CPUID_VNNI, ["avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma"], False),
    (VNNI, {}, ["avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma"], False),  # no CPUID table: cpuinfo
])
def test_x86_features_and_int8_accumulation(tmp_path, monkeypatch, text, cpuid, expected, saturates):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    machine = describe_machine(cpuinfo, cpuid)
    assert "note" not in machine
    assert machine["kernel_features"] == expected
    assert machine["cpu"].startswith("AMD EPYC 7763" if text == AVX2_ONLY else "Intel Xeon Platinum 8375C")
    assert ("saturate" in machine["int8_dot_product"]) == saturates
    assert {"onnxruntime", "ai-edge-litert", "python"} <= set(machine["runtimes"])
    assert machine["cpu"] in machine_line(machine)
    if text == AVX2_ONLY:
        assert machine["cpu"] == "AMD EPYC 7763 (family 25, model 1)"


def test_an_emulated_cpu_is_recorded_as_the_runtimes_see_it(tmp_path, monkeypatch):
    """Under `qemu-x86_64 -cpu Haswell` on a VNNI host, /proc/cpuinfo shows the host and CPUID the
    emulated AVX2-only CPU; the runtimes dispatch on CPUID, so that is what is recorded."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(VNNI + "flags\t\t: avx_vnni amx_int8\n")
    machine = describe_machine(cpuinfo, CPUID_AVX2)
    assert machine["kernel_features"] == ["avx2", "f16c", "fma"]
    assert "saturate" in machine["int8_dot_product"]
    assert "disagree on avx512_vnni, avx512bw, avx512f" in machine["note"]


def test_arm_features(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd fphp asimdhp asimddp i8mm\nHardware\t: Qualcomm\n")
    cpuid = {"ASIMD": True, "ASIMDDP": True, "FPHP": True, "ASIMDHP": True, "SVE": False}
    machine = describe_machine(cpuinfo, cpuid)
    assert machine["kernel_features"] == ["dotprod", "fp16", "fp16_simd", "i8mm", "neon"]
    assert machine["int8_dot_product"].startswith("i8mm")
    assert int8_dot_product("aarch64", ["neon"]).startswith("neon")


def test_same_kernels_compares_features_and_runtimes(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(AVX2_ONLY)
    b.write_text(VNNI)
    assert same_kernels(describe_machine(a, CPUID_AVX2), describe_machine(a, CPUID_AVX2))
    assert not same_kernels(describe_machine(a, CPUID_AVX2), describe_machine(b, CPUID_VNNI))
    # the versions of the runtimes that run artifacts count; Python's and NumPy's do not
    base = describe_machine(a, CPUID_AVX2)
    other_python = {**base, "runtimes": {**base["runtimes"], "python": "0.0", "numpy": "0.0"}}
    other_ort = {**base, "runtimes": {**base["runtimes"], "onnxruntime": "0.0"}}
    assert same_kernels(base, other_python) and not same_kernels(base, other_ort)


def test_this_machine_is_described():
    machine = describe_machine()
    assert machine["arch"] == platform.machine().lower() and machine["cores"] >= 1
    assert machine["int8_dot_product"] != ""
    # the runtimes recorded are the toolchain's versions, the artifact runtimes installed here
    assert machine["runtimes"] == toolchain_versions()
    assert all(machine["runtimes"][name] != "not installed" for name in ("onnxruntime", "ai-edge-litert", "torch"))
    if machine["arch"] == "x86_64":
        assert "avx2" in machine["kernel_features"]  # every x86 CPU the pinned wheels support
