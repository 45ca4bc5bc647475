"""The native output of a runtime (what its C++ writes to file descriptors 1 and 2), captured.

LiteRT and onnxruntime print banners and notices straight to the process's stdout and stderr,
past Python's `sys.stderr`; the GPU accelerator prints its verdict (which ops it took) only
there. The runners read it here and hand it to `logging`, which the command-line layer sends to
a log file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Capture what is written to file descriptors 1 and 2 (C++ included) inside the block: the
    runtimes' native chatter kept off the console (and the GPU accelerator's verdict, which it
    prints only there). The text is appended to the yielded list and logged (`bilayer-mobile
    export` keeps it in export.log)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    text: list[str] = []
    with tempfile.TemporaryFile() as capture:
        for fd in saved:
            os.dup2(capture.fileno(), fd)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            text.append(capture.read().decode("utf-8", "replace"))
            logging.getLogger(__name__).info("".join(text))
