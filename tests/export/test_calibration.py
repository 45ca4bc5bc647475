"""Calibration and golden data: augmented photos and the official dataset layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bilayer_mobile.export.bundle import ExportConfig
from bilayer_mobile.export.calibration import DataSets, dataset_clips, frame_feeds, identity_feeds, photo_clips
from bilayer_mobile.export.errors import ExportError
from bilayer_mobile.export.graphs import pack_adaptive_params
from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.reference.face_samples import augmented_crops, load_face_photos


def test_photo_clips_are_real_faces_and_seeded(photos_dir):
    a = photo_clips(3, 2, seed=5, photos_dir=photos_dir)
    b = photo_clips(3, 2, seed=5, photos_dir=photos_dir)
    c = photo_clips(3, 2, seed=6, photos_dir=photos_dir)
    assert len(a) == 3 and all(clip.drivers.shape == (2, 136) for clip in a)
    assert all(torch.equal(x.image, y.image) and torch.equal(x.drivers, y.drivers) for x, y in zip(a, b))
    assert not torch.equal(a[0].image, c[0].image)  # calibration and golden seeds give other data
    feeds = identity_feeds(a)
    assert set(feeds[0]) == {"source_image", "source_stickman", "source_keypoints", "source_mask"}
    assert feeds[0]["source_mask"].shape == (1, 1, 256, 256) and np.all(feeds[0]["source_mask"] == 1)


def test_photo_clips_at_another_crop_size(photos_dir):
    """The crop size is the model's: a 64 px model gets 64 px crops, stickmen and masks; each
    clip names the photo it comes from."""
    photos = load_face_photos(photos_dir)
    clips = photo_clips(3, 2, seed=41, photos_dir=photos_dir, image_size=64)
    assert all(c.image.shape == (3, 64, 64) and c.drivers.shape == (2, 136) for c in clips)
    assert [c.identity for c in clips] == [photos[i % len(photos)].name for i in range(3)]
    feeds = identity_feeds(clips, image_size=64)
    assert all(f[k].shape[-2:] == (64, 64) for f in feeds for k in ("source_image", "source_stickman", "source_mask"))
    assert all(f["source_stickman"].shape == (1, 3, 64, 64) and f["source_stickman"].std() > 0 for f in feeds)


def test_frame_feeds_carry_the_reference_identity_state(tiny_model, photos_dir):
    """One feed per driving frame, with the texture and adaptive parameters the PyTorch reference
    computes for the clip's source frame (what a correct identity graph produces)."""
    clips = photo_clips(2, 2, seed=5, photos_dir=photos_dir)
    feeds = frame_feeds(tiny_model, clips)
    assert len(feeds) == 4 and all(set(f) == {"keypoints", "texture", "adaptive_params"} for f in feeds)
    for i, clip in enumerate(clips):
        state = tiny_model.init_identity(clip.image[None], clip.keypoints[None])
        for k in range(2):
            feed = feeds[2 * i + k]
            np.testing.assert_array_equal(feed["keypoints"], clip.drivers[k][None].numpy())
            np.testing.assert_allclose(feed["texture"], state.enhanced_texture.numpy(), rtol=0, atol=1e-6)
            np.testing.assert_allclose(feed["adaptive_params"], pack_adaptive_params(state.adaptive_params).numpy(),
                                       rtol=0, atol=1e-6)
    assert not np.array_equal(feeds[0]["texture"], feeds[2]["texture"])  # each clip its own identity


def write_sequence(root, seq: tuple[str, str, str], crops, mask: bool = True) -> None:
    """One sequence in the official layout, a frame per crop."""
    for kind in ("imgs", "keypoints", "segs"):
        (root / kind / "test" / "/".join(seq)).mkdir(parents=True)
    for i, crop in enumerate(crops):
        pixels = ((crop.image.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / "test" / "/".join(seq) / f"{i:04d}.jpg", quality=95)
        points = (crop.keypoints.numpy().reshape(68, 2) / 2 + 0.5) * 256
        np.save(root / "keypoints" / "test" / "/".join(seq) / f"{i:04d}.npy", points)
    if mask:
        Image.fromarray(np.full((256, 256), 255, np.uint8)).save(root / "segs" / "test" / "/".join(seq) / "0000.png")


def test_official_dataset_layout(photos_dir, tmp_path):
    """DATA_ROOT/{imgs,keypoints,segs}/test/PERSON/VIDEO/SEQ/FRAME.{jpg,npy,png}; keypoints are
    pixels divided by the image width, as the official loader does."""
    crops = augmented_crops(load_face_photos(photos_dir), 3, seed=9)
    write_sequence(tmp_path, ("id00001", "video1", "00001"), crops)
    clips = dataset_clips(tmp_path, frames=4)
    assert len(clips) == 1
    clip = clips[0]
    assert clip.identity == "id00001/video1/00001"
    torch.testing.assert_close(clip.keypoints, crops[0].keypoints, rtol=0, atol=1e-5)
    torch.testing.assert_close(clip.drivers, torch.stack([c.keypoints for c in crops[1:]]), rtol=0, atol=1e-5)
    assert clip.mask is not None and float(clip.mask.min()) == 1.0
    assert float((clip.image - crops[0].image).abs().mean()) < 0.05  # JPEG round trip of the same crop
    with pytest.raises(InputError, match="imgs/train"):
        dataset_clips(tmp_path, split="train")


def test_golden_and_calibration_sets_never_share_a_clip(photos_dir, tmp_path):
    """From a dataset, the golden set takes the first sequences and calibration the rest; with too
    few sequences the export stops instead of calibrating on the golden set."""
    crops = augmented_crops(load_face_photos(photos_dir), 3, seed=9)
    write_sequence(tmp_path, ("id00001", "video1", "00001"), crops)
    config = ExportConfig(out=tmp_path / "bundle", data_root=tmp_path, golden_identities=1, calibration_identities=1,
                          golden_frames=2, calibration_frames=2)
    with pytest.raises(ExportError, match="usable sequence"):
        DataSets.load(config, image_size=256)
    write_sequence(tmp_path, ("id00002", "video1", "00001"), crops[::-1], mask=False)
    data = DataSets.load(config, image_size=256)
    assert data.golden_identities == ["id00001"] and data.calibration_identities == ["id00002"]  # by person
    assert [c.identity for c in data.golden] == ["id00001/video1/00001"]
    assert data.describe()["calibration"] == {"clips": 1, "frames_per_clip": 2, "identities": data.calibration_identities}
    # from the photos: other seeds, so other augmentations of the faces
    photos = DataSets.load(ExportConfig(out=tmp_path / "b2", golden_identities=2, calibration_identities=2,
                                        golden_frames=1, calibration_frames=1), image_size=64)
    assert photos.golden[0].image.shape == (3, 64, 64)
    assert all(not torch.equal(g.image, c.image) for g in photos.golden for c in photos.calibration)
    assert photos.golden_identities == ["source"] and photos.calibration_identities == ["grace_hopper", "target"]
