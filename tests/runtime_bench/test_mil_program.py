"""Host MIL evaluator kernels against torch on small random inputs, the fp16 storage path of a
saved program, and the refusal of operations it has no kernel for."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bilayer_mobile.runtime_bench.mil_program import (KERNELS, MilProgram, Operation, TensorType, UnsupportedOp,
                                                      conv2d, resample_bilinear)


def op(kind: str, **attrs) -> Operation:
    return Operation(kind, kind, {}, [("out", TensorType(np.dtype(np.float32), None, "fp32"))], attrs)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resample_matches_grid_sample(align_corners):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, (2, 5, 6, 2)).astype(np.float32)  # some samples in the zero padding
    ref = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="bilinear", padding_mode="zeros",
                        align_corners=align_corners).numpy()
    got = resample_bilinear(x, grid, "normalized_minus_one_to_one", align_corners, "constant", 0.0)
    assert np.abs(got - ref).max() < 1e-5
    # the two conventions differ by up to half a texel: the test would see a swapped flag
    other = resample_bilinear(x, grid, "normalized_minus_one_to_one", not align_corners, "constant", 0.0)
    assert np.abs(other - ref).max() > 0.05


def test_resample_border_padding_and_zero_to_one():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    grid = rng.uniform(-1.5, 1.5, (1, 4, 4, 2)).astype(np.float32)
    ref = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), padding_mode="border", align_corners=False).numpy()
    assert np.abs(resample_bilinear(x, grid, "normalized_minus_one_to_one", False, "border") - ref).max() < 1e-5
    zero_one = (grid + 1) / 2
    ref0 = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), align_corners=False).numpy()
    assert np.abs(resample_bilinear(x, zero_one, "normalized_zero_to_one", False) - ref0).max() < 1e-5


def test_resample_unsupported_modes_raise():
    x, grid = np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 1, 2), np.float32)
    with pytest.raises(UnsupportedOp, match="reflection"):
        resample_bilinear(x, grid, "normalized_minus_one_to_one", False, "reflection")
    with pytest.raises(UnsupportedOp, match="coordinates_mode"):
        resample_bilinear(x, grid, "pixels", False)
    with pytest.raises(UnsupportedOp, match="nearest"):
        KERNELS["resample"](op("resample"), {"x": [x], "coordinates": [grid], "sampling_mode": ["nearest"]})


@pytest.mark.parametrize("stride,padding,groups,dilation,k", [
    (1, 1, 1, 1, 3), (2, 1, 1, 1, 3), (1, 0, 2, 1, 3), (1, 2, 1, 2, 3), (2, 0, 1, 1, 1), (1, 0, 4, 1, 1), (1, 3, 1, 1, 7)])
def test_conv_matches_torch(stride, padding, groups, dilation, k):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 11, 10)).astype(np.float32)
    w = rng.standard_normal((8, 4 // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding, dilation, groups).numpy()
    got = conv2d(x, w, b, (stride, stride), ((padding, padding), (padding, padding)), (dilation, dilation), groups)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4


def test_conv_kernel_reads_mil_arguments():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    args = {"x": [x], "weight": [w], "strides": [np.array([2, 1])], "pad_type": ["custom"],
            "pad": [np.array([1, 0, 2, 1])], "dilations": [np.array([1, 1])], "groups": [np.array(1)]}
    ref = F.conv2d(F.pad(torch.from_numpy(x), (2, 1, 1, 0)), torch.from_numpy(w), stride=(2, 1)).numpy()
    assert np.abs(KERNELS["conv"](op("conv"), args) - ref).max() < 1e-4
    same = KERNELS["conv"](op("conv"), {**args, "pad_type": ["same"], "strides": [np.array([1, 1])]})
    assert same.shape == (1, 5, 8, 8)


@pytest.mark.parametrize("scale", [2, 4])
def test_upsample_nearest_matches_torch(scale):
    x = np.random.default_rng(4).standard_normal((1, 3, 5, 4)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), scale_factor=scale, mode="nearest").numpy()
    got = KERNELS["upsample_nearest_neighbor"](op("upsample_nearest_neighbor"), {
        "x": [x], "scale_factor_height": [np.float32(scale)], "scale_factor_width": [np.float32(scale)]})
    assert np.array_equal(got, ref)


def test_int8_weight_dequantization():
    data = np.array([[-128, 0, 127], [10, -10, 5]], np.int8)
    got = KERNELS["constexpr_affine_dequantize"](Operation("constexpr_affine_dequantize", "w", {}, [], {
        "quantized_data": data, "zero_point": np.zeros(2, np.int8), "scale": np.array([0.5, 0.25], np.float16),
        "axis": np.int32(0)}), {})
    assert np.array_equal(got, data.astype(np.float32) * np.array([[0.5], [0.25]], np.float32))


def test_scatter_add_matches_torch():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((2, 3, 6)).astype(np.float32)
    index = rng.integers(0, 6, (2, 3, 10))
    upd = rng.standard_normal((2, 3, 10)).astype(np.float32)
    ref = torch.from_numpy(data).scatter_add(2, torch.from_numpy(index), torch.from_numpy(upd)).numpy()
    got = KERNELS["scatter_along_axis"](op("scatter_along_axis"), {
        "data": [data], "indices": [index.astype(np.int32)], "updates": [upd], "axis": [np.int32(2)], "mode": ["add"]})
    assert np.abs(got - ref).max() < 1e-5


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory) -> Path:
    """A small saved fp16 ML Program: fp32 in/out, conv + tanh + resample computing in fp16."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3

    @mb.program(input_specs=[mb.TensorSpec((1, 3, 8, 8)), mb.TensorSpec((1, 5, 5, 2))],
                opset_version=ct.target.iOS16)
    def prog(x, grid):
        y = mb.conv(x=x, weight=w, pad_type="same", name="c")
        y = mb.tanh(x=y, name="t")
        return mb.resample(x=y, coordinates=grid, sampling_mode="bilinear", padding_mode="constant",
                           padding_value=0.0, coordinates_mode="normalized_minus_one_to_one", align_corners=False,
                           name="out")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=ct.precision.FLOAT16)
    path = tmp_path_factory.mktemp("mil") / "small.mlpackage"
    model.save(str(path))
    return path, w


