"""The identity / frame / baked graphs reproduce the reference, with the documented contract."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch

from bilayer_mobile.export.graphs import (
    BakedFrameGraph,
    SplitFrameGraph,
    _ChannelsLastConv1x1,
    FrameGraph,
    IdentityGraph,
    adaptive_layout,
    grid_sample_adjoint,
    pack_adaptive_params,
    reconstruction_loss_gradient_explicit,
    unpack_adaptive_params,
)
from bilayer_mobile.export.target import output_names
from bilayer_mobile.reference.model import reconstruction_loss_gradient, warp
from bilayer_mobile.runtime_bench.compare import psnr_db
from bilayer_mobile.reference.networks import AdaptiveBatchNorm, AdaptiveConv1x1, AdaptiveSpadeBatchNorm


@pytest.fixture(scope="module")
def golden_inputs(golden):
    t = lambda key: torch.from_numpy(golden[key])
    return {k: t(k) for k in ("source_img", "source_kp", "target_kp", "source_mask", "source_stickman")}


@pytest.fixture(scope="module")
def state(tiny_model, golden_inputs):
    g = golden_inputs
    return tiny_model.init_identity(g["source_img"], g["source_kp"], mask=g["source_mask"])


def test_identity_graph_contract_and_parity(tiny_model, golden_inputs, state, golden):
    g = golden_inputs
    with torch.no_grad():
        texture, flat = IdentityGraph(tiny_model, adaptive_layout(state))(g["source_img"], g["source_stickman"], g["source_kp"], g["source_mask"])
    layout = adaptive_layout(state)
    assert texture.shape == (1, 3, 256, 256)
    assert flat.shape == (1, sum(e.size for e in layout)) == (1, 4364)
    # the enhanced texture, computed with the explicit adjoint instead of autograd
    torch.testing.assert_close(texture, state.enhanced_texture, rtol=0, atol=1e-5)
    assert float((texture - torch.from_numpy(golden["pred_enh_tex_hf_rgbs"])).abs().max()) < 2e-4
    torch.testing.assert_close(flat, pack_adaptive_params(state.adaptive_params), rtol=0, atol=0)


@pytest.fixture(scope="module")
def graphs(tiny_model, state):
    """Every graph of golden_tiny, frame graphs with and without their debug outputs."""
    layout = adaptive_layout(state)
    return [IdentityGraph(tiny_model, layout).eval()] + [
        cls(tiny_model, arg, debug_outputs=debug).eval()
        for cls, arg in ((FrameGraph, layout), (BakedFrameGraph, state)) for debug in (False, True)]


def graph_inputs(graph, golden_inputs, state) -> dict[str, torch.Tensor]:
    """The golden inputs of a graph, by the names its forward takes."""
    g = golden_inputs
    available = {"source_image": g["source_img"], "source_stickman": g["source_stickman"],
                 "source_keypoints": g["source_kp"], "source_mask": g["source_mask"],
                 "keypoints": g["target_kp"][1:2], "texture": state.enhanced_texture,
                 "adaptive_params": pack_adaptive_params(state.adaptive_params)}
    return {name: available[name] for name in inspect.signature(graph.forward).parameters}


def test_graph_specs_match_what_forward_takes_and_returns(graphs, golden_inputs, state):
    """The declared contract is the graph's real boundary: input names (in order) are forward's
    argument names, and forward returns one tensor per declared output, of its shape and dtype."""
    assert [type(g).__name__ for g in graphs].count("FrameGraph") == 2
    for graph in graphs:
        inputs = graph_inputs(graph, golden_inputs, state)
        assert [t.name for t in graph.input_spec()] == list(inputs), graph.name
        for spec in graph.input_spec():  # the golden inputs are of the declared shapes
            assert tuple(inputs[spec.name].shape) == spec.shape, (graph.name, spec)
        with torch.no_grad():
            out = graph(**inputs)
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        specs = graph.output_spec()
        assert len(out) == len(specs) == len(output_names(graph)), (graph.name, len(out), output_names(graph))
        assert output_names(graph) == [t.name for t in specs]
        for tensor, spec in zip(out, specs):
            assert tuple(tensor.shape) == spec.shape, (graph.name, spec.name, tuple(tensor.shape), spec.shape)
            assert str(tensor.dtype).removeprefix("torch.") == spec.dtype, (graph.name, spec.name, tensor.dtype)
        # one declared name per tensor, and at least one output gated (what the user sees)
        names = [t.name for t in graph.input_spec() + specs]
        assert len(set(names)) == len(names), (graph.name, names)
        assert any(t.gated for t in specs), graph.name
    # the debug outputs add the warp (a sampling grid) and the low-frequency layer
    frame, frame_debug = (g for g in graphs if type(g) is FrameGraph)
    extra = frame_debug.output_spec()[len(frame.output_spec()):]
    assert frame_debug.output_spec()[: len(frame.output_spec())] == frame.output_spec()
    assert [t.kind for t in extra] == ["warp", "image"] and not any(t.gated for t in extra)


def test_pack_unpack_round_trip(state):
    layout = adaptive_layout(state)
    kinds = [e.kind for e in layout]
    assert kinds == ["norm", "conv"] + ["norm", "norm", "conv"] * 5 + ["norm"]
    params = unpack_adaptive_params(pack_adaptive_params(state.adaptive_params), layout)
    for (w, b), (w2, b2) in zip(state.adaptive_params, params):
        assert torch.equal(w, w2) and torch.equal(b, b2)


def test_frame_graph_equals_render(tiny_model, golden_inputs, state):
    layout = adaptive_layout(state)
    graph = FrameGraph(tiny_model, layout, debug_outputs=True)
    kp = golden_inputs["target_kp"][1:2]
    with torch.no_grad():
        image, mask, uv, lowfreq = graph(kp, state.enhanced_texture, pack_adaptive_params(state.adaptive_params))
    ref = tiny_model.render(state, kp)
    assert image.shape == (1, 3, 256, 256) and mask.shape == (1, 1, 256, 256) and uv.shape == (1, 256, 256, 2)
    # the frame network is reshaped for the mobile runtimes (for_mobile_runtimes): the same sums
    # in another order, so float32 round-off apart ...
    for ours, theirs in ((image, ref.image), (mask, ref.mask), (uv, ref.uv), (lowfreq, ref.lowfreq)):
        assert psnr_db(theirs.numpy(), ours.numpy()) > 100
    # ... and exact in float64
    model64 = copy.deepcopy(tiny_model).double()
    state64 = model64.init_identity(*(golden_inputs[k].double() for k in ("source_img", "source_kp")),
                                    mask=golden_inputs["source_mask"].double())
    graph64 = FrameGraph(model64, layout, debug_outputs=True)
    with torch.no_grad():
        ours = graph64(kp.double(), state64.enhanced_texture, pack_adaptive_params(state64.adaptive_params))
    ref = model64.render(state64, kp.double())
    for a, b in zip(ours, (ref.image, ref.mask, ref.uv, ref.lowfreq)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_mobile_network_is_shaped_for_the_mobile_runtimes(tiny_model):
    """Each upsampling block's adaptive skip conv runs on the block's input (4x fewer pixels),
    and each adaptive norm is the channels-last variant."""
    import torch.nn as nn
    from bilayer_mobile.export.graphs import for_mobile_runtimes
    from bilayer_mobile.reference.networks import ResBlock

    original = tiny_model.inference_generator
    shaped = for_mobile_runtimes(original)
    moved = 0
    for a, b in zip(original.modules(), shaped.modules()):
        if isinstance(a, ResBlock) and a.has_skip and isinstance(a.skip[0], nn.Upsample):
            assert isinstance(b.skip[-1], nn.Upsample) and not isinstance(b.skip[0], nn.Upsample)
            moved += 1
    assert moved > 0
    # every adaptive norm applies its affine channels-last (a subclass: baking still folds it)
    norms = [m for m in shaped.modules() if isinstance(m, AdaptiveBatchNorm)]
    assert norms and all(type(m) is not AdaptiveBatchNorm for m in norms)
    # the original network is left as it was, also by the frame graphs built on it
    before = [type(m) for m in original.modules()]
    layout = adaptive_layout(tiny_model.init_identity(torch.zeros(1, 3, 256, 256), torch.zeros(1, 136)))
    graphs = [FrameGraph(tiny_model, layout), SplitFrameGraph(tiny_model, layout)]
    assert [type(m) for m in tiny_model.inference_generator.modules()] == before
    assert tiny_model.inference_generator is original
    assert all(g.model is not tiny_model and g.model.inference_generator is not original for g in graphs)
    assert all(g.model.texture_generator is tiny_model.texture_generator for g in graphs)  # shared, not copied
    # for_mobile=False: the reference network itself (what golden outputs are computed with)
    assert FrameGraph(tiny_model, layout, for_mobile=False).model is tiny_model


def test_baked_equals_dynamic(tiny_model, golden_inputs, state):
    kp = golden_inputs["target_kp"]
    baked = BakedFrameGraph(tiny_model, state, debug_outputs=True)
    dynamic = FrameGraph(tiny_model, adaptive_layout(state), debug_outputs=True)
    for i in range(2):
        with torch.no_grad():
            a = baked(kp[i : i + 1])
            b = dynamic(kp[i : i + 1], state.enhanced_texture, pack_adaptive_params(state.adaptive_params))
        for x, y in zip(a, b):  # the same network with its identity folded in: fp32 round-off
            assert psnr_db(y.numpy(), x.numpy()) > 90
    # no adaptive layer is left: each became an ordinary layer with constants (CONV_2D, not
    # BATCH_MATMUL with a constant operand, which the GPU accelerator rejects)
    adaptive = (AdaptiveConv1x1, _ChannelsLastConv1x1, AdaptiveBatchNorm, AdaptiveSpadeBatchNorm)
    assert not [m for m in baked.model.inference_generator.modules() if isinstance(m, adaptive)]
    assert [m for m in dynamic.model.inference_generator.modules() if isinstance(m, adaptive)]
    # every folded constant is a contiguous tensor of its own (converters mis-handle strided views)
    for name, buffer in baked.named_buffers():
        if name.startswith(("baked_warp", "model.inference_generator")):
            assert buffer.is_contiguous() and buffer.storage_offset() == 0, name
            assert buffer.untyped_storage().nbytes() == buffer.numel() * buffer.element_size(), name


@pytest.mark.parametrize("loss", ["sse", "l1"])
def test_enhancer_adjoint_equals_autograd(loss):
    torch.manual_seed(0)
    texture = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    uv = torch.rand(2, 48, 48, 2, dtype=torch.float64) * 2.3 - 1.15  # some samples fall outside: zero padding
    lowfreq = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    seg = torch.rand(2, 1, 48, 48, dtype=torch.float64)
    target = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    auto = reconstruction_loss_gradient(texture, target, lowfreq, uv, seg, loss)
    explicit = reconstruction_loss_gradient_explicit(texture, target, lowfreq, uv, seg, loss)
    torch.testing.assert_close(explicit, auto, rtol=0, atol=1e-12)


def test_adjoint_is_the_transpose_of_grid_sample():
    """<warp(T), G> == <T, adjoint(G)> for random T, G: the defining property of an adjoint."""
    torch.manual_seed(1)
    texture = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    uv = torch.rand(1, 20, 20, 2, dtype=torch.float64) * 2.4 - 1.2
    grad = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    lhs = (warp(texture, uv) * grad).sum()
    rhs = (texture * grid_sample_adjoint(grad, uv, (16, 16))).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
