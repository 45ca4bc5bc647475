"""Readers of user files (`reference.user_files`) and the loaders that use them, on bad content.

Every bad file must give the chosen error class with a one-line message that names the file;
the content cases are empty, binary, wrong encoding, truncated and another format under the
expected name.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bilayer_mobile.reference import CheckpointError, InputError, load_official_checkpoint
from bilayer_mobile.reference.config import read_args_txt
from bilayer_mobile.reference.errors import BilayerError
from bilayer_mobile.reference.preprocessing import load_landmarks_npy, load_rgb
from bilayer_mobile.reference.user_files import (describe_content, load_npy_array, load_torch_file, open_image,
                                                 read_json_object, read_text)


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def failure(error_type, call, *args, **kwargs) -> str:
    """The message of the `error_type` that `call` raises; it must be one line."""
    with pytest.raises(error_type) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def jpeg_bytes(size=(32, 24)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(size=(32, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image.convert(mode).save(buf, "PNG")
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def torch_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


RANDOM = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------ describe_content
@pytest.mark.parametrize("head, kind", [
    (jpeg_bytes()[:64], "a JPEG image"),
    (png_bytes()[:64], "a PNG image"),
    (b"\x93NUMPY\x01\x00", "a NumPy .npy array"),
    (b"PK\x03\x04rest", "a zip archive"),
    (b"%PDF-1.4\n", "a PDF document"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00", "an HEIC photo"),
    (b"\x80\x02}q\x00.", "a Python pickle"),
    (b"key: value\n", "a text file"),
    (b"BMW owners: 3\n", "a text file"),  # starts like a BMP, but has no BMP header
    (b"BM\x46\x00\x00\x00\x00\x00\x00\x00\x36\x00", "a BMP image"),
    ("caf\u00e9".encode("utf-8")[:4], "a text file"),  # cut inside a character: still text
])
def test_describe_content(head, kind):
    assert describe_content(head) == kind


def test_describe_content_unknown_binary():
    assert describe_content(b"\x07\xfe\x00\x01\x02") is None


# ------------------------------------------------------------------------------ read_text
def test_read_text_accepts_utf8_and_drops_bom(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffname: caf\u00e9\n".encode("utf-8"))
    assert read_text(path, "notes") == "name: caf\u00e9\n"


def test_read_text_name_too_long(tmp_path):
    path = tmp_path / ("x" * 5000)
    message = failure(InputError, read_text, path, "notes")
    assert str(path) in message and "cannot be looked up (File name too long)" in message


def test_read_text_missing_and_directory(tmp_path):
    missing = tmp_path / "nope.txt"
    message = failure(InputError, read_text, missing, "notes")
    assert str(missing) in message and "does not exist" in message
    message = failure(InputError, read_text, tmp_path, "notes")
    assert str(tmp_path) in message and "directory" in message


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (b"  \n\t\n", "empty (only whitespace)"),
    (b"key: value\n\x00\x00\x01binary", "binary file (NUL byte at offset 11)"),
    (bytes(range(1, 9)) * 40, "binary file (control characters)"),
    ("a: 1\nname: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 2"),
    ("a: 1\n".encode("utf-16"), "UTF-16"),
    (png_bytes(), "a PNG image, not text"),
])
def test_read_text_rejects_bad_content(tmp_path, content, words):
    path = write(tmp_path / "args.txt", content)
    message = failure(CheckpointError, read_text, path, "args.txt", CheckpointError)
    assert message.startswith(f"cannot read args.txt {path}: ")
    assert words in message


def test_read_text_fix_replaces_default_advice(tmp_path):
    path = write(tmp_path / "a.txt", b"\xff\xd8 not utf8 \xe9")
    message = failure(InputError, read_text, path, "notes", fix="ask the author")
    assert message.endswith("; ask the author") and "save it as UTF-8" not in message


# ------------------------------------------------------------------------------ read_json_object
def test_read_json_object_returns_the_object(tmp_path):
    path = write(tmp_path / "m.json", json.dumps({"artifacts": [], "model": {}}).encode())
    assert read_json_object(path, "manifest", required=("artifacts", "model")) == {"artifacts": [], "model": {}}


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (RANDOM, "binary file"),
    ('{"name": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    (b'{"artifacts": [1, 2,', "not valid JSON (Expecting value at line 1 column 21)"),
    (b"[1, 2, 3]", "holds an array where a JSON object"),
    (b'"just a string"', "holds a string where a JSON object"),
    (b"null", "holds null where a JSON object"),
    (b'{"artifacts": []}', "lacks the required key 'model'"),
    (b'{"other": 1}', "lacks the required keys 'artifacts', 'model'"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_read_json_object_rejects_bad_content(tmp_path, content, words):
    path = write(tmp_path / "manifest.json", content)
    message = failure(InputError, read_json_object, path, "manifest", required=("artifacts", "model"))
    assert str(path) in message and words in message


# ------------------------------------------------------------------------------ load_npy_array
def test_load_npy_array_roundtrip(tmp_path):
    values = np.arange(136, dtype=np.float32)
    path = write(tmp_path / "kp.npy", npy_bytes(values))
    assert np.array_equal(load_npy_array(path, "keypoints"), values)


def test_load_npy_array_non_numeric_allowed_when_asked(tmp_path):
    path = write(tmp_path / "names.npy", npy_bytes(np.array(["a", "b"])))
    assert load_npy_array(path, "names", numeric=False).tolist() == ["a", "b"]


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, keypoints=np.zeros((68, 2)), extra=np.ones(3))
    return buf.getvalue()


GOOD_NPY = npy_bytes(np.zeros((68, 2), np.float32))


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (RANDOM, "not a .npy file"),
    (b"0.1 0.2 0.3\n" * 20, "a text file, not a .npy array"),
    (jpeg_bytes(), "a JPEG image, not a .npy array"),
    (npz_bytes(), "an .npz archive (arrays 'keypoints', 'extra'), not a single .npy array"),
    (npz_bytes()[:100], "a zip archive (a truncated .npz?)"),
    (GOOD_NPY[:-10], f"truncated ({len(GOOD_NPY) - 10} of {len(GOOD_NPY)} bytes for shape (68, 2))"),
    (GOOD_NPY[:20], "header is corrupt"),
    (GOOD_NPY[:10] + b"{'descr': garbage}" + b" " * 100 + b"\n", "header is corrupt"),
    (npy_bytes(np.array([{"a": 1}], dtype=object)), "Python objects (an object array)"),
    (npy_bytes(np.array(["x", "y"])), "<U1 values, not numbers"),
    (npy_bytes(np.zeros(3, np.complex64)), "complex64 values, not numbers"),
])
def test_load_npy_array_rejects_bad_content(tmp_path, content, words):
    path = write(tmp_path / "kp.npy", content)
    message = failure(InputError, load_npy_array, path, "keypoints")
    assert message.startswith(f"cannot read keypoints {path}: ")
    assert words in message


def test_load_npy_array_truncated_huge_claim_fails_before_allocating(tmp_path):
    # a header promising 8 TB must not be read (np.load would try to allocate it)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    path = write(tmp_path / "huge.npy", header.getvalue() + b"\x00" * 64)
    assert "truncated" in failure(InputError, load_npy_array, path, "keypoints")


def test_load_npy_array_error_class_is_the_callers(tmp_path):
    path = write(tmp_path / "kp.npy", b"")
    with pytest.raises(CheckpointError):
        load_npy_array(path, "tensor", CheckpointError)


def test_load_landmarks_npy_uses_the_reader(tmp_path):
    path = write(tmp_path / "kp.npy", RANDOM)
    message = failure(InputError, load_landmarks_npy, path)
    assert message.startswith(f"cannot read keypoints {path}: it is not a .npy file")


# ------------------------------------------------------------------------------ open_image / load_rgb
def test_open_image_decodes_fully(tmp_path):
    path = write(tmp_path / "a.png", png_bytes((20, 10)))
    image = open_image(path, "photo")
    assert image.size == (20, 10) and image.mode == "RGB"
    assert np.asarray(image).shape == (10, 20, 3)


def tiff_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, "TIFF")
    return buf.getvalue()


JPEG, PNG = jpeg_bytes((64, 64)), png_bytes((64, 64))


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (b"this is not a JPEG\n" * 10, "a text file, not an image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "a text file, not an image"),
    (RANDOM, "not an image in a format this tool reads"),
    (JPEG[: len(JPEG) // 2], "the JPEG image data is truncated"),
    (PNG[: len(PNG) // 2], "the PNG image data is truncated"),
    (tiff_bytes()[:-100], "the TIFF image data is truncated"),
    (JPEG[:20], "starts like a JPEG image but its header is cut short or corrupt"),
    (PNG[:30], "starts like a PNG image but its header is cut short or corrupt"),
    (b"%PDF-1.4\n%binary\n" + RANDOM, "a PDF document, not an image this tool can decode"),
    (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200, "an HEIC photo, not an image this tool can decode"),
    (GOOD_NPY, "a NumPy .npy array, not an image"),
])
def test_load_rgb_rejects_bad_content(tmp_path, content, words):
    path = write(tmp_path / "photo.jpg", content)
    message = failure(InputError, load_rgb, path)
    assert message.startswith(f"cannot read image {path}: ")
    assert words in message
    fix = message.rsplit("; ", 1)[1]
    assert "JPEG or PNG" in fix or "copy or write it again" in fix


def test_load_rgb_names_the_input(tmp_path):
    path = write(tmp_path / "frame.jpg", b"")
    assert failure(InputError, load_rgb, path, "calibration frame").startswith(f"cannot read calibration frame {path}")
    grey = write(tmp_path / "grey.png", png_bytes(mode="L"))
    assert failure(InputError, load_rgb, grey, "calibration frame").startswith(f"calibration frame {grey} has mode L")


def test_open_image_warnings_only_on_success(tmp_path, monkeypatch):
    # PIL warns about large images on open; on failure only the error must reach the user,
    # on success the warning is passed on
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)
    whole = write(tmp_path / "whole.jpg", JPEG)
    cut = write(tmp_path / "cut.jpg", JPEG[: len(JPEG) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError):
            open_image(cut, "photo")
    assert [str(w.message) for w in caught] == []
    with pytest.warns(Image.DecompressionBombWarning):
        open_image(whole, "photo")


def test_open_image_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)
    path = write(tmp_path / "big.jpg", JPEG)
    assert "too large to decode safely" in failure(InputError, open_image, path, "photo")


# ------------------------------------------------------------------------------ load_torch_file
def legacy_bytes(obj) -> bytes:
    return torch_bytes(obj, _use_new_zipfile_serialization=False)


STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
GOOD_PTH = torch_bytes(STATE)


def test_load_torch_file_loads_both_formats(tmp_path):
    for name, content in (("zip.pth", GOOD_PTH), ("legacy.pth", legacy_bytes(STATE))):
        state = load_torch_file(write(tmp_path / name, content), "checkpoint")
        assert set(state) == {"w", "b"} and torch.equal(state["w"], STATE["w"])


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (GOOD_PTH[: len(GOOD_PTH) // 2], "truncated or corrupt (its zip archive is incomplete)"),
    (GOOD_PTH[:100], "truncated or corrupt (its zip archive is incomplete)"),
    (b"not a checkpoint\n" * 8, "a text file, not a PyTorch file"),
    (RANDOM, "not a PyTorch file (neither a zip archive nor a pickle"),
    (jpeg_bytes(), "a JPEG image, not a PyTorch file"),
    (npz_bytes(), "a zip archive but not a PyTorch file (an .npz of NumPy arrays?)"),
    (torch_bytes(torch.nn.Linear(2, 2)), "refuses it: it pickles torch.nn.modules.linear.Linear, which is not a tensor"),
    (pickle.dumps(argparse.Namespace(lr=0.1), protocol=2), "refuses it: it pickles argparse.Namespace"),
    (pickle.dumps({"a": object}, protocol=4), "refuses it"),
    (legacy_bytes(STATE)[:300], "or a truncated file?"),
])
def test_load_torch_file_rejects_bad_content(tmp_path, content, words):
    path = write(tmp_path / "1_identity_embedder.pth", content)
    message = failure(CheckpointError, load_torch_file, path, "checkpoint")
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert words in message


def test_load_torch_file_refusal_says_how_to_fix(tmp_path):
    path = write(tmp_path / "model.pth", torch_bytes(torch.nn.Linear(2, 2)))
    message = failure(CheckpointError, load_torch_file, path, "checkpoint")
    assert "torch.save(net.state_dict(), path)" in message
    assert "\x1b" not in message  # torch's message carries ANSI bold codes


def test_load_torch_file_failure_emits_no_warnings(tmp_path):
    # torch warns about protocol-4 pickles before refusing them
    path = write(tmp_path / "p4.pth", pickle.dumps({"a": object}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):
            load_torch_file(path, "checkpoint")
    assert [str(w.message) for w in caught] == []


def test_load_torch_file_missing(tmp_path):
    message = failure(CheckpointError, load_torch_file, tmp_path / "nope.pth", "checkpoint")
    assert str(tmp_path / "nope.pth") in message and "does not exist" in message


# ------------------------------------------------------------------------------ the loaders of a run directory
@pytest.fixture
def run_copy(golden_run, tmp_path) -> Path:
    """The golden_tiny run with links to its checkpoints and a writable args.txt."""
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    for path in (golden_run / "checkpoints").iterdir():
        os.symlink(path, run / "checkpoints" / path.name)
    shutil.copyfile(golden_run / "args.txt", run / "args.txt")
    return run


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (RANDOM, "binary file"),
    ("inf_max_channels: 32\nexperiment_name: d\u00e9mo\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 2"),
    ("a: 1\n".encode("utf-16"), "UTF-16"),
])
def test_bad_args_txt(run_copy, content, words):
    args = run_copy / "args.txt"
    args.write_bytes(content)
    for call in (lambda: read_args_txt(args), lambda: load_official_checkpoint(run_copy)):
        message = failure(CheckpointError, call)
        assert message.startswith(f"cannot read args.txt {args}: ") and words in message
        assert "remove it to infer the config from the checkpoint" in message


def replace_link(path: Path, content: bytes) -> Path:
    path.unlink()
    return write(path, content)


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (b"garbage" * 100, "a text file, not a PyTorch file"),
    (torch_bytes(torch.zeros(3)), "it holds a Tensor, not a state dict"),
    (torch_bytes({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}), "entry 'state_dict' holds a dict, not a tensor"),
])
def test_bad_checkpoint_in_run(run_copy, content, words):
    pth = replace_link(run_copy / "checkpoints" / "1_keypoints_embedder.pth", content)
    message = failure(CheckpointError, load_official_checkpoint, run_copy)
    assert message.startswith(f"cannot read checkpoint {pth}: ") and words in message


def test_truncated_checkpoint_in_run(run_copy, golden_run):
    name = "1_texture_generator.pth"
    data = (golden_run / "checkpoints" / name).read_bytes()
    pth = replace_link(run_copy / "checkpoints" / name, data[: len(data) * 3 // 4])
    message = failure(CheckpointError, load_official_checkpoint, run_copy)
    assert message.startswith(f"cannot read checkpoint {pth}: it is truncated")


# ------------------------------------------------------------------------------ the other packages' readers
def test_bundle_manifest(tmp_path):
    from bilayer_mobile.runtime_bench.validate import BundleError, load_manifest

    manifest = tmp_path / "manifest.json"
    for content, words in ((b"", "empty"), (RANDOM, "binary"), (b"[]", "holds an array"),
                           (b'{"model": {}}', "lacks the required key 'artifacts'"),
                           (b'{"model": {}, "artifacts": {}}', "'artifacts' is not a list")):
        manifest.write_bytes(content)
        message = failure(BundleError, load_manifest, tmp_path)
        assert str(manifest) in message and words in message and "re-run `bilayer-mobile export`" in message
    manifest.write_text('{"model": {}, "artifacts": []}')
    assert load_manifest(tmp_path) == {"model": {}, "artifacts": []}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A one-sequence dataset in the official layout: two frames, their keypoints and a mask."""
    root = tmp_path / "data"
    seq = Path("person") / "video" / "0"
    rng = np.random.default_rng(3)
    for i in range(2):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write(root / "imgs" / "test" / seq / f"{i:02d}.jpg", b"")
        Image.fromarray(frame).save(root / "imgs" / "test" / seq / f"{i:02d}.jpg")
        angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        points = np.stack([32 + 20 * np.cos(angles), 32 + 20 * np.sin(angles)], 1).astype(np.float32)
        write(root / "keypoints" / "test" / seq / f"{i:02d}.npy", npy_bytes(points))
    write(root / "segs" / "test" / seq / "00.png", png_bytes((64, 64), mode="L"))
    return root


