"""`bilayer-mobile drive`: a generated driving clip through a small bundle in every runtime."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest

from bilayer_mobile.cli import main
from bilayer_mobile.export.bundle import ExportConfig
from bilayer_mobile.pipeline import export_bundle
from bilayer_mobile.reference.landmarks import detect_landmarks
from bilayer_mobile.reference.preprocessing import load_rgb
from bilayer_mobile.runtime_bench.compare import psnr_db
from bilayer_mobile.runtime_bench.driving_quality import moving_frames
from tests.conftest import PROJECT

SOURCE = PROJECT / "reference" / "photos" / "source.jpg"
CLIP_FRAMES = 12


@pytest.fixture(scope="module")
def executorch_bundle(small_model, tmp_path_factory) -> Path:
    """The small model's identity and frame graphs as ExecuTorch programs (the shared `bundle` has
    ONNX and TFLite: LiteRT and onnxruntime drive from that one)."""
    out = tmp_path_factory.mktemp("bundles") / "drive-executorch"
    export_bundle(small_model, ExportConfig(out=out, targets=("executorch",), precisions=("fp32",),
                                            graphs=("identity", "frame"), golden_identities=1, golden_frames=1),
                  "small default model", console=io.StringIO(), gpu="off")
    return out


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    """The target photo, made small, moving sideways and turning (a head in a selfie video)."""
    import cv2

    photo = cv2.resize(load_rgb(PROJECT / "reference" / "photos" / "target.jpg"), (320, 400), interpolation=cv2.INTER_AREA)
    dlib = detect_landmarks(photo)
    return [f.image for f in moving_frames(photo, dlib.mean(0), float(np.ptp(dlib[:, 0])), count=CLIP_FRAMES)]


def drive(bundle: Path, driver, out: Path, *extra: str) -> int:
    drivers = [str(d) for d in (driver if isinstance(driver, list) else [driver])]
    return main(["drive", "--source", str(SOURCE), "--driver", *drivers, "--bundle", str(bundle), "--out", str(out), *extra])


@pytest.mark.slow
def test_every_runtime_drives_the_clip_and_they_agree(bundle, executorch_bundle, clip_frames, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", clip_frames)
    videos = {}
    bundles = {"litert": bundle, "onnxruntime": bundle, "executorch": executorch_bundle}  # one model, two bundles
    for runtime, runtime_bundle in bundles.items():
        out = tmp_path / runtime / "avatar.mp4"
        assert drive(runtime_bundle, clip, out, "--runtime", runtime) == 0
        err = capsys.readouterr().err
        assert f"drove {CLIP_FRAMES}/{CLIP_FRAMES} frames" in err and "frame graph" in err and "detection" in err
        videos[runtime] = np.stack(list(iio.imiter(out, plugin="FFMPEG")))
        side = np.stack(list(iio.imiter(out.with_name("avatar-side-by-side.mp4"), plugin="FFMPEG")))
        assert videos[runtime].shape == (CLIP_FRAMES, 256, 256, 3) and side.shape == (CLIP_FRAMES, 256, 512, 3)
        assert sorted(p.name for p in out.parent.iterdir()) == ["avatar-side-by-side.mp4", "avatar.mp4"]
    # the same graphs in three runtimes: the same video up to compression
    for runtime in ("onnxruntime", "executorch"):
        assert psnr_db(videos["litert"], videos[runtime]) > 35


def test_frames_without_a_face_keep_the_last_landmarks_and_are_counted(bundle, clip_frames, tmp_path, capsys):
    blank = np.full_like(clip_frames[0], 90)
    images = []
    for k, frame in enumerate([blank, clip_frames[0], blank, clip_frames[1]]):
        images.append(tmp_path / f"{k}.png")
        iio.imwrite(images[-1], frame)
    out = tmp_path / "out.mp4"  # not .gif: a GIF encoder merges the repeated (kept) frame
    assert drive(bundle, images, out, "--runtime", "onnxruntime") == 0
    err = capsys.readouterr().err
    assert "drove 3/4 frames" in err and "1 kept the last landmarks, 1 skipped" in err
    assert len(list(iio.imiter(out, plugin="FFMPEG"))) == 3


def copy_keeping(bundle: Path, copy: Path, keep) -> Path:
    """A copy of `bundle` whose manifest lists only the artifacts `keep` accepts."""
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if keep(a)]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("case", ["no face", "not a video", "no frame graph", "no driver models",
                                  "damaged driver model", "missing precision", "bad suffix"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bundle, tmp_path, capsys, case):
    driver, extra = None, []
    out = tmp_path / "out" / "avatar.mp4"
    if case == "no face":
        driver = write_clip(tmp_path / "blank.mp4", [np.full((240, 320, 3), 90, np.uint8)] * 3)
        words = "no face found in any of the 3 driver frames"
    elif case == "not a video":
        driver = tmp_path / "junk.mp4"
        driver.write_bytes(b"\x00\x01 not a video" * 50)
        words = "cannot read driver video"
    elif case == "no frame graph":
        bundle = copy_keeping(bundle, tmp_path / "identity-only", lambda a: a["graph"] != "frame")
        driver = SOURCE
        words = "the bundle has no frame graph for litert"
    elif case == "no driver models":
        bundle = copy_keeping(bundle, tmp_path / "no-driver", lambda a: a["target"] != "mediapipe")
        driver = SOURCE
        words = "has no driver models"
    elif case == "damaged driver model":  # drive runs the bundle's own face models, checked first
        bundle = shutil.copytree(bundle, tmp_path / "damaged")
        (bundle / "driver" / "face_landmark.tflite").write_bytes(b"\x00" * 1000)
        driver = SOURCE
        words = "driver/face_landmark.tflite does not match manifest.json"
    elif case == "missing precision":
        driver, extra = SOURCE, ["--precision", "int8"]
        words = "has no int8 artifact (it has: fp16, fp32)"
    else:
        driver, out = SOURCE, tmp_path / "out" / "avatar.avi"
        words = "must end in .mp4 or .gif"
    assert drive(bundle, driver, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert not out.parent.exists() or not any(out.parent.iterdir())
