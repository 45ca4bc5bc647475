"""`bilayer-mobile` on corrupt, empty, binary and mis-encoded input files: exit code 2, one line.

Commands run in-process through `bilayer_mobile.cli.main`. Every case fails before anything
slow: run directories hold the small golden_tiny checkpoints (linked, one file replaced), and
the source's landmarks are given, so no face detection runs.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bilayer_mobile import cli
from bilayer_mobile.cli import main
from bilayer_mobile.reference.errors import InputError

PROJECT = Path(__file__).resolve().parents[1]
TINY_RUN = PROJECT.parent / "shared" / "spec" / "golden_tiny" / "runs" / "bilayer_tiny"
SOURCE = PROJECT.parent / "shared" / "data" / "source.jpg"
RANDOM = np.random.default_rng(11).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module", autouse=True)
def _inputs_present():
    for path in (TINY_RUN, SOURCE):
        if not path.exists():
            pytest.fail(f"{path} is missing: the tests need ../shared beside the project")


def fails_with_one_line(capsys, argv: list, command: str, code: int = 2) -> str:
    """Run the CLI, check the exit code and that stderr is exactly one error line; return it."""
    result = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert result == code, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{captured.err}"
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith(f"bilayer-mobile {command}: ")
    return lines[0]


@pytest.fixture(scope="module")
def source_landmarks(tmp_path_factory) -> Path:
    """68 points on an ellipse in the middle of source.jpg (crop_face needs only their spread)."""
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points = np.stack([512 + 200 * np.cos(angles), 600 + 250 * np.sin(angles)], 1).astype(np.float32)
    path = tmp_path_factory.mktemp("landmarks") / "source.npy"
    np.save(path, points)
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A copy of the golden_tiny run: checkpoints linked, args.txt copied (so either can be replaced)."""
    run = tmp_path / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    for path in (TINY_RUN / "checkpoints").iterdir():
        os.symlink(path, run / "checkpoints" / path.name)
    shutil.copyfile(TINY_RUN / "args.txt", run / "args.txt")
    return run


def render_argv(tmp_path, source=SOURCE, drivers=None, landmarks=None, checkpoint=TINY_RUN) -> list:
    argv = ["render", "--checkpoint", checkpoint, "--source", source, "--driver", *(drivers or [SOURCE]),
            "--sequence-frames", 0, "--out", tmp_path / "out"]
    return argv + (["--source-landmarks", landmarks] if landmarks else [])


