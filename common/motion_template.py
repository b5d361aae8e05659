"""Motion templates (`.npz`) as a driving input: the format's facts, and its check by bytes (no numpy).

A template is what `np.savez` writes: a zip of `.npy` entries, one `liveportrait_meta` (uint8 UTF-8
JSON: `format`, `version`, `fps`, `n_frames`, `source`) and one little-endian float32 array per
quantity with the N frames first (`FRAME_SHAPES`). `engines.motion.template` writes and loads them
with numpy (`allow_pickle=False`); the gateway and the worker check them here, through
`common.media.inspect_media(..., motion_templates=True)`, before anything else reads them:

- the zip: only the known entries, each stored or deflated, each at most the size the limits allow
  (a zip bomb is refused from its directory), each read in full once (its checksum verified);
- each `.npy` header (a Python literal, read with `ast.literal_eval`, which evaluates nothing): its
  dtype (`<f4`, `|u1` for the metadata; an object dtype, the one kind whose data is a pickle, is
  refused), C order, its shape (N frames of `FRAME_SHAPES[name]`) and that its data fills the entry;
- the metadata (format, version, a finite fps, N), and N and its duration against the limits.

A pickle (the official `.pkl` templates) is refused by its first bytes: nothing a user sends is
ever unpickled.
"""

from __future__ import annotations

import ast
import json
import math
import struct
import zipfile
from typing import IO, Any

from common.media import MOTION_TEMPLATE, MediaError, MediaInfo, MediaLimits, check_limits

FORMAT_NAME = "liveportrait-motion"
FORMAT_VERSION = 1
META_KEY = "liveportrait_meta"
NUM_KP = 21
FRAME_SHAPES: dict[str, tuple[int, ...]] = {
    "exp": (NUM_KP, 3),
    "R": (3, 3),
    "scale": (1,),
    "t": (3,),
    "kp": (NUM_KP, 3),
    "x_s": (NUM_KP, 3),
    "c_eyes": (2,),
    "c_lip": (1,),
}
"""The shape of one frame of each array; the first four (`REQUIRED`) are in every template."""
REQUIRED = ("exp", "R", "scale", "t")
MAX_META_BYTES = 64 * 1024
"""The largest metadata entry."""

_ARRAY_DTYPE = "<f4"
_META_DTYPE = "|u1"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 4096
_ENTRY_OVERHEAD = 4096  # a .npy header and a zip entry's own headers, generously
_CHUNK = 1024 * 1024
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _bad(message: str) -> MediaError:
    return MediaError("bad_template", message)


def is_pickle(head: bytes) -> bool:
    """Whether a file starting with `head` is a Python pickle (protocol 2 to 5)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def looks_like_template(head: bytes) -> bool:
    """Whether a file starting with `head` is a zip or a pickle: a template, if it is any input at all."""
    return head.startswith(b"PK\x03\x04") or is_pickle(head)


def max_template_bytes(max_frames: int) -> int:
    """The largest template of `max_frames` frames with every array: what a check may read in full."""
    frame_bytes = 4 * sum(math.prod(shape) for shape in FRAME_SHAPES.values())
    return max_frames * frame_bytes + MAX_META_BYTES + _ENTRY_OVERHEAD * (len(FRAME_SHAPES) + 2)


def inspect_template(file: IO[bytes], size: int, limits: MediaLimits, *, available: int) -> MediaInfo:
    """Check a motion template (the first `available` of its `size` bytes are in `file`).

    Raises MediaError bad_template (a pickle, not our format, a wrong entry, dtype or shape, or
    broken), too_large (more bytes than `limits.max_frames` frames take) or too_long (frames or
    seconds over the limits). Returns what it declares; with only part of the file at hand, just
    the type (the worker checks the whole file again).
    """
    file.seek(0)
    head = file.read(4)
    if is_pickle(head):
        raise _bad(
            "a Python pickle (an official .pkl template?), which this service never loads; send a "
            ".npz motion template (`liveportrait motion extract DRIVING -o motion.npz`)"
        )
    bound = max_template_bytes(limits.max_frames)
    if size > bound:
        raise MediaError("too_large", f"a motion template of {size} bytes; at most {bound} for its frames")
    if available < size:
        return MediaInfo(MOTION_TEMPLATE)
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            return _declared(check_archive(archive, limits, bound))
    except MediaError:
        raise
    except Exception as exc:  # whatever breaks while parsing untrusted bytes, the file is bad
        raise _bad(f"not a readable motion template ({type(exc).__name__}: {exc})") from exc


def _declared(meta: dict[str, Any]) -> MediaInfo:
    return MediaInfo(MOTION_TEMPLATE, frames=meta["n_frames"], seconds=meta["n_frames"] / meta["fps"])


def check_archive(archive: zipfile.ZipFile, limits: MediaLimits, bound: int) -> dict[str, Any]:
    """Check an open template: its entries (names, methods, sizes up to `bound` bytes), its metadata
    against `limits` and every array's .npy header (dtype, C order, shape) and checksum; returns the
    metadata (`parse_meta`). The gateway's and the worker's one check before any array is loaded."""
    entries = archive.infolist()
    names = [entry.filename for entry in entries]
    allowed = {f"{key}.npy" for key in (META_KEY, *FRAME_SHAPES)}
    if f"{META_KEY}.npy" not in names:
        raise _bad(f"a zip without the {META_KEY} entry: not a motion template")
    if len(set(names)) != len(names) or not set(names) <= allowed:
        raise _bad(f"unexpected entries in the template: {sorted(set(names) - allowed) or 'duplicates'}")
    for entry in entries:
        if entry.compress_type not in _ZIP_METHODS:
            raise _bad(f"{entry.filename} is compressed with method {entry.compress_type}")
        if entry.file_size > bound:
            message = f"{entry.filename} unpacks to {entry.file_size} bytes; at most {bound}"
            raise MediaError("too_large", message)
    meta = _read_meta(archive)
    check_limits(_declared(meta), limits)
    for key, frame_shape in FRAME_SHAPES.items():
        if f"{key}.npy" in names:
            _check_entry(archive, key, _ARRAY_DTYPE, (meta["n_frames"], *frame_shape))
        elif key in REQUIRED:
            raise _bad(f"the template has no {key!r} array")
    return meta


def _npy_header(archive: zipfile.ZipFile, key: str) -> tuple[dict[str, Any], int]:
    """The header dict of an entry's .npy and where its data starts."""
    with archive.open(f"{key}.npy") as fh:
        prefix = fh.read(10)
        if len(prefix) < 10 or prefix[:6] != _NPY_MAGIC:
            raise _bad(f"{key} is not a .npy array")
        major = prefix[6]
        if major == 1:
            (length,) = struct.unpack("<H", prefix[8:10])
            start = 10
        elif major in (2, 3):
            length = struct.unpack("<I", prefix[8:10] + fh.read(2))[0]
            start = 12
        else:
            raise _bad(f"{key}: unsupported .npy version {major}")
        if length > _MAX_NPY_HEADER:
            raise _bad(f"{key}: a .npy header of {length} bytes")
        text = fh.read(length).decode("utf-8" if major == 3 else "latin-1")
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _bad(f"{key}: malformed .npy header")
    return header, start + length


