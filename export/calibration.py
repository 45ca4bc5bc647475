"""Real-face data for quantization calibration, golden vectors and parity checks.

Two sources:
- the packaged photos (`reference/photos`: golden `GOLDEN_PHOTOS`, calibration `CALIBRATION_PHOTOS`), augmented the way a user's video varies them
  (`reference.face_samples`: head roll, mirror, framing, lighting; driving poses from landmark
  perturbations);
- the official dataset layout, for users' own data:
  `DATA_ROOT/imgs/{train,test}/PERSON/VIDEO/SEQ/FRAME.jpg` with `keypoints/.../FRAME.npy`
  (68 x 2 pixels, divided by the image width as the official loader does) and optional
  `segs/.../FRAME.png` masks. The first frame of a sequence is the source, the rest drive it.

Calibration and evaluation use different seeds (or different sequences), so a parity figure is
never measured on the data a quantizer was calibrated on (`DataSets`); when the data run short
the export stops with an error instead of calibrating on the golden set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..reference.errors import InputError
from .errors import ExportError
from .graphs import pack_adaptive_params
from ..reference.face_samples import DEFAULT_MODEL_PHOTOS, augmented_crops, load_face_photos, perturb_keypoints
from ..reference.model import BilayerModel
from ..reference.preprocessing import draw_stickmen, image_to_tensor, load_landmarks_npy, load_rgb, normalise_keypoints


@dataclass
class FaceClip:
    """One identity: a source crop and the keypoints of the frames that drive it."""

    image: torch.Tensor  # [3, S, S] in [-1, 1]
    keypoints: torch.Tensor  # [136]
    drivers: torch.Tensor  # [T, 136]
    mask: torch.Tensor | None = None  # [1, S, S] in [0, 1]
    identity: str = ""  # the photo or dataset sequence it comes from


def photo_clips(count: int, frames: int, seed: int, photos_dir: Path | str | tuple[str, ...] = DEFAULT_MODEL_PHOTOS,
                image_size: int = 256) -> list[FaceClip]:
    """`count` augmented identities from photos, each with `frames` perturbed driving poses."""
    photos = load_face_photos(photos_dir)
    crops = augmented_crops(photos, count, seed=seed, image_size=image_size)
    return [FaceClip(c.image, c.keypoints, perturb_keypoints(c.keypoints, frames, seed=seed * 1000 + i),
                     identity=photos[i % len(photos)].name)
            for i, c in enumerate(crops)]


def dataset_clips(data_root: Path | str, split: str = "test", max_clips: int = 16, frames: int = 4,
                  image_size: int = 256) -> list[FaceClip]:
    """Clips from the official dataset layout (see the module docstring).

    A missing, empty or corrupt frame, keypoint file or mask raises `InputError` naming it.
    """
    from ..reference.user_files import open_image

    root = Path(data_root)
    imgs = root / "imgs" / split
    if not imgs.is_dir():
        raise InputError(f"{imgs} does not exist; expected DATA_ROOT/imgs/{split}/PERSON/VIDEO/SEQ/FRAME.jpg")
    clips = []
    for seq in sorted(p for p in imgs.glob("*/*/*") if p.is_dir()):
        frame_files = sorted(seq.glob("*.jpg"))[: frames + 1]
        if len(frame_files) < 2:
            continue
        rel = seq.relative_to(imgs)
        keypoints, images = [], []
        for f in frame_files:
            image = load_rgb(f, "calibration frame")
            points = load_landmarks_npy(root / "keypoints" / split / rel / (f.stem + ".npy"))
            keypoints.append(normalise_keypoints(points, image.shape[1]))
            images.append(image)
        source = images[0]
        if source.shape[:2] != (image_size, image_size):
            from PIL import Image

            source = np.asarray(Image.fromarray(source).resize((image_size, image_size), Image.BICUBIC))
        mask = None
        seg = root / "segs" / split / rel / (frame_files[0].stem + ".png")
        if seg.is_file():
            from PIL import Image

            m = open_image(seg, "segmentation mask", InputError).convert("L").resize((image_size, image_size),
                                                                                  Image.BILINEAR)
            mask = torch.from_numpy(np.asarray(m, np.float32) / 255.0)[None]
        clips.append(FaceClip(image_to_tensor(source), keypoints[0], torch.stack(keypoints[1:]), mask, str(rel)))
        if len(clips) >= max_clips:
            break
    if not clips:
        raise InputError(f"no sequence under {imgs} has 2+ frames with keypoints")
    return clips


# Parity is measured on one identity, calibration uses the others: a figure never comes from a
# face the quantizer saw. The baked frame graph bakes the first golden clip (source.jpg).
GOLDEN_PHOTOS = ("source.jpg",)
CALIBRATION_PHOTOS = ("target.jpg", "grace_hopper.jpg")


def _identities(clips: list[FaceClip]) -> list[str]:
    return sorted({c.identity for c in clips})


@dataclass
class DataSets:
    """The golden set (parity is measured on it) and the calibration set (int8 ranges), never
    the same clips, with the identities each one used (recorded in the manifest)."""

    golden: list[FaceClip]
    calibration: list[FaceClip]
    source: str  # where the clips come from
    golden_identities: list[str] = field(default_factory=list)
    calibration_identities: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, config, image_size: int) -> "DataSets":
        """Both sets for an `ExportConfig`: from `config.data_root` (dataset layout; identities
        are its PERSON folders) or the packaged photos (`GOLDEN_PHOTOS`, `CALIBRATION_PHOTOS`)."""
        if config.data_root:
            return cls._from_dataset(config, image_size)
        golden = photo_clips(config.golden_identities, config.golden_frames, config.seed, GOLDEN_PHOTOS,
                             image_size=image_size)
        calibration = photo_clips(config.calibration_identities, config.calibration_frames, config.seed + 1,
                                  CALIBRATION_PHOTOS, image_size=image_size)
        return cls(golden, calibration, "packaged photos, augmented", _identities(golden), _identities(calibration))

    @classmethod
    def _from_dataset(cls, config, image_size: int) -> "DataSets":
        wanted = config.golden_identities + config.calibration_identities
        clips = dataset_clips(config.data_root, max_clips=4 * wanted,
                              frames=max(config.calibration_frames, config.golden_frames), image_size=image_size)
        person = lambda clip: clip.identity.split("/")[0]
        people = list(dict.fromkeys(person(c) for c in clips))
        if len(people) > 1:
            # golden from the first people, calibration from the others: no shared identity
            golden_people = set()
            for p in people[:-1]:
                golden_people.add(p)
                if sum(person(c) in golden_people for c in clips) >= config.golden_identities:
                    break
            golden = [c for c in clips if person(c) in golden_people][: config.golden_identities]
            calibration = [c for c in clips if person(c) not in golden_people][: config.calibration_identities]
        else:  # one person: different sequences at least
            golden, calibration = clips[: config.golden_identities], clips[config.golden_identities: wanted]
        if not calibration:
            raise ExportError(
                f"{config.data_root} has {len(clips)} usable sequence(s); the golden set takes "
                f"{config.golden_identities} and calibration needs at least one more (and should have "
                f"{config.calibration_identities}): add sequences, or export without --data-root")
        return cls(golden, calibration, str(config.data_root), sorted({person(c) for c in golden}),
                   sorted({person(c) for c in calibration}))

    def describe(self) -> dict:
        """The manifest's record of both sets."""
        entry = lambda clips, names: {"clips": len(clips), "frames_per_clip": int(clips[0].drivers.shape[0]),
                                      "identities": names}
        return {"source": self.source, "golden": entry(self.golden, self.golden_identities),
                "calibration": entry(self.calibration, self.calibration_identities)}


