"""The `bilayer-mobile` command line: `info` and `render` on the small official run.

Commands run in-process through `bilayer_mobile.cli.main` (return code + stderr), plus the
installed console script in a subprocess. The built-in default model is never built here (it
is slow); only its documentation in --help is checked.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from bilayer_mobile.cli import main

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
TINY_RUN = SHARED / "spec" / "golden_tiny" / "runs" / "bilayer_tiny"
SOURCE = SHARED / "data" / "source.jpg"
TARGET = SHARED / "data" / "target.jpg"

EXPECTED_NETWORKS = [
    "identity_embedder",
    "texture_generator",
    "inference_generator.projector",
    "keypoints_embedder",
    "inference_generator",
    "texture_enhancer",
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with stdout and stderr captured (usable in module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def tmp_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name)


def error_line(stderr: str, command: str) -> str:
    """The one error line `main` prints for a BilayerError."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"bilayer-mobile {command}: error: ")]
    assert len(lines) == 1, f"expected one error line, got stderr:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _inputs_present():
    for path in (TINY_RUN, SOURCE, TARGET):
        if not path.exists():
            pytest.fail(f"{path} is missing: the tests need ../shared beside the project")


@pytest.fixture(scope="module")
def detections() -> dict[str, dict]:
    """Landmarks and official crops of the two photos, detected once per module."""
    from bilayer_mobile.reference.landmarks import detect_landmarks
    from bilayer_mobile.reference.preprocessing import crop_face, load_rgb

    out = {}
    for name, path in (("source", SOURCE), ("target", TARGET)):
        image = load_rgb(path)
        landmarks = detect_landmarks(image)
        out[name] = {"image": image, "landmarks": landmarks, "crop": crop_face(image, landmarks, 256)}
    return out


@pytest.fixture(scope="module")
def source_landmarks(tmp_path_factory, detections) -> Path:
    """The source photo's landmarks as a .npy (lets failure tests skip detecting the source)."""
    path = tmp_path_factory.mktemp("landmarks") / "source_landmarks.npy"
    np.save(path, detections["source"]["landmarks"])
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """One full render: source photo, two driver photos, a 4-frame sequence."""
    parent = tmp_path_factory.mktemp("render")
    out = parent / "out"
    code, stdout, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                                    "--driver", TARGET, SOURCE, "--sequence-frames", 4, "--out", out])
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "parent": parent}


@pytest.fixture(scope="module")
def single_driver_render(tmp_path_factory, source_landmarks) -> Path:
    """Frames driven by target.jpg alone (the photo path of a driver), for the .npy comparisons."""
    out = tmp_path_factory.mktemp("photo_driver") / "out"
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", TARGET,
                               "--sequence-frames", 0, "--out", out])
    assert code == 0, stderr
    return out / "frames" / "000_target.png"


# ------------------------------------------------------------------------------ help / console script
def test_console_script_help_subprocess():
    script = Path(sys.executable).parent / "bilayer-mobile"
    if not script.exists():
        script = Path(shutil.which("bilayer-mobile") or "")
    assert script.is_file(), "the bilayer-mobile console script is not installed in the venv"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: bilayer-mobile")
    assert "info" in proc.stdout and "render" in proc.stdout
    assert "UNTRAINED" in proc.stdout  # the default model is announced as untrained