def _check_entry(archive: zipfile.ZipFile, key: str, dtype: str, shape: tuple[int, ...] | None) -> bytes:
    """Check an entry's .npy header (and, `shape` None, that it is 1-D under MAX_META_BYTES), then read
    it whole (the zip checksum); returns the data of a metadata entry, else b""."""
    header, data_start = _npy_header(archive, key)
    descr, found_shape = header["descr"], header["shape"]
    if not isinstance(descr, str) or "O" in descr:
        raise _bad(f"{key} holds Python objects (a pickle), which this service never loads")
    if descr != dtype:
        raise _bad(f"{key} must be {dtype}, got {descr}")
    if header["fortran_order"] is not False:
        raise _bad(f"{key} must be in C order")
    if not isinstance(found_shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in found_shape):
        raise _bad(f"{key}: malformed shape {found_shape!r}")
    if shape is None:
        if len(found_shape) != 1 or found_shape[0] > MAX_META_BYTES:
            raise _bad(f"{key} must be a 1-D array of at most {MAX_META_BYTES} bytes")
    elif found_shape != shape:
        raise _bad(f"{key} must have shape {shape}, got {found_shape}")
    data_bytes = math.prod(found_shape) * (4 if dtype == _ARRAY_DTYPE else 1)
    if archive.getinfo(f"{key}.npy").file_size != data_start + data_bytes:
        raise _bad(f"{key}: its data does not fill the entry")
    keep = shape is None
    data = bytearray()
    with archive.open(f"{key}.npy") as fh:
        while chunk := fh.read(_CHUNK):
            if keep:
                data.extend(chunk)
    return bytes(data[data_start:])


def _read_meta(archive: zipfile.ZipFile) -> dict[str, Any]:
    return parse_meta(_check_entry(archive, META_KEY, _META_DTYPE, None))


def parse_meta(raw: bytes) -> dict[str, Any]:
    """The metadata entry's UTF-8 JSON checked: {"n_frames": N >= 1, "fps": a positive finite float,
    "source": str}; MediaError bad_template otherwise."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the template metadata is not UTF-8 JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _bad(f"the template metadata does not name the {FORMAT_NAME} format")
    if meta.get("version") != FORMAT_VERSION:
        version = meta.get("version")
        raise _bad(f"unsupported template version {version!r}; this service reads {FORMAT_VERSION}")
    n_frames, fps = meta.get("n_frames"), meta.get("fps")
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise _bad(f"the template metadata has an invalid n_frames {n_frames!r}")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise _bad(f"the template metadata has an invalid fps {fps!r}")
    source = meta.get("source", "")
    if not isinstance(source, str):
        raise _bad("the template metadata has an invalid source name")
    return {"n_frames": n_frames, "fps": float(fps), "source": source}
