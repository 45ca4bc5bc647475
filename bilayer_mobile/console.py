"""What a person sees while a long command runs, and where the converters' chatter goes.

- `StepProgress`: one line per finished step (what was done, in how long) and, on a terminal,
  one progress bar of the whole job with the time left, weighted by what each step costs.
- `converter_chatter_to(log)`: everything the converters print (litert-torch's MLIR stages,
  TensorFlow's and absl's C++ logs, Python warnings) goes to a log file instead of the console.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

from tqdm import tqdm


def minutes(seconds: float) -> str:
    """`1m05s`."""
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class StepProgress:
    """Progress of a job made of weighted steps: call it with (step, line) after each step.

    `costs(step, target)` is a step's relative cost (seconds measured once; 0 for an unknown
    step); a step may name the target it is for (`target=`).
    On a terminal a tqdm bar shows the share done and the time left; elsewhere (CI logs) each
    line carries the elapsed time and the time left instead."""

    def __init__(self, stream: TextIO, costs: dict, total: float, label: str):
        self.stream, self.costs, self.total = stream, costs, max(total, 1e-9)
        self.done, self.start = 0.0, time.perf_counter()
        self.bar = (tqdm(total=round(self.total, 1), file=stream, desc=label, unit="", leave=False,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, about {remaining} left")
                    if stream.isatty() else None)

    def __call__(self, step: tuple, line: str, target: str | None = None) -> None:
        cost = self.costs(step, target)
        self.done += cost
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(round(cost, 1))
        else:
            print(f"{line}  [{self.time_text()}]", file=self.stream, flush=True)

    def time_text(self) -> str:
        elapsed = time.perf_counter() - self.start
        if self.done <= 0:
            return f"{minutes(elapsed)} elapsed"
        left = elapsed / self.done * max(0.0, self.total - self.done)
        return f"{minutes(elapsed)} elapsed, about {minutes(left)} left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _flush_all() -> None:
    """Flush Python's streams and the C library's (converters written in C++ print through it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to flush
        pass


@contextlib.contextmanager
def converter_chatter_to(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to file descriptors 1 and 2 (Python and C++ alike) and the
    `logging` records of the toolchain to `log_path` for the duration; yields a stream to the
    real stderr for the progress lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _flush_all()
    saved: dict[int, int] = {}
    console = None
    handler = None
    try:
        with open(log_path, "wb") as log:
            for fd in (1, 2):
                saved[fd] = os.dup(fd)
            console = os.fdopen(os.dup(saved[2]), "w", buffering=1)
            for fd in saved:
                os.dup2(log.fileno(), fd)
            # straight to file descriptor 2 (the log now), whatever sys.stderr has been replaced by
            handler = logging.StreamHandler(open(2, "w", buffering=1, closefd=False))
            handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
            root = logging.getLogger("bilayer_mobile")
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            yield console
    finally:
        _flush_all()
        if handler is not None:
            logging.getLogger("bilayer_mobile").removeHandler(handler)
            handler.stream.close()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        if console is not None:
            console.close()