def test_console_script_error_exit_code_subprocess(tmp_path):
    """The installed script turns a user error into exit status 2 and one line on stderr."""
    script = Path(sys.executable).parent / "bilayer-mobile"
    missing = tmp_path / "no_such_run"
    proc = subprocess.run([str(script), "info", str(missing)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    line = error_line(proc.stderr, "info")
    assert str(missing) in line and "does not exist" in line


def test_help_documents_default_model(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at hyphens ("built-in") on narrow terminals
    with pytest.raises(SystemExit) as exc:
        main(["info", "--help"])
    assert exc.value.code == 0
    info_help = " ".join(capsys.readouterr().out.split())
    assert "checkpoint" in info_help and "default: the built-in default model" in info_help
    assert "[checkpoint]" in info_help  # the run directory is optional

    with pytest.raises(SystemExit) as exc:
        main(["render", "--help"])
    assert exc.value.code == 0
    render_help = " ".join(capsys.readouterr().out.split())
    assert "--checkpoint CHECKPOINT" in render_help
    assert "default: the built-in default model" in render_help
    assert "[--checkpoint CHECKPOINT]" in render_help  # optional in the usage line


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


# ------------------------------------------------------------------------------ info
def test_info_json(capsys):
    code = main(["info", str(TINY_RUN), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["model"] == str(TINY_RUN)
    assert report["enhancer"] is True
    assert [n["name"] for n in report["networks"]] == EXPECTED_NETWORKS
    for net in report["networks"]:
        assert isinstance(net["parameters"], int) and net["parameters"] > 0, net
        assert net["macs"] > 0, net
    config = report["config"]
    assert config["image_size"] == 256 and config["num_keypoints"] == 68
    assert config["emb_num_channels"] == 8 and config["inf_max_channels"] == 32  # the tiny run
    assert math.isfinite(report["mean_uv_displacement_px"]) and report["mean_uv_displacement_px"] > 0
    assert report["macs_per_identity"] > report["macs_per_frame"] > 0

    # parameter counts = the learnable tensors of the official checkpoint files
    # (spectral norm's u/v vectors and BatchNorm/grid buffers are not parameters)
    params = {n["name"]: n["parameters"] for n in report["networks"]}
    skip = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked", "identity_grid")
    for net in ("identity_embedder", "texture_generator", "keypoints_embedder", "inference_generator", "texture_enhancer"):
        state = torch.load(TINY_RUN / "checkpoints" / f"1_{net}.pth", map_location="cpu", weights_only=True)
        expected = sum(v.numel() for k, v in state.items() if not k.endswith(skip))
        got = params[net] + (params["inference_generator.projector"] if net == "inference_generator" else 0)
        assert got == expected, net


def test_info_text(capsys):
    code = main(["info", str(TINY_RUN), "--no-enhancer"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"model: {TINY_RUN}" in captured.out
    assert "texture enhancer: off" in captured.out
    assert "  image_size: 256" in captured.out
    rows = captured.out.splitlines()
    for name in EXPECTED_NETWORKS:
        listed = any(line.startswith(name + " ") for line in rows)
        # an enhancer that is switched off is not part of the model's cost
        assert listed == (name != "texture_enhancer"), name
    assert "mean |delta UV| on real-face keypoints:" in captured.out


def test_info_wrong_epoch(capsys):
    code = main(["info", str(TINY_RUN), "--epoch", "7"])
    line = error_line(capsys.readouterr().err, "info")
    assert code == 2
    assert "epoch 7" in line and "available epochs: ['1']" in line


def test_info_epoch_without_checkpoint(capsys):
    """--epoch without a run directory is refused before the default model is built."""
    code = main(["info", "--epoch", "1"])
    line = error_line(capsys.readouterr().err, "info")
    assert code == 2 and "--checkpoint" in line


# ------------------------------------------------------------------------------ render
def test_render_succeeds(rendered):
    assert rendered["code"] == 0, rendered["stderr"]
    assert "identity: source.jpg (with texture enhancer)" in rendered["stderr"]
    assert rendered["stdout"].startswith(f"wrote {rendered['out']}/")
    assert tmp_leftovers(rendered["parent"]) == []
    assert sorted(p.name for p in rendered["parent"].iterdir()) == ["out"]


def test_render_outputs(rendered, detections):
    out = rendered["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "drivers_strip.png", "frames", "render.json", "sequence.gif", "sequence_keypoints.npy", "sequence_strip.png",
    ]
    frames = sorted((out / "frames").glob("*.png"))
    assert [p.name for p in frames] == ["000_target.png", "001_source.png"]
    images = [iio.imread(p) for p in frames]
    for image in images:
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert image.std() > 1  # not a blank image
    assert not np.array_equal(images[0], images[1])  # different drivers, different frames

    strip = iio.imread(out / "drivers_strip.png")
    assert strip.shape == (512, 3 * 256, 3)
    # top row: the source crop, then the drivers' stickmen; bottom row: texture, then the frames
    from bilayer_mobile.reference.preprocessing import tensor_to_image

    assert np.array_equal(strip[:256, :256], tensor_to_image(detections["source"]["crop"].image))
    for i, image in enumerate(images):
        assert np.array_equal(strip[256:, 256 * (i + 1) : 256 * (i + 2)], image)
        stickman = strip[:256, 256 * (i + 1) : 256 * (i + 2)].reshape(-1, 3)
        assert (stickman == 1).all(1).mean() > 0.8  # the official stickman canvas (value 1)

    gif = iio.imread(out / "sequence.gif", index=None)
    assert gif.shape[0] == 4 and gif.shape[1:3] == (256, 256)
    sequence = np.load(out / "sequence_keypoints.npy")
    assert sequence.shape == (4, 136) and np.isfinite(sequence).all()
    # the sequence starts at the source pose (the source photo's official crop keypoints)
    np.testing.assert_allclose(sequence[0], detections["source"]["crop"].keypoints.numpy(), atol=1e-6)
    assert iio.imread(out / "sequence_strip.png").shape[0] == 256

    meta = json.loads((out / "render.json").read_text())
    assert meta["model"] == str(TINY_RUN)
    assert meta["source"] == str(SOURCE)
    assert meta["drivers"] == [str(TARGET), str(SOURCE)]
    assert meta["image_size"] == 256 and meta["sequence_frames"] == 4 and meta["enhancer"] is True


def test_render_output_directory_has_normal_permissions(rendered):
    """Regression: the output is built in a tempfile.mkdtemp directory (mode 0700); once renamed to
    --out it must have the mode a plain mkdir gives under the current umask."""
    reference_dir = rendered["parent"] / "mkdir_reference"
    reference_dir.mkdir()
    try:
        expected = reference_dir.stat().st_mode & 0o777
    finally:
        reference_dir.rmdir()
    assert rendered["out"].stat().st_mode & 0o777 == expected


def test_render_driver_npy_normalised_136(tmp_path, detections, source_landmarks, single_driver_render):
    """A (136,) .npy of normalised keypoints drives exactly like the photo they come from."""
    driver = tmp_path / "target.npy"
    np.save(driver, detections["target"]["crop"].keypoints.numpy())
    out = tmp_path / "out"
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", driver,
                               "--sequence-frames", 0, "--out", out])
    assert code == 0, stderr
    frame = iio.imread(out / "frames" / "000_target.png")
    expected = iio.imread(single_driver_render)
    assert np.abs(frame.astype(int) - expected).max() <= 1
    assert not (out / "sequence.gif").exists()  # --sequence-frames 0: no sequence
    assert tmp_leftovers(tmp_path) == []


def test_render_driver_npy_pixels_68x2(tmp_path, detections, source_landmarks, single_driver_render):
    """(68, 2) pixel landmarks: in a crop of --keypoints-size, or by default of the model's size."""
    crop_kp = detections["target"]["crop"].keypoints.numpy().astype(np.float64).reshape(68, 2)
    left, top, right, _ = detections["target"]["crop"].box
    side = right - left
    in_crop = (detections["target"]["landmarks"] - np.array([left, top], np.float32)).astype(np.float32)
    np.save(tmp_path / "target.npy", in_crop)
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", tmp_path / "target.npy",
                               "--keypoints-size", side, "--sequence-frames", 0, "--out", tmp_path / "a"])
    assert code == 0, stderr
    expected = iio.imread(single_driver_render)
    frame_a = iio.imread(tmp_path / "a" / "frames" / "000_target.png")
    assert np.abs(frame_a.astype(int) - expected).max() <= 1

    # the same pose as pixels of a 256 x 256 crop, with [68, 3] (z ignored) as the dataset stores it
    pixels = np.concatenate([(crop_kp / 2 + 0.5) * 256, np.zeros((68, 1))], 1).astype(np.float32)
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "target.npy", pixels)
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", tmp_path / "b" / "target.npy",
                               "--sequence-frames", 0, "--out", tmp_path / "c"])
    assert code == 0, stderr
    frame_c = iio.imread(tmp_path / "c" / "frames" / "000_target.png")
    assert np.abs(frame_c.astype(int) - expected).mean() < 0.5
    assert tmp_leftovers(tmp_path) == []


