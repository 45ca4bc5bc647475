"""Reading the files a user hands us: text, JSON, `.npy` arrays, images, PyTorch checkpoints.

Every reader checks the file before its format library sees it (missing, a directory, empty,
unreadable) and turns whatever the library raises on bad content (binary where text is
expected, wrong encoding, truncation, another format under a misleading name) into one error of
the class the caller chooses, with a one-line message of the form

    cannot read <what> <path>: <what is wrong>; <what to do>

so the CLI can print it as is. Readers never unpickle: `.npy` files are loaded with
`allow_pickle=False` and checkpoints with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import BilayerError, CheckpointError, InputError

ErrorType = type[BilayerError]

# Long enough to identify every format below and to show a few bytes of an unknown one.
_HEAD_BYTES = 64
_MAX_DETAIL = 160

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\xfe\xff", "UTF-16 text"),
    (b"\xff\xfe", "UTF-16 text"),
)
# ISO base media files carry their brand at offset 4; phones save photos as HEIC this way.
_FTYP_BRANDS = {
    b"heic": "an HEIC photo", b"heix": "an HEIC photo", b"hevc": "an HEIC photo", b"mif1": "an HEIF photo",
    b"msf1": "an HEIF photo", b"avif": "an AVIF image", b"isom": "an MP4 video", b"mp41": "an MP4 video",
    b"mp42": "an MP4 video", b"qt  ": "a QuickTime video",
}


def describe_content(head: bytes) -> str | None:
    """What the first bytes of a file say it is ("a JPEG image", "a text file", ...), or None.

    Used to tell the user what they passed instead of what was expected (a photo given as
    keypoints, an `.npz` given as a checkpoint), which is usually the whole explanation.
    """
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    # "BM" alone would also match text; a BMP header has four reserved zero bytes after the size
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":
        return "a BMP image"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head and b"\x00" not in head:
        try:
            # the head may end inside a multi-byte character: ignore only an incomplete tail
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
                return "a text file"
    return None


def _brief(detail: object) -> str:
    """A library's error text as a short single line (some span paragraphs and carry ANSI codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(detail))
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _fail(error: ErrorType, what: str, path: Path, problem: str, fix: str) -> BilayerError:
    return error(f"cannot read {what} {path}: {problem}; {fix}")


def require_file(path: Path | str, what: str, error: ErrorType = InputError) -> Path:
    """Return `path` as a Path if it names an existing regular file, else raise `error`.

    The message says "<what> <path> does not exist" (also for a directory, with a note saying
    so), which is the first thing to check when a command cannot find its input.
    """
    path = Path(path)
    try:
        is_dir, is_file, exists = path.is_dir(), path.is_file(), path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise error(f"{what} {path} cannot be looked up ({exc.strerror or _brief(exc)})") from None
    if is_dir:
        raise error(f"{what} {path} does not exist as a file (it is a directory); pass the path of the file itself")
    if not is_file:
        if exists:
            raise error(f"{what} {path} is not a regular file (a device or a pipe?); pass a file on disk")
        raise error(f"{what} {path} does not exist")
    return path


def read_bytes(path: Path | str, what: str, error: ErrorType = InputError, fix: str | None = None) -> bytes:
    """The whole content of a user's file, which must exist, be readable and not be empty.

    Empty files get their own message because they are the usual result of an interrupted copy
    or a crashed writer, and every format library reports them differently. `fix` replaces the
    default advice for an empty file.
    """
    path = require_file(path, what, error)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(error, what, path, f"it cannot be opened ({exc.strerror or _brief(exc)})",
                    "check its permissions") from None
    if not data:
        raise _fail(error, what, path, "it is empty (0 bytes)",
                    fix or "it was probably cut short while being copied or written; copy or write it again")
    return data


def read_text(path: Path | str, what: str, error: ErrorType = InputError, fix: str | None = None) -> str:
    """The content of a UTF-8 text file, or `error` naming the file, the problem and a fix.

    Rejects missing and empty (or whitespace-only) files, binary content (NUL bytes), UTF-16/32
    and any other non-UTF-8 encoding, reporting the line of the first bad byte. A UTF-8 byte
    order mark is accepted and dropped. `fix` replaces the default advice for content problems,
    for files whose right fix is specific (e.g. "re-run the export").
    """
    path = Path(path)
    data = read_bytes(path, what, error, fix)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        # also covers UTF-32 LE, whose byte order mark starts like UTF-16's
        raise _fail(error, what, path, "it is UTF-16 or UTF-32 text, not UTF-8", fix or "save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0 or _looks_binary(data[:1024]):
        kind = describe_content(data[:_HEAD_BYTES])
        if kind and kind != "a text file":
            problem = f"it is {kind}, not text"
        elif nul >= 0:
            problem = f"it is a binary file (NUL byte at offset {nul}), not text"
        else:
            problem = "it is a binary file (control characters), not text"
        raise _fail(error, what, path, problem, fix or f"pass the {what} itself (UTF-8 text)")
    try:
        # editors on Windows start UTF-8 files with a byte order mark; it is not content
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start: exc.start + 1].hex()
        kind = describe_content(data[:_HEAD_BYTES])
        if kind and kind != "a text file":
            problem = f"it is {kind}, not text"
        else:
            problem = f"it is not UTF-8 text (byte 0x{bad} on line {line}; Latin-1 or Windows-1252?)"
        raise _fail(error, what, path, problem, fix or "save it as UTF-8")
    if not text.strip():
        raise _fail(error, what, path, "it is empty (only whitespace)", fix or f"write the {what} again")
    return text


