"""The roofline estimate: per-layer costs traced from the reference model, and the time model."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bilayer_mobile.reference import BilayerModel
from bilayer_mobile.reference.summary import pipeline_macs
from bilayer_mobile.runtime_bench.roofline import (
    ADRENO_640,
    DEVICES,
    ESTIMATE_LABEL,
    Device,
    Efficiency,
    LayerCost,
    estimate_devices,
    frame_layers,
    fused_lower_bound_bytes,
    plot_roofline,
    roofline,
    roofline_document,
    roofline_table_markdown,
    total_macs,
    unfused_bytes,
)


@pytest.fixture(scope="module")
def model(small_model) -> BilayerModel:
    """The small configuration of the pipeline tests (tests/conftest.py)."""
    return small_model


@pytest.fixture(scope="module")
def layers(model):
    return frame_layers(model)


# A made-up device: 1 TFLOP/s fp16, 10 GB/s, ridge point at 100 FLOP/byte.
TOY = Device(name="Toy", soc="Toy SoC", year=2000, kind="GPU", peak_fp16_gflops=1000.0, peak_fp32_gflops=None,
             peak_int8_tops=None, dram_gbps=10.0, memory="toy", source="made up for the test")


def _layer(name, macs, elements, kind="conv") -> LayerCost:
    return LayerCost(name=name, kind=kind, op="convolution", macs=macs, vector_flops=0, input_elements=elements,
                     weight_elements=0, output_elements=0, dtype_bytes=2)


def test_layer_macs_sum_to_the_frame_macs_of_pipeline_macs(model, layers):
    """Conv, addmm and bmm (what FlopCounterMode counts) are all traced: the sum is exact; the
    elementwise work FlopCounterMode ignores is kept apart in vector_flops."""
    expected = pipeline_macs(model)["frame"]
    assert total_macs(layers) == pytest.approx(expected, rel=1e-6)
    kinds = {layer.kind for layer in layers}
    assert {"conv", "linear", "adaptive_conv", "norm", "warp", "upsample"} <= kinds
    assert sum(layer.vector_flops for layer in layers) > 0
    assert all(layer.macs == 0 for layer in layers if layer.kind not in {"conv", "linear", "adaptive_conv"})
    assert len({layer.name for layer in layers}) == len(layers)


def test_bytes_are_positive_and_unfused_traffic_bounds_the_fused_traffic(layers):
    assert all(layer.bytes > 0 for layer in layers)
    fused = fused_lower_bound_bytes(layers)
    assert 0 < fused <= unfused_bytes(layers)
    # the fused bound holds at least every weight of the frame's convolutions and the two outputs
    size = layers.image_size
    assert fused >= 2 * (4 * size * size)  # image (3 channels) + mask (1), fp16
    # fp16 counts half the bytes of fp32
    assert unfused_bytes([layer.at_dtype(4) for layer in layers]) == 2 * unfused_bytes(layers)


def test_the_warp_is_traced_with_its_texture_and_grid(layers):
    (warp,) = [layer for layer in layers if layer.kind == "warp"]
    s = layers.image_size
    assert warp.output_elements == 3 * s * s
    assert warp.input_elements == 3 * s * s + s * s * 2  # texture + sampling grid


def test_compute_bound_and_memory_bound_layer_times():
    compute = _layer("compute", macs=10**9, elements=1000)  # 2 GFLOP, 2 kB: far above the ridge
    memory = _layer("memory", macs=1000, elements=10**8)  # 2 kFLOP, 200 MB: far below it
    estimate = roofline([compute, memory], TOY, Efficiency(1.0, 1.0))
    times = {t.name: t for t in estimate.layer_times}
    assert times["compute"].bound == "compute"
    assert times["compute"].seconds == pytest.approx(2 * compute.macs / 1e12)
    assert times["memory"].bound == "memory"
    assert times["memory"].seconds == pytest.approx(memory.bytes / 10e9)
    assert estimate.memory_bound_layers == ("memory",)
    assert estimate.ideal_ms == pytest.approx(1e3 * (2e9 / 1e12 + 2e8 / 1e10))
    # 100% efficiency: practical equals ideal; lower efficiency is slower
    assert estimate.practical_ms == pytest.approx(estimate.ideal_ms)
    assert roofline([compute, memory], TOY, Efficiency(0.5, 0.5)).practical_ms == pytest.approx(2 * estimate.ideal_ms)


def test_doubling_bandwidth_or_peak_never_increases_the_estimate(layers):
    base = roofline(layers, ADRENO_640)
    faster_memory = roofline(layers, dataclasses.replace(ADRENO_640, dram_gbps=2 * ADRENO_640.dram_gbps))
    faster_compute = roofline(layers, dataclasses.replace(ADRENO_640, peak_fp16_gflops=2 * ADRENO_640.peak_fp16_gflops))
    for other in (faster_memory, faster_compute):
        assert other.ideal_ms <= base.ideal_ms
        assert other.practical_ms <= base.practical_ms
        assert other.fused_bound_ms <= base.fused_bound_ms
        for a, b in zip(other.layer_times, base.layer_times, strict=True):
            assert a.seconds <= b.seconds
    # the fused bound is a lower bound of the unfused estimate; practical >= ideal
    assert base.fused_bound_ms <= base.ideal_ms <= base.practical_ms
    lo, hi = base.practical_range_ms
    assert base.ideal_ms <= lo <= base.practical_ms <= hi


def test_int8_devices_price_one_byte_per_element(layers):
    npu = next(d for d in DEVICES if d.kind == "NPU")
    estimate = roofline(layers, npu)
    assert estimate.precision == "int8"
    assert estimate.bytes_unfused == unfused_bytes(layers) // 2


def test_a_device_without_a_peak_is_not_estimated(layers):
    blank = dataclasses.replace(TOY, name="Blank", peak_fp16_gflops=None)
    with pytest.raises(ValueError):
        roofline(layers, blank)
    estimates, skipped = estimate_devices(layers, [TOY, blank])
    assert [e.device.name for e in estimates] == ["Toy"] and skipped == [blank]


def test_markdown_names_every_device_the_paper_figure_and_says_estimate(layers):
    estimates, skipped = estimate_devices(layers, DEVICES)
    text = roofline_table_markdown(estimates, paper_ms=42.0, skipped=skipped)
    for device in DEVICES:
        assert device.name in text
    assert "42 ms" in text
    assert "estimate" in text.lower() and ESTIMATE_LABEL in text
    assert "not a measurement" in text


def test_every_device_cites_a_source_and_marks_its_units():
    assert len({d.name for d in DEVICES}) == len(DEVICES)
    assert any(d.name == "Adreno 640" for d in DEVICES)
    for device in DEVICES:
        assert device.source.strip(), device.name
        assert device.kind in {"GPU", "NPU"}
        if device.kind == "NPU":  # NPUs are quoted in INT8 TOPS, not FP16 FLOPs
            assert device.peak_int8_tops and device.peak_fp16_gflops is None
        for value in (device.peak_fp16_gflops, device.peak_fp32_gflops, device.peak_int8_tops, device.dram_gbps):
            assert value is None or value > 0


def test_the_plot_is_written(layers, tmp_path):
    path = tmp_path / "plots" / "roofline.png"
    plot_roofline(layers, DEVICES, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_document_is_json_and_consistent(model):
    doc = roofline_document(model)
    json.dumps(doc)
    assert doc["frame"]["macs"] == doc["frame"]["pipeline_macs_frame"]
    assert doc["paper"]["ms"] == 42.0 and "estimate" in doc["label"].lower()
    assert len(doc["devices"]) == len(DEVICES)
    assert len(doc["estimates"]) + len(doc["not_estimated"]) == len(DEVICES)
    assert doc["frame"]["bytes_fused_fp16"] <= doc["frame"]["bytes_unfused_fp16"]