def identity_feeds(clips: list[FaceClip], image_size: int = 256) -> list[dict[str, np.ndarray]]:
    """Inputs of the identity graph, one feed per clip (batch 1)."""
    feeds = []
    for c in clips:
        mask = c.mask if c.mask is not None else torch.ones(1, image_size, image_size)
        feeds.append({
            "source_image": c.image[None].numpy(),
            "source_stickman": draw_stickmen(c.keypoints[None], image_size).numpy(),
            "source_keypoints": c.keypoints[None].numpy(),
            "source_mask": mask[None].numpy().astype(np.float32),
        })
    return feeds


def identity_states(model: BilayerModel, clips: list[FaceClip]) -> list:
    """The PyTorch reference's identity state of each clip's source frame."""
    return [model.init_identity(c.image[None], c.keypoints[None], mask=None if c.mask is None else c.mask[None])
            for c in clips]


def calibration_frame_feeds(model: BilayerModel, clips: list[FaceClip]) -> list[dict[str, np.ndarray]]:
    """Frame-graph feeds for int8 calibration, with the *base* texture: the enhancer is skipped.

    The texture reaches the frame graph's output only through the warp (`lowfreq + warp(texture,
    uv)`), and no quantized op (Conv / MatMul / Gemm, CONV_2D / FULLY_CONNECTED) reads the
    texture or the image, so the calibrated ranges, and the int8 artifacts, are the same with
    either texture; skipping the enhancer saves ~250 GMAC per calibration identity.
    """
    had_enhancer = model.has_enhancer
    model.has_enhancer = False
    try:
        return frame_feeds(model, clips)
    finally:
        model.has_enhancer = had_enhancer


def frame_feeds(model: BilayerModel, clips: list[FaceClip], states: list | None = None) -> list[dict[str, np.ndarray]]:
    """Inputs of the frame graph (keypoints, texture, adaptive_params), one feed per driving frame.

    The identity state is computed by the PyTorch reference (or given: `identity_states` of the
    same clips), so frame-graph parity is measured on exactly the texture and parameters a
    correct identity graph produces.
    """
    states = identity_states(model, clips) if states is None else states
    feeds = []
    for c, state in zip(clips, states, strict=True):
        texture = state.enhanced_texture if state.enhanced_texture is not None else state.texture
        flat = pack_adaptive_params(state.adaptive_params)
        for kp in c.drivers:
            feeds.append({"keypoints": kp[None].numpy(), "texture": texture.numpy(),
                          "adaptive_params": flat.numpy()})
    return feeds
