"""The NNAPI rule table: hand-built models it must accept and refuse, and each rule's conditions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilayer_mobile.export.tflite import convert_float
from bilayer_mobile.runtime_bench.nnapi_profile import RULES, OpOperands, nnapi_verdict, refusal


def tflite_file(module: nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], path) -> str:
    path.write_bytes(convert_float(module.eval(), inputs, outputs))
    return str(path)


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, image):
        return torch.tanh(self.out(F.leaky_relu(self.conv(image), 0.2)) + image)


class Warp(nn.Module):
    def forward(self, image, grid):
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_a_convolution_block_is_taken_whole_at_feature_level_3(tmp_path):
    path = tflite_file(ConvBlock(), {"image": torch.randn(1, 3, 16, 16)}, ["out"], tmp_path / "conv.tflite")
    verdict = nnapi_verdict(path)
    assert verdict["whole"] and verdict["delegable_percent"] == 100.0 and verdict["partitions"] == 1
    assert verdict["min_feature_level"] == 3  # LEAKY_RELU (lowered to PRELU) arrived in Android 10
    assert "not run" in verdict["checked"]


def test_the_decomposed_grid_sample_is_refused_naming_gather_nd(tmp_path):
    inputs = {"image": torch.randn(1, 3, 16, 16), "grid": torch.rand(1, 16, 16, 2) * 2 - 1}
    verdict = nnapi_verdict(tflite_file(Warp(), inputs, ["warped"], tmp_path / "warp.tflite"))
    assert not verdict["whole"] and verdict["delegable_percent"] < 100
    reasons = {r["op"]: r["reason"] for r in verdict["refused"]}
    assert "GATHER_ND" in reasons and "no such operation" in reasons["GATHER_ND"]
    assert any("rank 5" in r for r in reasons.values())  # the 5-D index tensors


def operands(op: str, version: int = 1, types=("FLOAT32",), ranks=(4,), constant=(False,)) -> OpOperands:
    return OpOperands(0, op, version, list(types), list(ranks), list(constant), list(range(len(types))), [99], ["out"])


@pytest.mark.parametrize("op, why", [
    (operands("CONV_2D", version=6), "versions <= 5"),
    (operands("FLOOR", types=("INT32",)), "input type INT32"),
    (operands("RESHAPE", types=("FLOAT32", "INT32"), ranks=(4, 1), constant=(False, False)), "input 1 must be a constant"),
    (operands("ADD", ranks=(5,)), "rank 5"),
    (operands("GATHER_ND"), "no such operation"),
    (operands("SPACE_TO_BATCH_ND"), "not in this rule table"),
])
def test_each_condition_refuses_with_its_reason(op, why):
    assert why in refusal(op, RULES)


def test_a_constant_input_of_any_rank_and_the_rules_levels():
    assert refusal(operands("RESHAPE", types=("FLOAT32", "INT32"), ranks=(4, 1), constant=(False, True)), RULES) is None
    assert refusal(operands("MUL", ranks=(4, 5), types=("FLOAT32", "FLOAT32"), constant=(False, True)), RULES) is None
    assert RULES["ADD"].feature_level("FLOAT32") == 1 and RULES["ADD"].feature_level("INT32") == 4
    assert RULES["BATCH_MATMUL"].feature_level("FLOAT32") == 6
    assert all(r.source.startswith("tflite/delegates/nnapi/nnapi_delegate.cc") for r in RULES.values())


def test_connected_sets_split_where_an_op_is_left_out():
    from bilayer_mobile.runtime_bench.nnapi_profile import connected_sets

    chain = [([0], [1]), ([1], [2]), ([2], [3])]  # op k reads tensor k and writes tensor k + 1
    assert connected_sets(chain, [0, 1, 2]) == 1
    assert connected_sets(chain, [0, 2]) == 2  # the middle op refused: two partitions
    assert connected_sets(chain, []) == 0
