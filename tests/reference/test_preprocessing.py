"""Preprocessing of the reference against the official code and real photos.

- stickmen: pixel-identical to the official `draw_stickmen` output stored in golden_tiny;
- crops of the real photos: the official `infer.py` geometry, recomputed here independently;
- keypoint normalisation, image loading, landmark detection (dlib) and the face-sample helpers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bilayer_mobile.reference.errors import InputError, NoFaceError
from bilayer_mobile.reference.face_samples import (
    FLIP_PERMUTATION,
    FacePhoto,
    augmented_crops,
    flip_photo,
    perturb_keypoints,
)
from bilayer_mobile.reference.landmarks import detect_landmarks
from bilayer_mobile.reference.preprocessing import (
    STICKMAN_PARTS,
    crop_face,
    draw_stickmen,
    image_to_tensor,
    load_rgb,
    normalise_keypoints,
    tensor_to_image,
)

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
GOLDEN_NPZ = SHARED / "spec" / "golden_tiny" / "official_outputs.npz"
PHOTOS = {name: SHARED / "data" / f"{name}.jpg" for name in ("source", "target")}

BACKGROUND = (1 / 255 - 0.5) * 2  # the official canvas is filled with 1, not 0


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def golden_stickmen() -> dict[str, np.ndarray]:
    """Only the keypoint/stickman arrays of the official outputs (the file is 34 MB)."""
    if not GOLDEN_NPZ.is_file():
        pytest.fail(f"{GOLDEN_NPZ} is missing: the tests need ../shared/spec beside the project")
    with np.load(GOLDEN_NPZ) as data:
        return {k: data[k] for k in ("source_kp", "source_stickman", "target_kp", "target_stickmen")}


@pytest.fixture(scope="module")
def photos() -> dict[str, FacePhoto]:
    """The two real photos with their detected landmarks (detected once per module: ~1 s each)."""
    out = {}
    for name, path in PHOTOS.items():
        if not path.is_file():
            pytest.fail(f"{path} is missing: the tests need ../shared/data beside the project")
        image = load_rgb(path)
        out[name] = FacePhoto(image, detect_landmarks(image), name)
    return out


def _as_uint8_colours(stickmen: torch.Tensor | np.ndarray) -> set[tuple[int, int, int]]:
    x = stickmen.numpy() if isinstance(stickmen, torch.Tensor) else stickmen
    rgb = np.rint((x.astype(np.float64) / 2 + 0.5) * 255).astype(np.int64)
    return {tuple(int(v) for v in c) for c in np.unique(rgb.transpose(0, 2, 3, 1).reshape(-1, 3), axis=0)}


# ------------------------------------------------------------------------------ stickmen
@pytest.mark.parametrize("kp_key, stickman_key", [("source_kp", "source_stickman"), ("target_kp", "target_stickmen")])
def test_stickmen_pixel_identical_to_official(golden_stickmen, kp_key, stickman_key):
    keypoints = torch.from_numpy(golden_stickmen[kp_key])
    expected = golden_stickmen[stickman_key]
    drawn = draw_stickmen(keypoints, 256)
    assert drawn.dtype == torch.float32
    assert tuple(drawn.shape) == expected.shape
    assert np.array_equal(drawn.numpy(), expected), (
        f"{int((drawn.numpy() != expected).any(1).sum())} pixels differ from the official stickmen"
    )


def test_stickmen_background_and_colours(golden_stickmen):
    keypoints = torch.from_numpy(np.concatenate([golden_stickmen["source_kp"], golden_stickmen["target_kp"]]))
    drawn = draw_stickmen(keypoints, 256)
    values, counts = torch.unique(drawn, return_counts=True)
    background = float(values[counts.argmax()])
    assert background == pytest.approx(BACKGROUND, abs=1e-7)
    assert background == pytest.approx(-0.99215686, abs=1e-7)
    # the corners are far from any face
    assert torch.all(drawn[:, :, 0, 0] == background) and torch.all(drawn[:, :, -1, -1] == background)

    part_colours = {colour for _, _, colour in STICKMAN_PARTS}
    assert part_colours == {
        (255, 255, 255),  # jaw
        (255, 0, 0),  # brow
        (0, 255, 0),  # brow
        (0, 0, 255),  # nose and nostrils
        (255, 0, 255),  # eye
        (0, 255, 255),  # eye
        (255, 255, 0),  # lips
    }
    # No antialiasing: only the canvas value 1 and the 7 part colours, each of them visible, in
    # every stickman; the same set as the official drawings.
    for i in range(len(drawn)):
        assert _as_uint8_colours(drawn[i : i + 1]) == part_colours | {(1, 1, 1)}
    official = np.concatenate([golden_stickmen["source_stickman"], golden_stickmen["target_stickmen"]])
    assert _as_uint8_colours(official) == part_colours | {(1, 1, 1)}


def test_stickmen_truncate_coordinates_and_draw_in_array_channel_order():
    """A single red brow segment: int32((p+1)/2*S) truncates, colours are not BGR-swapped."""
    size = 64
    pixels = np.full((68, 2), -5.0)  # everything else far outside the canvas
    pixels[17:22] = [[10.9, 30.9], [20.9, 30.9], [30.9, 30.9], [40.9, 30.9], [50.9, 30.9]]
    kp = torch.from_numpy((pixels / size - 0.5) * 2).float().reshape(1, 136)
    drawn = draw_stickmen(kp, size, thickness=1)[0]
    rgb = np.rint((drawn.numpy() / 2 + 0.5) * 255).astype(int)
    red = (rgb[0] == 255) & (rgb[1] == 0) & (rgb[2] == 0)
    ys, xs = np.nonzero(red)
    assert set(ys.tolist()) == {30}, "row 30.9 must be truncated to 30"
    assert xs.min() == 10 and xs.max() == 50


def test_stickmen_reject_bad_keypoints():
    with pytest.raises(InputError, match="NaN"):
        draw_stickmen(torch.full((1, 136), float("nan")))
    with pytest.raises(InputError, match="136"):
        draw_stickmen(torch.zeros(1, 68, 2))


# ------------------------------------------------------------------------------ crops of real photos
def _official_keypoints(landmarks: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """infer.py's crop geometry, written out again: (keypoints [136], size, centre, side)."""
    pose = landmarks.astype(np.float32).copy()
    center = ((pose.min(0) + pose.max(0)) / 2).round().astype(int)
    size = int(max(pose[:, 0].max() - pose[:, 0].min(), pose[:, 1].max() - pose[:, 1].min()))
    center[1] -= size // 6
    side = 2 * size
    pose -= center - size
    pose = pose / float(side)
    return ((pose - 0.5) * 2).reshape(-1), size, center, side


