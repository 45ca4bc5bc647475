"""What `bilayer-mobile info` reports: networks, parameter counts and MACs per network."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import BilayerModel


@dataclass
class NetworkCost:
    name: str
    parameters: int
    macs: int  # multiply-accumulates for one call at the config's image size, batch 1
    runs: str  # "per identity" or "per frame"


def _macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@torch.no_grad()
def network_costs(model: BilayerModel) -> list[NetworkCost]:
    """Parameters and MACs of every network (batch 1, config image size).

    The inference generator is split into its projector (once per identity) and the generator
    itself (once per frame). The enhancer's MACs cover all its unrolled steps.
    """
    cfg = model.config
    s = cfg.image_size
    dtype = model.dtype
    keypoints = torch.zeros(1, 2 * cfg.num_keypoints, dtype=dtype)
    embedder_input = torch.zeros(1, 3 if cfg.emb_no_stickman else 6, s, s, dtype=dtype)
    embeddings = model.identity_embedder(embedder_input)
    params = model.inference_generator.adaptive_params(embeddings)
    pose = model.keypoints_embedder(keypoints)
    count = lambda net: sum(p.numel() for p in net.parameters())
    inf = model.inference_generator
    costs = [
        NetworkCost("identity_embedder", count(model.identity_embedder), _macs(lambda: model.identity_embedder(embedder_input)), "per identity"),
        NetworkCost("texture_generator", count(model.texture_generator), _macs(lambda: model.texture_generator(embeddings)), "per identity"),
        NetworkCost("inference_generator.projector", count(inf.prj_inf), _macs(lambda: inf.adaptive_params(embeddings)), "per identity"),
        NetworkCost("keypoints_embedder", count(model.keypoints_embedder), _macs(lambda: model.keypoints_embedder(keypoints)), "per frame"),
        NetworkCost("inference_generator", count(inf.gen_inf), _macs(lambda: inf(pose, params)), "per frame"),
    ]
    if model.has_enhancer:
        enhancer_step = _macs(lambda: model.texture_enhancer(torch.zeros(1, 6, s, s, dtype=dtype)))
        costs.append(NetworkCost("texture_enhancer", count(model.texture_enhancer),
                                 enhancer_step * cfg.enh_unrolling_depth, "per identity (all unrolled steps)"))
    return costs


@torch.no_grad()
def pipeline_macs(model: BilayerModel) -> dict[str, int]:
    """MACs of the whole once-per-identity and once-per-frame work (batch 1), as run."""
    cfg = model.config
    s = cfg.image_size
    image = torch.zeros(1, 3, s, s, dtype=model.dtype)
    keypoints = torch.zeros(1, 2 * cfg.num_keypoints, dtype=model.dtype)
    with FlopCounterMode(display=False) as counter:
        state = model.init_identity(image, keypoints)
    identity = counter.get_total_flops() // 2
    frame = _macs(lambda: model.render(state, keypoints))
    return {"identity": identity, "frame": frame}
