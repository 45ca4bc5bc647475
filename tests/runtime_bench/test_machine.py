"""The machine description names the CPU and the features that choose int8 kernels."""
from __future__ import annotations

import platform

import pytest

from runtime_bench.machine import describe_machine, int8_dot_product, machine_line, same_kernels

AVX2_ONLY = "model name\t: AMD EPYC 7763\nflags\t\t: fpu sse4_1 avx fma f16c avx2 bmi2\n"
VNNI = "model name\t: Intel Xeon Platinum 8375C\nflags\t\t: avx2 fma f16c avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize("text, expected, saturates", [(AVX2_ONLY, ["avx2", "f16c", "fma"], True),
                                                        (VNNI, ["avx2", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma"], False)])
def test_x86_features_and_int8_accumulation(tmp_path, monkeypatch, text, expected, saturates):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    machine = describe_machine(cpuinfo)
    assert machine["kernel_features"] == expected
    assert machine["cpu"] == text.split(":")[1].split("\n")[0].strip()
    assert ("saturate" in machine["int8_dot_product"]) == saturates
    assert {"onnxruntime", "ai-edge-litert", "python"} <= set(machine["runtimes"])
    assert machine["cpu"] in machine_line(machine)


def test_arm_features(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd fphp asimdhp asimddp i8mm\nHardware\t: Qualcomm\n")
    machine = describe_machine(cpuinfo)
    assert machine["kernel_features"] == ["dotprod", "fp16", "fp16_simd", "i8mm", "neon"]
    assert machine["int8_dot_product"].startswith("i8mm")
    assert int8_dot_product("aarch64", ["neon"]).startswith("neon")


def test_same_kernels_compares_features_and_runtimes(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(AVX2_ONLY)
    b.write_text(VNNI)
    assert same_kernels(describe_machine(a), describe_machine(a))
    assert not same_kernels(describe_machine(a), describe_machine(b))


def test_this_machine_is_described():
    machine = describe_machine()
    assert machine["arch"] == platform.machine().lower() and machine["cores"] >= 1
    assert machine["int8_dot_product"] != ""
