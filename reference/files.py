"""Writing files so that nothing is ever left half-written, and hashing them.

One mechanism for every package (the reference's model cache, the exporters' models, bundles,
reports and render outputs):

- `atomic_write(path)`: a file is written beside its destination under a temporary name,
  flushed to disk and renamed over the destination only once complete;
- `staging_directory(out)`: a directory is filled under a temporary name beside `out` and
  renamed to `out` by `publish()`; an error or an interrupt removes it;
- `sha256_file`: the digest bundles record for every file.

It lives at the bottom of the house (the reference imports nothing else of the project) so that
every package can use it without importing another.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_write(path: Path | str) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` (replacing it) when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _give_default_permissions(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path | str, content: bytes) -> None:
    """`path` holds exactly `content`, or is unchanged if writing fails."""
    with atomic_write(path) as f:
        f.write(content)


def write_text_atomic(path: Path | str, text: str) -> None:
    """`path` holds exactly `text` (UTF-8), or is unchanged if writing fails."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _give_default_permissions(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create private entries; a published file should look like any other
    # file the user creates, i.e. follow the umask (which can only be read by setting it).
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if directory else 0o666) & ~umask)


class StagingDirectory:
    """A temporary directory beside `out` that becomes `out` on `publish()`."""

    def __init__(self, out: Path, replace: bool):
        self.out, self.replace = out, replace
        self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        self.published = False

    def publish(self) -> None:
        """Rename the filled directory to `out` (replacing an existing one only if allowed)."""
        _give_default_permissions(self.path, directory=True)
        if self.out.exists() and self.replace:
            shutil.rmtree(self.out)
        self.path.rename(self.out)
        self.published = True


@contextlib.contextmanager
def staging_directory(out: Path | str, replace: bool = False) -> Iterator[StagingDirectory]:
    """Yield a `StagingDirectory` for `out`; it is removed unless `publish()` was called."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = StagingDirectory(out, replace)
    try:
        yield staging
    finally:
        if not staging.published:
            shutil.rmtree(staging.path, ignore_errors=True)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """Hex SHA-256 of a file, or of a directory (a Core ML .mlpackage): over each file's relative
    path and SHA-256, in sorted order, so that a renamed, changed, added or removed file shows."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def size_of_tree(path: Path | str) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
