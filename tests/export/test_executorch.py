"""ExecuTorch target: the BatchNorm workaround is needed and exact, programs carry the contract's
names, and the int8 recipe meets its gate with the warp in float.

The int8 figure uses the tiny model built with the default-model recipe (`realistic_tiny`:
standing statistics, a 3 px warp), as the ONNX and TFLite tests do. fp32 programs and their
delegation summary are checked end to end in tests/test_pipeline.py (`mobile_bundle`).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bilayer_mobile.export.executorch_export import ExecutorchTarget, affine_batch_norms, lower_to_xnnpack
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, UV_TOLERANCE
from bilayer_mobile.runtime_bench.executorch_runner import ExecutorchRunner


class TwoNorms(nn.Module):
    """Two non-affine BatchNorms of the same width with different statistics: what ExecuTorch
    1.5.1's DecomposeBatchNorm gets silently wrong (both get the first one's constants)."""

    name = "two_norms"

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4, affine=False)
        with torch.no_grad():
            self.first.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
            self.second.running_var.copy_(torch.tensor([9.0, 0.25, 4.0, 16.0]))
        self.eval()

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def _run_pte(module: nn.Module, x: torch.Tensor, path) -> torch.Tensor:
    from executorch.runtime import Runtime

    program = lower_to_xnnpack(torch.export.export(module, (x,)), ["x"], ["y"])
    path.write_bytes(program.to_executorch().buffer)
    return Runtime.get().load_program(str(path)).load_method("forward").execute([x])[0]


def test_the_batch_norm_workaround_is_needed_and_exact(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    module = TwoNorms()
    with torch.no_grad():
        expected = module(x)
    shaped = affine_batch_norms(module)
    assert all(m.affine for m in shaped.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(m.affine for m in module.modules() if isinstance(m, nn.BatchNorm2d)), "the original is untouched"
    with torch.no_grad():
        assert torch.equal(shaped(x), expected)  # the same arithmetic, bit for bit
        assert torch.equal(affine_batch_norms(module.double())(x.double()), module(x.double()))
    module.float()
    # without the workaround ExecuTorch computes a wrong result and says nothing; with it, right
    wrong = _run_pte(module, x, tmp_path / "as_is.pte")
    right = _run_pte(shaped, x, tmp_path / "affine.pte")
    assert (wrong - expected).abs().max() > 0.1, "ExecuTorch's DecomposeBatchNorm bug is fixed: drop the workaround"
    assert (right - expected).abs().max() < 1e-5


def _export(graph, feeds, precision, path, calibration=None):
    target = ExecutorchTarget()
    shaped = target.graph_for(graph, "fused")
    example = {k: torch.from_numpy(v) for k, v in feeds[0].items()}
    notes = target.export(shaped, example, precision, path, calibration=calibration,
                          float_model=target.convert_float(shaped, example))
    return notes, ExecutorchRunner(path)


def test_a_program_without_names_is_refused(tmp_path):
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(torch.export.export(nn.ReLU(), (torch.ones(2),)))
    (tmp_path / "plain.pte").write_bytes(program.to_executorch().buffer)
    with pytest.raises(ValueError, match="input_names"):
        ExecutorchRunner(tmp_path / "plain.pte")


def test_int8_frame_program_meets_its_gate_with_the_warp_in_float(parity, realistic_frame, tmp_path):
    graph, feeds, calibration = realistic_frame
    notes, runner = _export(graph, feeds, "int8", tmp_path / "frame_int8.pte", calibration)
    metrics = parity(graph, runner, feeds)
    assert metrics["image"]["psnr_db"] >= THRESHOLDS_DB["int8"], metrics
    assert metrics["uv"]["uv_error_px"] <= UV_TOLERANCE["int8"].limit_px(3.0), metrics
    assert any("int8" in n and "warp" in n for n in notes.notes), notes.notes
    assert notes.accelerator["ops"]["aten_grid_sampler_2d_default"]["portable"] == 1  # float warp, portable kernel