def test_render_force_replaces_output(tmp_path, source_landmarks):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", tmp_path.parent / "nothing.npy",
                               "--sequence-frames", 0, "--out", out, "--force"])
    assert code == 2 and "nothing.npy do not exist" in error_line(stderr, "render")
    assert (out / "old.txt").read_text() == "old"  # a failed --force run leaves the old output alone
    np.save(tmp_path / "driver.npy", np.zeros(136, np.float32))
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", tmp_path / "driver.npy",
                               "--sequence-frames", 0, "--out", out, "--force"])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["drivers_strip.png", "frames", "render.json"]
    assert tmp_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ render: bad inputs
def _render_fails(capsys, tmp_path: Path, args: list) -> str:
    """Run a failing render into tmp_path/out; return its error line after the common checks."""
    out = tmp_path / "out"
    code = main([str(a) for a in ["render", *args, "--sequence-frames", 2, "--out", out]])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    line = error_line(captured.err, "render")
    assert captured.out == ""
    assert not out.exists()
    assert tmp_leftovers(tmp_path) == []
    return line


def test_render_missing_run_dir(capsys, tmp_path):
    missing = tmp_path / "runs" / "nope"
    line = _render_fails(capsys, tmp_path, ["--checkpoint", missing, "--source", SOURCE, "--driver", TARGET])
    assert str(missing) in line and "does not exist" in line