# C0 control characters other than tab, newlines, form feed and escape never occur in text files
_CONTROL_BYTES = bytes(set(range(32)) - {9, 10, 11, 12, 13, 27})


def _looks_binary(head: bytes) -> bool:
    """More than one byte in twenty is a control character: random or compressed data, not text."""
    return len(head) - len(head.translate(None, _CONTROL_BYTES)) > len(head) / 20


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_json_object(path: Path | str, what: str, error: ErrorType = InputError, required: Iterable[str] = (),
                     fix: str | None = None) -> dict:
    """A UTF-8 JSON file whose top level is an object holding the `required` keys.

    Text problems are reported as by `read_text`; invalid JSON with its line and column; valid
    JSON of another type (an array, a string) and missing keys each with their own message.
    """
    path = Path(path)
    text = read_text(path, what, error, fix)
    fix = fix or f"write the {what} again"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(error, what, path, f"it is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                    fix) from None
    except RecursionError:
        raise _fail(error, what, path, "its JSON is nested too deeply to read", fix) from None
    if not isinstance(value, dict):
        raise _fail(error, what, path, f"it holds {_JSON_TYPES.get(type(value), type(value).__name__)} where a "
                    "JSON object ({...}) is expected", fix)
    missing = [key for key in required if key not in value]
    if missing:
        raise _fail(error, what, path, f"it lacks the required key{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(k) for k in missing)}", fix)
    return value


def load_npy_array(path: Path | str, what: str, error: ErrorType = InputError, numeric: bool = True) -> np.ndarray:
    """One array from a `.npy` file, loaded without unpickling.

    Rejects empty files, other formats (an `.npz` archive is named with its arrays, so the user
    can pick one), corrupt headers, object arrays (they would need pickle), non-numeric dtypes
    when `numeric` (strings, records, complex), and files shorter than their header promises,
    which is checked before reading so a truncated file cannot masquerade as a huge allocation.
    """
    path = require_file(path, what, error)
    fix = "save the array again with numpy.save"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            if not head:
                raise _fail(error, what, path, "it is empty (0 bytes)",
                            "it was probably cut short while being copied or written; " + fix)
            if not head.startswith(b"\x93NUMPY"):
                raise _fail(error, what, path, _not_npy_problem(path, head), "pass a single .npy array written by numpy.save")
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            except Exception as exc:  # numpy reports bad headers as ValueError, SyntaxError, ...
                raise _fail(error, what, path, f"its .npy header is corrupt ({_brief(exc)})", fix) from None
            data_start = f.tell()
    except OSError as exc:
        raise _fail(error, what, path, f"it cannot be opened ({exc.strerror or _brief(exc)})",
                    "check its permissions") from None
    if dtype.hasobject:
        raise _fail(error, what, path, "it holds Python objects (an object array), which are never unpickled",
                    "save a numeric array, e.g. numpy.save(p, np.asarray(x, np.float32))")
    if numeric and dtype.kind not in "iuf":
        raise _fail(error, what, path, f"it holds {dtype} values, not numbers",
                    "save a numeric array, e.g. numpy.save(p, np.asarray(x, np.float32))")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise _fail(error, what, path, f"it is truncated ({size} of {expected} bytes for shape {tuple(shape)})",
                    "copy it again or " + fix)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # anything the header check above did not foresee
        raise _fail(error, what, path, f"it is corrupt ({_brief(exc)})", fix) from None


def _not_npy_problem(path: Path, head: bytes) -> str:
    kind = describe_content(head)
    if kind == "a zip archive":
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        except (zipfile.BadZipFile, OSError):
            return "it is a zip archive (a truncated .npz?), not a .npy array"
        if names:
            listed = ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
            return f"it is an .npz archive (arrays {listed}), not a single .npy array"
        return "it is a zip archive, not a .npy array"
    if kind:
        return f"it is {kind}, not a .npy array"
    return f"it is not a .npy file (it starts with {head[:8]!r})"


@contextlib.contextmanager
def _warnings_kept_unless_failed():
    """Hold back the warnings a format library emits while reading; replay them only on success.

    On failure they would be extra stderr lines around the one error line (torch warns about
    pickle protocols, PIL about odd metadata), and the error already says what is wrong.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def open_image(path: Path | str, what: str, error: ErrorType = InputError):
    """A fully decoded PIL image from a user's file, in whatever mode the file has.

    Decoding is forced here, so truncated data fails now rather than when pixels are first
    used. Empty files, text or other formats under an image name (a PDF, an HEIC photo, an
    `.npy`), headers cut short, truncated pixel data and decompression bombs each give their
    own message. Callers check the mode they need.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    data = read_bytes(path, what, error)
    kind = describe_content(data[:_HEAD_BYTES])
    fix = "pass a JPEG or PNG photo"
    try:
        with _warnings_kept_unless_failed():
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError:
        if kind and kind.endswith(" image"):
            problem = f"it starts like {kind} but its header is cut short or corrupt"
            fix = "copy it again or re-save it as JPEG or PNG"
        elif kind:
            problem = f"it is {kind}, not an image this tool can decode"
            fix = "convert it to JPEG or PNG"
        else:
            problem = "it is not an image in a format this tool reads (JPEG, PNG, WebP, BMP, TIFF, GIF)"
            fix = "convert it to JPEG or PNG"
        raise _fail(error, what, path, problem, fix) from None
    except Image.DecompressionBombError as exc:
        raise _fail(error, what, path, f"it is too large to decode safely ({_brief(exc)})",
                    "downscale it first") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... for bad data
        described = kind[kind.index(" ") + 1:] if kind else "image"
        if "truncated" in str(exc).lower():
            problem = f"the {described} data is truncated (the file ends before the image does)"
        else:
            problem = f"the {described} data is corrupt ({_brief(exc)})"
        raise _fail(error, what, path, problem, "copy it again or re-save it as JPEG or PNG") from None
    return image


_PICKLE_REFUSAL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\s+Check the documentation|$)", re.S)