def test_fp16_program_stores_fp16_between_ops(fp16_package):
    path, w = fp16_package
    program = MilProgram.load(path)
    types = {op.type: op.outputs[0][1].mil_name for op in program.operations if op.outputs}
    assert types["conv"] == "fp16" and types["tanh"] == "fp16" and types["cast"] in ("fp16", "fp32")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    grid = rng.uniform(-1, 1, (1, 5, 5, 2)).astype(np.float32)
    out = program.run({"x": x, "grid": grid})
    (value,) = out.values()
    # the same arithmetic with fp16 rounding after every op (and of the fp16 weights and inputs)
    h = lambda a: np.asarray(a, np.float16).astype(np.float32)
    y = h(conv2d(h(x), h(w), None, padding=((1, 1), (1, 1))))
    y = h(np.tanh(y))
    expected = h(resample_bilinear(y, h(grid), "normalized_minus_one_to_one", False))
    assert np.abs(value.astype(np.float32) - expected).max() < 2e-3
    # and it is not what float32 throughout gives to the last bit
    exact = resample_bilinear(np.tanh(conv2d(x, w, None, padding=((1, 1), (1, 1)))), grid,
                              "normalized_minus_one_to_one", False)
    assert 0 < np.abs(value.astype(np.float32) - exact).max() < 1e-2


def test_unknown_op_raises_naming_it(fp16_package):
    program = MilProgram.load(fp16_package[0])
    victim = next(o for o in program.operations if o.type == "tanh")
    victim.type = "frobnicate"
    with pytest.raises(UnsupportedOp, match="frobnicate"):
        program.run({"x": np.zeros((1, 3, 8, 8), np.float32), "grid": np.zeros((1, 5, 5, 2), np.float32)})