def test_render_wrong_epoch(capsys, tmp_path):
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--epoch", "7",
                                            "--source", SOURCE, "--driver", TARGET])
    assert "epoch 7" in line and "available epochs: ['1']" in line


def test_render_missing_source(capsys, tmp_path):
    missing = tmp_path / "nobody.jpg"
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", missing, "--driver", TARGET])
    assert str(missing) in line and "does not exist" in line


def test_render_no_crop_needs_model_size(capsys, tmp_path):
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--no-crop",
                                            "--source", SOURCE, "--driver", TARGET])
    assert "1024x1280" in line and "256x256" in line and "--no-crop" in line


def test_render_greyscale_source(capsys, tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.open(SOURCE).convert("L").save(grey)
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", grey, "--driver", TARGET])
    assert str(grey) in line and "mode L" in line and "1 channel" in line and "RGB" in line


def test_render_no_face(capsys, tmp_path):
    flat = tmp_path / "flat.jpg"
    Image.new("RGB", (512, 512), (128, 128, 128)).save(flat)
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", flat, "--driver", TARGET])
    assert "no face found" in line and ".npy" in line


def test_render_no_face_in_driver(capsys, tmp_path, source_landmarks):
    flat = tmp_path / "flat.jpg"
    Image.new("RGB", (512, 512), (128, 128, 128)).save(flat)
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", SOURCE,
                                            "--source-landmarks", source_landmarks, "--driver", flat])
    assert "no face found" in line


@pytest.mark.parametrize("shape", [(136,), (68, 2)])
def test_render_driver_npy_with_nan(capsys, tmp_path, source_landmarks, shape):
    values = np.zeros(shape, np.float32)
    values.flat[7] = np.nan
    driver = tmp_path / "nan.npy"
    np.save(driver, values)
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", SOURCE,
                                            "--source-landmarks", source_landmarks, "--driver", driver])
    assert "NaN" in line and str(driver) in line


def test_render_driver_npy_wrong_shape(capsys, tmp_path, source_landmarks):
    driver = tmp_path / "bad.npy"
    np.save(driver, np.zeros((10, 2), np.float32))
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", SOURCE,
                                            "--source-landmarks", source_landmarks, "--driver", driver])
    assert "(10, 2)" in line and "68, 2" in line


def test_render_output_exists_without_force(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    (out / "keep.txt").write_text("precious")
    (out / "frames" / "000_old.png").write_bytes(b"old frame")
    before = snapshot(out)
    code = main(["render", "--checkpoint", str(TINY_RUN), "--source", str(SOURCE), "--driver", str(TARGET),
                 "--out", str(out)])
    line = error_line(capsys.readouterr().err, "render")
    assert code == 2
    assert str(out) in line and "--force" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_render_empty_output_dir_is_reused(tmp_path, source_landmarks):
    out = tmp_path / "out"
    out.mkdir()
    np.save(tmp_path / "driver.npy", np.zeros(136, np.float32))
    code, _, stderr = run_cli(["render", "--checkpoint", TINY_RUN, "--source", SOURCE,
                               "--source-landmarks", source_landmarks, "--driver", tmp_path / "driver.npy",
                               "--sequence-frames", 0, "--out", out])
    assert code == 0, stderr
    assert (out / "frames" / "000_driver.png").is_file()


def test_render_unreadable_checkpoint(capsys, tmp_path):
    run = tmp_path / "runs" / "broken"
    shutil.copytree(TINY_RUN, run)
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # the shared copy is read-only
    garbage = run / "checkpoints" / "1_identity_embedder.pth"
    garbage.write_bytes(os.urandom(4096))
    line = _render_fails(capsys, tmp_path, ["--checkpoint", run, "--source", SOURCE, "--driver", TARGET])
    assert str(garbage) in line and "cannot read checkpoint" in line


def test_render_out_is_a_file(capsys, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    code = main(["render", "--checkpoint", str(TINY_RUN), "--source", str(SOURCE), "--driver", str(TARGET),
                 "--out", str(out)])
    assert code == 2
    assert str(out) in error_line(capsys.readouterr().err, "render")
    assert out.read_text() == "a file"


def test_render_driver_npy_unreadable(capsys, tmp_path, source_landmarks):
    driver = tmp_path / "garbage.npy"
    driver.write_bytes(b"not a numpy file" * 64)
    line = _render_fails(capsys, tmp_path, ["--checkpoint", TINY_RUN, "--source", SOURCE,
                                            "--source-landmarks", source_landmarks, "--driver", driver])
    assert str(driver) in line
