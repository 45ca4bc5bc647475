"""Folding spectral norm equals torch's spectral norm evaluated in eval mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bilayer_mobile.reference import fold_spectral_norm


@pytest.mark.parametrize("module", [nn.Conv2d(6, 16, 3, padding=1), nn.Linear(40, 24), nn.Conv2d(8, 4, 1)],
                         ids=["conv3x3", "linear", "conv1x1"])
def test_fold_equals_torch_spectral_norm_in_eval(module):
    torch.manual_seed(0)
    module = nn.utils.spectral_norm(module, eps=1e-7)
    x = torch.randn(2, *((6, 9, 9) if isinstance(module, nn.Conv2d) and module.in_channels == 6 else
                         (8, 5, 5) if isinstance(module, nn.Conv2d) else (40,)))
    module.train()
    for _ in range(3):  # power iterations move u and v away from their init
        module(x)
    module.eval()
    expected = module(x)  # eval: weight = weight_orig / (u . W v), no power iteration
    folded = fold_spectral_norm(module.state_dict())
    assert set(folded) == {"weight", "bias"}
    reference_weight = module.weight.detach()
    torch.testing.assert_close(folded["weight"], reference_weight, rtol=0, atol=1e-7)
    if isinstance(module, nn.Conv2d):
        out = nn.functional.conv2d(x, folded["weight"], folded["bias"], padding=module.padding)
    else:
        out = nn.functional.linear(x, folded["weight"], folded["bias"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_fold_passes_plain_state_dicts_through():
    sd = {"weight": torch.randn(3, 3), "bias": torch.randn(3), "running_mean": torch.zeros(3)}
    folded = fold_spectral_norm(sd)
    assert folded.keys() == sd.keys() and all(torch.equal(folded[k], sd[k]) for k in sd)


def test_fold_uses_stored_vectors_not_the_true_norm():
    """The official removal divides by u.(Wv) with the *stored* u, v, not the exact largest
    singular value; a fold that ran an SVD would differ."""
    w = torch.randn(5, 7)
    u = nn.functional.normalize(torch.randn(5), dim=0)
    v = nn.functional.normalize(torch.randn(7), dim=0)
    folded = fold_spectral_norm({"weight_orig": w, "weight_u": u, "weight_v": v})["weight"]
    torch.testing.assert_close(folded, w / torch.dot(u, w @ v))
    assert not torch.allclose(folded, w / torch.linalg.matrix_norm(w, ord=2))
