"""Official checkpoint layout: synthetic checkpoints from the official manifest, and errors."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from bilayer_mobile.reference import (BilayerConfig, BilayerModel, CheckpointError, ConfigError, load_official_checkpoint,
                                      load_official_state_dicts)
from bilayer_mobile.reference.config import NETWORK_NAMES, read_args_txt, resolve_config

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def synthetic_state_dicts(manifest: dict, form: str, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random tensors with exactly the keys, shapes and dtypes the manifest lists."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for net, entry in manifest.items():
        sd = {}
        for key, (shape, dtype) in entry[form].items():
            if DTYPES[dtype] == torch.int64:
                sd[key] = torch.zeros(shape, dtype=torch.int64)
            elif key.endswith("running_var"):
                sd[key] = torch.rand(shape, generator=generator) + 0.5
            elif key.endswith(("weight_u", "weight_v")):
                sd[key] = torch.nn.functional.normalize(torch.randn(shape, generator=generator), dim=0)
            else:
                sd[key] = torch.randn(shape, generator=generator) * 0.02
        out[net] = sd
    return out


def write_run(root: Path, state_dicts: dict, epoch: int = 3, args: dict | None = None) -> Path:
    run = root / "runs" / "synthetic"
    (run / "checkpoints").mkdir(parents=True)
    for net, sd in state_dicts.items():
        torch.save(sd, run / "checkpoints" / f"{epoch}_{net}.pth")
    if args is not None:
        (run / "args.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(args.items())))
    return run


@pytest.fixture(scope="module", params=["with_spectral_norm", "after_remove_spectral_norm"])
def paper_run(request, manifest, tmp_path_factory):
    sds = synthetic_state_dicts(manifest, request.param)
    return request.param, write_run(tmp_path_factory.mktemp(request.param), sds), sds


def test_manifest_checkpoints_load_with_inferred_paper_config(paper_run, manifest):
    form, run, _ = paper_run
    model = load_official_checkpoint(run)
    assert not model.training and model.has_enhancer
    # the manifest's keypoints embedder is the harmonic variant (the scripts' argparse trap)
    expected = dataclasses.replace(BilayerConfig.paper(), pse_use_harmonic_enc=True)
    assert model.config == expected
    for net in NETWORK_NAMES:
        plain = manifest[net]["after_remove_spectral_norm"]
        ours = getattr(model, net).state_dict()
        assert sorted(ours) == sorted(plain), net
        for key, (shape, _) in plain.items():
            assert list(ours[key].shape) == shape, (net, key)
        assert sum(p.numel() for p in getattr(model, net).parameters()) == manifest[net]["num_parameters"]


def test_plain_and_spectral_forms_agree(manifest, tmp_path):
    """Folding the spectral-norm form gives weight_orig / (u . W v) for every conv and linear."""
    sn = synthetic_state_dicts(manifest, "with_spectral_norm", seed=1)
    net = "keypoints_embedder"
    model = BilayerModel(dataclasses.replace(BilayerConfig.paper(), pse_use_harmonic_enc=True))
    load_official_state_dicts(model, {n: sn[n] for n in NETWORK_NAMES})
    w = sn[net]["net.mlp.2.weight_orig"]
    sigma = sn[net]["net.mlp.2.weight_u"] @ (w @ sn[net]["net.mlp.2.weight_v"])
    torch.testing.assert_close(model.keypoints_embedder.net.mlp[2].weight, w / sigma, rtol=0, atol=0)


def test_paper_config_rejects_harmonic_keypoints_embedder_with_named_shape(manifest):
    sds = synthetic_state_dicts(manifest, "after_remove_spectral_norm")
    model = BilayerModel(BilayerConfig.paper())
    with pytest.raises(CheckpointError) as err:
        load_official_state_dicts(model, sds)
    message = str(err.value)
    assert "keypoints_embedder" in message and "'net.mlp.0.weight'" in message
    assert "(256, 1088)" in message and "(256, 136)" in message


# ------------------------------------------------------------------ errors on the tiny run
@pytest.fixture
def tiny_copy(golden_run, tmp_path) -> Path:
    run = tmp_path / "runs" / "bilayer_tiny"
    shutil.copytree(golden_run, run)
    for path in run.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return run


def edit_checkpoint(run: Path, net: str, edit) -> None:
    path = run / "checkpoints" / f"1_{net}.pth"
    sd = torch.load(path, weights_only=True)
    edit(sd)
    torch.save(sd, path)


def test_missing_key_names_network_and_key(tiny_copy):
    edit_checkpoint(tiny_copy, "inference_generator", lambda sd: sd.pop("gen_inf.heads.1.0.bias"))
    with pytest.raises(CheckpointError, match=r"inference_generator.*missing keys \['gen_inf\.heads\.1\.0\.bias'\]"):
        load_official_checkpoint(tiny_copy)


def test_unexpected_key_names_network_and_key(tiny_copy):
    edit_checkpoint(tiny_copy, "texture_enhancer", lambda sd: sd.__setitem__("net.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"texture_enhancer.*unexpected keys \['net\.extra\.weight'\]"):
        load_official_checkpoint(tiny_copy)


def test_shape_mismatch_names_key_and_both_shapes(tiny_copy):
    def grow(sd):
        sd["net.enc.1.block.0.bias"] = torch.zeros(99)

    edit_checkpoint(tiny_copy, "identity_embedder", grow)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(tiny_copy)
    message = str(err.value)
    assert "identity_embedder" in message and "net.enc.1.block.0.bias" in message
    assert "(99,)" in message and "(16,)" in message


def test_incomplete_spectral_norm_triple(tiny_copy):
    edit_checkpoint(tiny_copy, "keypoints_embedder", lambda sd: sd.pop("net.mlp.0.weight_v"))
    with pytest.raises(CheckpointError, match="net.mlp.0.weight_v"):
        load_official_checkpoint(tiny_copy)


def test_args_txt_disagreeing_with_shapes_names_the_key(tiny_copy):
    args = tiny_copy / "args.txt"
    args.write_text(args.read_text().replace("inf_max_channels: 32", "inf_max_channels: 256"))
    with pytest.raises(ConfigError, match="inf_max_channels.*256.*32"):
        load_official_checkpoint(tiny_copy)


def test_unsupported_flag_in_args_txt(tiny_copy):
    args = tiny_copy / "args.txt"
    args.write_text(args.read_text().replace("inf_norm_layer_type: ada_bn", "inf_norm_layer_type: ada_in"))
    with pytest.raises(ConfigError, match="inf_norm_layer_type"):
        load_official_checkpoint(tiny_copy)


def test_garbage_checkpoint_file(tiny_copy):
    (tiny_copy / "checkpoints" / "1_keypoints_embedder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*1_keypoints_embedder.pth"):
        load_official_checkpoint(tiny_copy)


def test_missing_base_network(tiny_copy):
    (tiny_copy / "checkpoints" / "1_texture_generator.pth").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint for texture_generator"):
        load_official_checkpoint(tiny_copy)


def test_missing_run_dir_and_wrong_epoch(tmp_path, golden_run):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no checkpoints for epoch 5; available epochs: \['1'\]"):
        load_official_checkpoint(golden_run, epoch=5)


def test_latest_epoch_is_default_and_enhancer_from_second_run(tiny_copy, tmp_path):
    ckpts = tiny_copy / "checkpoints"
    enhancer_run = tmp_path / "runs" / "enhancer"
    (enhancer_run / "checkpoints").mkdir(parents=True)
    shutil.move(ckpts / "1_texture_enhancer.pth", enhancer_run / "checkpoints" / "12_texture_enhancer.pth")
    for net in NETWORK_NAMES[:4]:
        shutil.copy(ckpts / f"1_{net}.pth", ckpts / f"10_{net}.pth")
    edit_checkpoint(tiny_copy, "keypoints_embedder", lambda sd: sd["net.mlp.6.bias"].add_(1.0))  # epoch 1 only
    base_only = load_official_checkpoint(tiny_copy)
    assert not base_only.has_enhancer
    epoch1 = load_official_checkpoint(tiny_copy, epoch=1)
    assert not torch.equal(base_only.keypoints_embedder.net.mlp[6].bias, epoch1.keypoints_embedder.net.mlp[6].bias)
    full = load_official_checkpoint(tiny_copy, enhancer_run=enhancer_run)
    assert full.has_enhancer


def test_explicit_files_mapping(golden_run):
    files = {net: golden_run / "checkpoints" / f"1_{net}.pth" for net in NETWORK_NAMES}
    model = load_official_checkpoint(files, args_txt=golden_run / "args.txt")
    assert model.has_enhancer and model.config.inf_max_channels == 32


def test_config_from_args_alone_and_mismatch(golden_run):
    args = read_args_txt(golden_run / "args.txt")
    config = resolve_config(args=args)
    assert (config.emb_num_channels, config.tex_max_channels, config.enh_max_channels) == (8, 64, 16)
    keypoints = torch.load(golden_run / "checkpoints" / "1_keypoints_embedder.pth", weights_only=True)
    keypoints["frequencies"] = torch.zeros(1, 1, 4)  # a harmonic embedder: 136 * 4 * 2 inputs
    keypoints["net.mlp.0.weight_orig"] = torch.zeros(32, 1088)
    with pytest.raises(ConfigError, match="pse_use_harmonic_enc: args.txt says False.* say True"):
        resolve_config(state_dicts={"keypoints_embedder": keypoints}, args=args)