@pytest.mark.parametrize("name", ["source", "target"])
def test_crop_face_geometry_on_real_photo(photos, name):
    photo = photos[name]
    landmarks = photo.landmarks
    crop = crop_face(photo.image, landmarks, 256)

    assert tuple(crop.image.shape) == (3, 256, 256) and crop.image.dtype == torch.float32
    assert crop.image.min() >= -1 and crop.image.max() <= 1
    assert tuple(crop.keypoints.shape) == (136,) and crop.keypoints.dtype == torch.float32
    assert crop.keypoints.min() >= -1 and crop.keypoints.max() <= 1

    # the box: a square of side 2*int(max(bbox w, h))
    width, height = np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1])
    size = int(max(width, height))
    left, top, right, bottom = crop.box
    assert right - left == bottom - top == 2 * size

    # the keypoints: (pose - (center - size)) / side mapped to [-1, 1], recomputed in float64 ...
    center = np.round((landmarks.min(0).astype(np.float64) + landmarks.max(0)) / 2)
    center[1] -= size // 6
    assert (left, top) == (center[0] - size, center[1] - size)
    by_hand = ((landmarks.astype(np.float64) - (center - size)) / (2 * size) - 0.5) * 2
    np.testing.assert_allclose(crop.keypoints.numpy().reshape(68, 2), by_hand, rtol=0, atol=1e-6)
    # ... and bit-identical to the official float32 arithmetic
    official, official_size, official_center, side = _official_keypoints(landmarks)
    assert official_size == size and side == 2 * size and tuple(official_center - size) == (left, top)
    assert np.array_equal(crop.keypoints.numpy(), official)

    # the face lands where infer.py puts it: centred horizontally, its bbox centre size//6 px
    # below the crop centre (the crop centre is moved up), the larger bbox side half the crop
    kp = crop.keypoints.numpy().reshape(68, 2)
    bbox_centre = (kp.min(0) + kp.max(0)) / 2
    assert abs(bbox_centre[0]) <= 1.0 / size
    assert bbox_centre[1] == pytest.approx((size // 6) / size, abs=1.0 / size)
    assert 0.15 < bbox_centre[1] < 0.18
    assert max(np.ptp(kp[:, 0]), np.ptp(kp[:, 1])) == pytest.approx(1.0, abs=1.0 / size)
    assert abs(kp[:, 0].mean()) < 0.1 and 0.0 < kp[:, 1].mean() < 0.25


@pytest.mark.parametrize("name", ["source", "target"])
def test_crop_face_pixels_match_padded_slice(photos, name):
    """The crop is the box of the photo zero-padded outside (black), PIL-bicubic resized."""
    photo = photos[name]
    crop = crop_face(photo.image, photo.landmarks, 256)
    left, top, right, bottom = crop.box
    h, w = photo.image.shape[:2]
    pad = max(0, -left, -top, right - w, bottom - h)
    padded = np.zeros((h + 2 * pad, w + 2 * pad, 3), np.uint8)
    padded[pad : pad + h, pad : pad + w] = photo.image
    window = padded[top + pad : bottom + pad, left + pad : right + pad]
    expected = np.asarray(Image.fromarray(window).resize((256, 256), Image.BICUBIC))
    assert np.array_equal(tensor_to_image(crop.image), expected)


def test_crop_outside_the_photo_is_black(photos):
    """target.jpg is 960 px wide; its crop box reaches past the right edge."""
    photo = photos["target"]
    crop = crop_face(photo.image, photo.landmarks, 256)
    left, _, right, _ = crop.box
    width = photo.image.shape[1]
    assert right > width, "the test needs a crop box that leaves the photo"
    first_outside = int(np.ceil((width - left) / (right - left) * 256))
    black = crop.image[:, :, first_outside + 3 :]  # beyond the bicubic kernel's reach
    assert black.shape[-1] > 0 and torch.all(black == -1)
    assert crop.image[:, :, : first_outside - 3].max() > -0.5  # the photo itself is not black


def test_crop_face_rejects_bad_landmarks(photos):
    image = photos["source"].image
    with pytest.raises(InputError, match="NaN"):
        crop_face(image, np.full((68, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="68, 2"):
        crop_face(image, np.zeros((5, 2), np.float32))
    with pytest.raises(InputError, match="2 pixels"):
        crop_face(image, np.full((68, 2), 100.0, np.float32))


# ------------------------------------------------------------------------------ normalise_keypoints
def test_normalise_keypoints_interleaving_and_range():
    points = np.zeros((68, 2), np.float32)
    points[0] = (0, 0)
    points[1] = (100, 100)
    points[2] = (25, 75)
    points[3] = (50, 0)
    kp = normalise_keypoints(points, 100)
    assert tuple(kp.shape) == (136,) and kp.dtype == torch.float32
    assert kp[:8].tolist() == [-1.0, -1.0, 1.0, 1.0, -0.5, 0.5, 0.0, -1.0]  # x0, y0, x1, y1, ...
    # against a generic interleave
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 256, (68, 2)).astype(np.float32)
    kp = normalise_keypoints(points, 256).numpy()
    np.testing.assert_allclose(kp[0::2], points[:, 0] / 128 - 1, atol=1e-6)
    np.testing.assert_allclose(kp[1::2], points[:, 1] / 128 - 1, atol=1e-6)


def test_normalise_keypoints_rejects_bad_input():
    points = np.zeros((68, 2), np.float32)
    points[10, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        normalise_keypoints(points, 256)
    points[10, 1] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        normalise_keypoints(points, 256)
    with pytest.raises(InputError, match="68, 2"):
        normalise_keypoints(np.zeros(136, np.float32), 256)


def test_image_tensor_round_trip():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    tensor = image_to_tensor(image)
    assert tuple(tensor.shape) == (3, 7, 5)
    assert float(tensor.min()) >= -1 and float(tensor.max()) <= 1
    assert torch.equal(image_to_tensor(np.array([[[0, 255, 1]]], np.uint8)).flatten(),
                       torch.tensor([-1.0, 1.0, (1 / 255 - 0.5) * 2], dtype=torch.float32))
    assert np.array_equal(tensor_to_image(tensor), image)
    with pytest.raises(InputError, match="RGB"):
        image_to_tensor(image[..., :2])


# ------------------------------------------------------------------------------ landmark detection
@pytest.mark.parametrize("name", ["source", "target"])
def test_landmarks_are_a_plausible_face(photos, name):
    photo = photos[name]
    lm = photo.landmarks
    h, w = photo.image.shape[:2]
    assert lm.shape == (68, 2) and lm.dtype == np.float32 and np.isfinite(lm).all()
    assert (lm[:, 0] >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] >= 0).all() and (lm[:, 1] < h).all()
    bw, bh = np.ptp(lm[:, 0]), np.ptp(lm[:, 1])
    assert 0.15 * w < bw < 0.9 * w and 0.7 < bh / bw < 1.4  # a face-sized, roughly square box
    centre = (lm.min(0) + lm.max(0)) / 2
    assert 0.2 * w < centre[0] < 0.8 * w and 0.2 * h < centre[1] < 0.8 * h

    # anatomy in the iBUG 68-point layout (image coordinates, subject facing the camera)
    right_eye, left_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    nose_tip, mouth, chin = lm[30], lm[48:68].mean(0), lm[8]
    brows = lm[17:27].mean(0)
    assert lm[0, 0] < nose_tip[0] < lm[16, 0]  # jaw goes left to right
    assert right_eye[0] < nose_tip[0] < left_eye[0]
    assert brows[1] < right_eye[1] < nose_tip[1] < mouth[1] < chin[1]
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # eye corners
    assert lm[48, 0] < lm[54, 0]  # mouth corners


@pytest.mark.parametrize("name", ["source", "target"])
def test_landmarks_on_mirrored_photo(photos, name):
    photo = photos[name]
    width = photo.image.shape[1]
    flipped = detect_landmarks(np.ascontiguousarray(photo.image[:, ::-1]))
    mirrored = flipped.copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    mirrored = mirrored[FLIP_PERMUTATION]
    error = np.linalg.norm(mirrored - photo.landmarks, axis=1)
    assert error.mean() < 4.0, f"mean error {error.mean():.2f} px"
    assert error.max() < 15.0
    # the permutation matters: without it, points land on the other side of the face
    unpermuted = flipped.copy()
    unpermuted[:, 0] = width - 1 - unpermuted[:, 0]
    assert np.linalg.norm(unpermuted - photo.landmarks, axis=1).mean() > 20


@pytest.mark.parametrize("kind", ["grey", "noise"])
def test_no_face_raises(kind):
    if kind == "grey":
        image = np.full((480, 640, 3), 128, np.uint8)
    else:
        image = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face") as info:
        detect_landmarks(image)
    assert isinstance(info.value, InputError)  # the CLI maps every InputError to exit code 2


# ------------------------------------------------------------------------------ load_rgb
def test_load_rgb_reads_rgb_exactly(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "rgb.png")
    image = load_rgb(tmp_path / "rgb.png")
    assert image.dtype == np.uint8 and image.shape == (9, 11, 3)
    assert np.array_equal(image, pixels)
    assert load_rgb(PHOTOS["source"]).shape == (1280, 1024, 3)


@pytest.mark.parametrize("mode, channels", [("L", "1 channel"), ("RGBA", "4 channels"), ("LA", "2 channels")])
def test_load_rgb_rejects_other_modes(tmp_path, mode, channels):
    path = tmp_path / f"image_{mode}.png"
    Image.new(mode, (16, 12)).save(path)
    with pytest.raises(InputError, match=rf"mode {mode} \({channels}\)") as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert "RGB" in str(info.value)


def test_load_rgb_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="does not exist") as info:
        load_rgb(missing)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 10)
    with pytest.raises(InputError, match="cannot read image"):
        load_rgb(garbage)
    with pytest.raises(InputError, match="does not exist"):
        load_rgb(tmp_path)  # a directory is not an image file


# ------------------------------------------------------------------------------ face_samples
def test_flip_permutation_is_an_involution():
    perm = np.asarray(FLIP_PERMUTATION)
    assert perm.shape == (68,)
    assert sorted(perm.tolist()) == list(range(68))
    assert np.array_equal(perm[perm], np.arange(68))
    # pairs of the 68-point layout that must swap / stay
    assert perm[0] == 16 and perm[8] == 8  # jaw ends swap, chin stays
    assert perm[36] == 45 and perm[39] == 42  # outer / inner eye corners swap
    assert perm[30] == 30 and perm[33] == 33  # nose tip and the centre of the nostrils stay
    assert perm[48] == 54 and perm[51] == 51 and perm[57] == 57 and perm[62] == 62 and perm[66] == 66


def test_flip_photo_twice_is_identity(photos):
    photo = photos["source"]
    once = flip_photo(photo)
    assert np.array_equal(once.image, photo.image[:, ::-1])
    twice = flip_photo(once)
    assert np.array_equal(twice.image, photo.image)
    assert np.array_equal(twice.landmarks, photo.landmarks)
    # the subject's right eye (36-41) stays on the image's left after the flip
    assert once.landmarks[36:42, 0].mean() < once.landmarks[42:48, 0].mean()


def test_augmented_crops_deterministic_per_seed(photos):
    faces = [photos["source"], photos["target"]]
    a = augmented_crops(faces, 3, seed=5)
    b = augmented_crops(faces, 3, seed=5)
    c = augmented_crops(faces, 3, seed=6)
    assert len(a) == len(b) == len(c) == 3
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image) and torch.equal(x.keypoints, y.keypoints)
        assert tuple(x.image.shape) == (3, 256, 256) and tuple(x.keypoints.shape) == (136,)
        assert float(x.image.min()) >= -1 and float(x.image.max()) <= 1
        assert torch.isfinite(x.keypoints).all() and float(x.keypoints.abs().max()) < 1.5
    assert any(not torch.equal(x.image, z.image) for x, z in zip(a, c))
    assert any(not torch.equal(x.keypoints, z.keypoints) for x, z in zip(a, c))


def test_perturb_keypoints_deterministic_per_seed(photos):
    base = crop_face(photos["source"].image, photos["source"].landmarks).keypoints
    a = perturb_keypoints(base, 6, seed=11)
    b = perturb_keypoints(base, 6, seed=11)
    c = perturb_keypoints(base, 6, seed=12)
    assert tuple(a.shape) == (6, 136) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a perturbation of the pose, not a new one: every row near the base, no two rows equal
    assert float((a - base).abs().max()) < 0.5
    assert float((a - base).abs().mean()) > 1e-3
    assert len({tuple(row.tolist()) for row in a}) == 6
