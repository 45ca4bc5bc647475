"""Calibration and golden data: augmented photos and the official dataset layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bilayer_mobile.export.calibration import dataset_clips, identity_feeds, photo_clips
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


def test_official_dataset_layout(photos_dir, tmp_path):
    """DATA_ROOT/{imgs,keypoints,segs}/test/PERSON/VIDEO/SEQ/FRAME.{jpg,npy,png}; keypoints are
    pixels divided by the image width, as the official loader does."""
    crops = augmented_crops(load_face_photos(photos_dir), 3, seed=9)
    seq = ("id00001", "video1", "00001")
    for kind in ("imgs", "keypoints", "segs"):
        (tmp_path / kind / "test" / "/".join(seq)).mkdir(parents=True)
    for i, crop in enumerate(crops):
        pixels = ((crop.image.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / "test" / "/".join(seq) / f"{i:04d}.jpg", quality=95)
        points = (crop.keypoints.numpy().reshape(68, 2) / 2 + 0.5) * 256
        np.save(tmp_path / "keypoints" / "test" / "/".join(seq) / f"{i:04d}.npy", points)
    Image.fromarray(np.full((256, 256), 255, np.uint8)).save(tmp_path / "segs" / "test" / "/".join(seq) / "0000.png")
    clips = dataset_clips(tmp_path, frames=4)
    assert len(clips) == 1
    clip = clips[0]
    torch.testing.assert_close(clip.keypoints, crops[0].keypoints, rtol=0, atol=1e-5)
    torch.testing.assert_close(clip.drivers, torch.stack([c.keypoints for c in crops[1:]]), rtol=0, atol=1e-5)
    assert clip.mask is not None and float(clip.mask.min()) == 1.0
    assert float((clip.image - crops[0].image).abs().mean()) < 0.05  # JPEG round trip of the same crop
    with pytest.raises(InputError, match="imgs/train"):
        dataset_clips(tmp_path, split="train")