def load_torch_file(path: Path | str, what: str, error: ErrorType = CheckpointError):
    """The object stored in a PyTorch file, loaded with `torch.load(weights_only=True)` on CPU.

    Empty files, other formats (text, an `.npz`, an image), zip archives that are truncated or
    are not PyTorch files, pickles that `weights_only` refuses (a whole pickled model, a
    training checkpoint with Python objects) and corrupt data each give a one-line message.
    Checking what the object is (a state dict?) is up to the caller.
    """
    import torch

    path = require_file(path, what, error)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise _fail(error, what, path, f"it cannot be opened ({exc.strerror or _brief(exc)})",
                    "check its permissions") from None
    if not head:
        raise _fail(error, what, path, "it is empty (0 bytes)",
                    "it was probably cut short while being copied; copy it again from the training run")
    kind = describe_content(head)
    again = "copy it again from the training run"
    if kind == "a zip archive":
        # torch's own message for a cut-off zip is a paragraph about miniz internals
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise _fail(error, what, path, "it is truncated or corrupt (its zip archive is incomplete)", again) from None
        if not any(name.endswith("data.pkl") for name in names):
            npz = " (an .npz of NumPy arrays?)" if any(n.endswith(".npy") for n in names) else ""
            raise _fail(error, what, path, f"it is a zip archive but not a PyTorch file{npz}",
                        "pass the .pth file that torch.save wrote") from None
    elif kind != "a Python pickle":
        # pre-1.6 PyTorch files are pickles; anything else is not a checkpoint at all
        problem = f"it is {kind}, not a PyTorch file" if kind else \
            f"it is not a PyTorch file (neither a zip archive nor a pickle; it starts with {head[:8]!r})"
        raise _fail(error, what, path, problem, "pass the .pth file that torch.save wrote")
    try:
        with _warnings_kept_unless_failed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            raise _fail(error, what, path, f"torch.load(weights_only=True) refuses it: {_refusal_reason(message)} "
                        "(a whole pickled model or a training checkpoint?"
                        f"{' or a truncated file?' if kind == 'a Python pickle' else ''})",
                        "where you trust the file, load it with weights_only=False and save the state dict "
                        "alone: torch.save(net.state_dict(), path)") from None
        raise _fail(error, what, path, f"it is corrupt ({exc.__class__.__name__}: {_brief(exc)})", again) from None


def _refusal_reason(message: str) -> str:
    """The gist of torch's multi-paragraph weights_only refusal: which global or opcode it hit."""
    found = _PICKLE_REFUSAL.search(message)
    reason = found.group(1) if found else ""
    name = re.search(r"GLOBAL (\S+) was not an allowed global", reason)
    if name:
        return f"it pickles {name.group(1)}, which is not a tensor"
    if reason:
        return f"it pickles Python objects besides tensors ({_brief(reason.split('. ')[0])})"
    return "it pickles Python objects besides tensors"