def no_output_left(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not any(".tmp-" in p.name for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------ the source photo
def truncated_jpeg() -> bytes:
    data = SOURCE.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("content, words", [
    (b"", "it is empty (0 bytes)"),
    (b"this is a text file, not a photo\n" * 20, "it is a text file, not an image"),
    (truncated_jpeg(), "the JPEG image data is truncated"),
    (RANDOM, "it is not an image in a format this tool reads"),
])
def test_render_bad_source_image(capsys, tmp_path, source_landmarks, content, words):
    source = tmp_path / "source.jpg"
    source.write_bytes(content)
    line = fails_with_one_line(capsys, render_argv(tmp_path, source=source, landmarks=source_landmarks), "render")
    assert line.startswith(f"bilayer-mobile render: error: cannot read source image {source}: {words}")
    assert no_output_left(tmp_path)


def test_render_bad_source_landmarks(capsys, tmp_path):
    landmarks = tmp_path / "landmarks.npy"
    landmarks.write_bytes(RANDOM)
    line = fails_with_one_line(capsys, render_argv(tmp_path, landmarks=landmarks), "render")
    assert f"cannot read keypoints {landmarks}: it is not a .npy file" in line


# ------------------------------------------------------------------------------ driver keypoints
def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, keypoints=np.zeros(136, np.float32))
    return buf.getvalue()


@pytest.mark.parametrize("name, content, words", [
    ("binary.npy", RANDOM, "it is not a .npy file"),
    ("empty.npy", b"", "it is empty (0 bytes)"),
    ("archive.npz", npz_bytes(), "it is an .npz archive (arrays 'keypoints'), not a single .npy array"),
    ("renamed.npy", npz_bytes(), "it is an .npz archive (arrays 'keypoints'), not a single .npy array"),
    ("text.npy", b"0.5, 0.25\n" * 68, "it is a text file, not a .npy array"),
])
def test_render_bad_driver_npy(capsys, tmp_path, source_landmarks, name, content, words):
    driver = tmp_path / name
    driver.write_bytes(content)
    line = fails_with_one_line(capsys, render_argv(tmp_path, drivers=[driver], landmarks=source_landmarks), "render")
    assert line.startswith(f"bilayer-mobile render: error: cannot read driver keypoints {driver}: {words}")
    assert no_output_left(tmp_path)


def test_render_object_array_driver_is_not_unpickled(capsys, tmp_path, source_landmarks):
    driver = tmp_path / "objects.npy"
    np.save(driver, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    line = fails_with_one_line(capsys, render_argv(tmp_path, drivers=[driver], landmarks=source_landmarks), "render")
    assert f"{driver}: it holds Python objects" in line


# ------------------------------------------------------------------------------ run directory: args.txt
BAD_ARGS = [
    ("binary", RANDOM, "it is a binary file"),
    ("latin-1", "inf_max_channels: 32\nexperiment_name: d\u00e9mo\n".encode("latin-1"),
     "it is not UTF-8 text (byte 0xe9 on line 2"),
    ("empty", b"", "it is empty (0 bytes)"),
]


@pytest.mark.parametrize("command", ["render", "info"])
@pytest.mark.parametrize("case, content, words", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_bad_args_txt(capsys, tmp_path, run_dir, source_landmarks, command, case, content, words):
    args = run_dir / "args.txt"
    args.write_bytes(content)
    argv = render_argv(tmp_path, checkpoint=run_dir, landmarks=source_landmarks) if command == "render" \
        else ["info", run_dir]
    line = fails_with_one_line(capsys, argv, command)
    assert line.startswith(f"bilayer-mobile {command}: error: cannot read args.txt {args}: {words}")
    assert "remove it to infer the config from the checkpoint alone" in line


# ------------------------------------------------------------------------------ run directory: checkpoints
def truncated_checkpoint() -> bytes:
    data = (TINY_RUN / "checkpoints" / "1_texture_generator.pth").read_bytes()
    return data[: len(data) * 2 // 3]


def pickled_module() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buf)
    return buf.getvalue()


BAD_CHECKPOINTS = [
    ("empty", b"", "it is empty (0 bytes)"),
    ("truncated", truncated_checkpoint(), "it is truncated or corrupt (its zip archive is incomplete)"),
    ("garbage", RANDOM, "it is not a PyTorch file"),
    ("text", b"not a checkpoint\n" * 10, "it is a text file, not a PyTorch file"),
    ("npz", npz_bytes(), "it is a zip archive but not a PyTorch file"),
    ("pickled module", pickled_module(), "torch.load(weights_only=True) refuses it"),
]


@pytest.mark.parametrize("command", ["render", "info"])
@pytest.mark.parametrize("case, content, words", BAD_CHECKPOINTS, ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoint_file(capsys, tmp_path, run_dir, source_landmarks, command, case, content, words):
    pth = run_dir / "checkpoints" / "1_texture_generator.pth"
    pth.unlink()
    pth.write_bytes(content)
    argv = render_argv(tmp_path, checkpoint=run_dir, landmarks=source_landmarks) if command == "render" \
        else ["info", run_dir]
    line = fails_with_one_line(capsys, argv, command)
    assert line.startswith(f"bilayer-mobile {command}: error: cannot read checkpoint {pth}: {words}")


# ------------------------------------------------------------------------------ bundle manifest
BAD_MANIFESTS = [
    ("empty", b"", "it is empty (0 bytes)"),
    ("binary", RANDOM, "it is a binary file"),
    ("latin-1", '{"model": "caf\u00e9"}'.encode("latin-1"), "it is not UTF-8 text"),
    ("invalid", b'{"artifacts": [', "it is not valid JSON"),
    ("array", b"[]", "it holds an array where a JSON object"),
    ("no artifacts", json.dumps({"model": {}}).encode(), "it lacks the required key 'artifacts'"),
]


@pytest.mark.parametrize("case, content, words", BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_validate_bad_manifest(capsys, tmp_path, case, content, words):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = bundle / "manifest.json"
    manifest.write_bytes(content)
    line = fails_with_one_line(capsys, ["validate", bundle], "validate")
    assert line.startswith(f"bilayer-mobile validate: error: cannot read bundle manifest {manifest}: {words}")
    assert "re-run `bilayer-mobile export`" in line


# ------------------------------------------------------------------------------ main's last resorts
def test_internal_error_is_one_line_exit_3(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("texture\nsecond line")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    monkeypatch.delenv("BILAYER_MOBILE_DEBUG", raising=False)
    line = fails_with_one_line(capsys, ["validate", "anything"], "validate", code=3)
    assert line == ("bilayer-mobile validate: internal error: RuntimeError: texture second line "
                    "(set BILAYER_MOBILE_DEBUG=1 for the traceback; please report it)")


def test_internal_error_reraised_in_debug_mode(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "cmd_validate", broken)
    monkeypatch.setenv("BILAYER_MOBILE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError, match="boom"):
        main(["validate", "anything"])


def test_multi_line_user_error_printed_on_one_line(capsys, monkeypatch):
    def wrapped(args):
        raise InputError("first part\n  second part")

    monkeypatch.setattr(cli, "cmd_validate", wrapped)
    line = fails_with_one_line(capsys, ["validate", "anything"], "validate")
    assert line == "bilayer-mobile validate: error: first part second part"