def test_dataset_clips_reads_a_good_dataset(dataset):
    from bilayer_mobile.export.calibration import dataset_clips

    clips = dataset_clips(dataset, image_size=64)
    assert len(clips) == 1 and clips[0].mask is not None and clips[0].drivers.shape == (1, 136)


@pytest.mark.parametrize("rel, content, what", [
    ("imgs/test/person/video/0/01.jpg", b"", "calibration frame"),
    ("imgs/test/person/video/0/00.jpg", JPEG[: len(JPEG) // 2], "calibration frame"),
    ("keypoints/test/person/video/0/01.npy", RANDOM, "keypoints"),
    ("keypoints/test/person/video/0/00.npy", GOOD_NPY[:-4], "keypoints"),
    ("segs/test/person/video/0/00.png", b"mask\n", "segmentation mask"),
])
def test_dataset_clips_corrupt_file(dataset, rel, content, what):
    from bilayer_mobile.export.calibration import dataset_clips

    path = write(dataset / rel, content)
    message = failure(InputError, dataset_clips, dataset, image_size=64)
    assert message.startswith(f"cannot read {what} {path}: ")


def test_every_reader_error_is_a_bilayer_error(tmp_path):
    """The CLI catches BilayerError: a reader must never leak a library exception."""
    path = write(tmp_path / "x", RANDOM)
    for call in (read_text, read_json_object, load_npy_array, open_image, load_torch_file):
        with pytest.raises(BilayerError):
            call(path, "file")
