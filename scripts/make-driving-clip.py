"""Write a short driving clip generated from a photo: the face sways sideways, bobs and turns.

    .venv/bin/python scripts/make-driving-clip.py reference/photos/target.jpg out/drive/clip.mp4 [--frames 60]

The photo moves by affine motion around its face (dlib finds the face once), as a head moves in
a selfie video; `bilayer-mobile drive --driver CLIP` then drives an avatar by it (`make drive`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("out", type=Path, help=".mp4 to write")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=480, help="the clip's width (the photo is scaled to it)")
    args = parser.parse_args()

    import cv2
    import imageio.v2 as imageio

    from bilayer_mobile.reference.landmarks import detect_landmarks
    from bilayer_mobile.reference.preprocessing import load_rgb
    from bilayer_mobile.runtime_bench.driving_quality import moving_frames

    photo = load_rgb(args.photo)
    height = int(round(photo.shape[0] * args.width / photo.shape[1] / 16)) * 16
    photo = cv2.resize(photo, (args.width, height), interpolation=cv2.INTER_AREA)
    landmarks = detect_landmarks(photo)
    frames = moving_frames(photo, landmarks.mean(0), float(np.ptp(landmarks[:, 0])), count=args.frames, fps=args.fps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(f".{args.out.name}.partial.mp4")
    with imageio.get_writer(temp, format="FFMPEG", fps=args.fps, codec="libx264", macro_block_size=16,
                            ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(frame.image)
    os.replace(temp, args.out)
    print(f"{args.out}: {len(frames)} frames, {args.width}x{height}, {args.fps:g} fps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
