"""Motion templates: the per-frame driving motion, saved once and replayed onto any source.

Our format is a single `.npz` written with `np.savez` and read back with `allow_pickle=False`: one
float32 array per quantity with the frames on the first axis, plus a `liveportrait_meta` entry, a
uint8 array holding UTF-8 JSON (`format`, `version`, `fps`, `n_frames`, `source`). Every entry's
header is checked (name, dtype, shape, size) before its data is read, so a hostile file cannot
make the loader allocate more than the limits allow or run code.

The official LivePortrait `.pkl` templates can be imported with `load_official_pickle`, but only
when the caller opts in (the CLI's `--trust-pickle`), and even then through an unpickler that
accepts nothing but plain containers and numpy arrays.
"""

import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.media import MediaLimits
from common.motion_template import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_SHAPES,
    META_KEY,
    REQUIRED,
    check_archive,
)
from engines.media.errors import MediaError

MAX_TEMPLATE_FRAMES = 216_000
MAX_TEMPLATE_BYTES = 512 * 1024 * 1024
_MAX_FPS = 1000.0
_LIMITS = MediaLimits(
    max_image_pixels=0, max_video_pixels=0, max_frames=MAX_TEMPLATE_FRAMES, max_seconds=math.inf
)
"""A template file's bounds: its frames (no duration limit here; a job's limits are the gateway's)."""
_FRAME_SHAPES = FRAME_SHAPES  # per-frame shape of every array (common.motion_template: the format's facts)
_REQUIRED = REQUIRED
_TRUST_HINT = (
    "pickle files can run arbitrary code when loaded; pass --trust-pickle only for a template "
    "from a source you trust"
)


def _bad(message: str) -> MediaError:
    return MediaError("bad_template", message)


@dataclass(frozen=True, eq=False)
class MotionTemplate:
    """Per-frame motion, each array float32 with N frames on axis 0.

    exp (N,21,3) expression deltas, R (N,3,3) head rotation, scale (N,1), t (N,3) translation;
    kp (N,21,3) canonical and x_s (N,21,3) transformed keypoints, absent from older official
    templates; c_eyes (N,2) and c_lip (N,1) eye/lip openness ratios, optional.
    Arrays are converted to C-contiguous float32 and validated on construction.
    """

    fps: float
    exp: np.ndarray
    R: np.ndarray
    scale: np.ndarray
    t: np.ndarray
    kp: np.ndarray | None = None
    x_s: np.ndarray | None = None
    c_eyes: np.ndarray | None = None
    c_lip: np.ndarray | None = None
    source_name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.fps, bool) or not isinstance(self.fps, Real) or not 0 < self.fps <= _MAX_FPS:
            raise _bad(f"fps must be in (0, {_MAX_FPS:g}], got {self.fps!r}")
        if not isinstance(self.source_name, str) or len(self.source_name) > 1024:
            raise _bad("source_name must be a string of at most 1024 characters")
        n_frames = np.shape(self.exp)[0] if np.ndim(self.exp) else 0
        if not 1 <= n_frames <= MAX_TEMPLATE_FRAMES:
            raise _bad(f"a template needs 1 to {MAX_TEMPLATE_FRAMES} frames, got {n_frames}")
        for name, frame_shape in _FRAME_SHAPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            try:
                array = np.ascontiguousarray(value, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise _bad(f"{name} is not a numeric array: {exc}") from exc
            if array.shape != (n_frames, *frame_shape):
                raise _bad(f"{name} must have shape {(n_frames, *frame_shape)}, got {array.shape}")
            if not np.isfinite(array).all():
                raise _bad(f"{name} contains NaN or infinite values")
            object.__setattr__(self, name, array)
        object.__setattr__(self, "fps", float(self.fps))

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return self.exp.shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """The present per-frame arrays by name."""
        return {name: getattr(self, name) for name in _FRAME_SHAPES if getattr(self, name) is not None}


def template_kind(path: str | os.PathLike[str]) -> Literal["npz", "pickle"] | None:
    """Recognise a template by content: our `.npz` (zip with our metadata entry) or a pickle."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return "npz" if f"{META_KEY}.npy" in archive.namelist() else None
        except zipfile.BadZipFile:
            return None
    return None


def is_motion_template(path: str | os.PathLike[str]) -> bool:
    """Whether `path` looks like a motion template (ours or an official pickle), by content."""
    return template_kind(path) is not None


def save_template(path: str | os.PathLike[str], template: MotionTemplate) -> None:
    """Write `template` as our `.npz` format (atomically: written aside, then renamed)."""
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fps": template.fps,
        "n_frames": template.n_frames,
        "source": template.source_name,
    }
    # Any values: mypy matches **entries against savez's `allow_pickle: bool` keyword too
    entries: dict[str, Any] = {
        META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **template.arrays(),
    }
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as fh:
            np.savez(fh, **entries)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def load_template(path: str | os.PathLike[str]) -> MotionTemplate:
    """Read and validate our `.npz` format; anything else raises MediaError `bad_template`."""
    kind = template_kind(path)
    if kind == "pickle":
        raise _bad(f"{Path(path).name} is a pickle (an official LivePortrait template); {_TRUST_HINT}")
    if kind != "npz":
        raise _bad(f"{Path(path).name} is not a motion template")
    if os.path.getsize(path) > MAX_TEMPLATE_BYTES:
        raise _bad(f"the template exceeds {MAX_TEMPLATE_BYTES} bytes")
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_npz(archive)
    except MediaError:
        raise
    except Exception as exc:  # whatever breaks while parsing untrusted bytes, the file is bad
        raise _bad(f"unreadable template: {exc!r}") from exc


def load_official_pickle(path: str | os.PathLike[str], trust_pickle: bool) -> MotionTemplate:
    """Import an official LivePortrait `.pkl` template; refused unless `trust_pickle` is True.

    Accepts the layout written by the official `make_motion_template`: a dict with `n_frames`,
    `output_fps`, `motion` (one dict per frame of `scale`, `R` (or legacy `R_d`), `exp`, `t` and
    optionally `kp`, `x_s`, each with a leading batch dimension of 1), and optionally `c_eyes_lst`
    / `c_lip_lst` (or legacy `c_d_eyes_lst` / `c_d_lip_lst`).
    """
    name = Path(path).name
    if not trust_pickle:
        raise _bad(f"refusing to load {name}: {_TRUST_HINT}")
    if template_kind(path) != "pickle":
        raise _bad(f"{name} is not a pickle file")
    if os.path.getsize(path) > MAX_TEMPLATE_BYTES:
        raise _bad(f"the template exceeds {MAX_TEMPLATE_BYTES} bytes")
    try:
        with open(path, "rb") as fh:
            data = _NumpyUnpickler(fh).load()
    except Exception as exc:  # whatever breaks while parsing untrusted bytes, the file is bad
        raise _bad(f"cannot unpickle {name}: {exc}") from exc
    return _from_official(data, name)


def load_motion_template(path: str | os.PathLike[str], trust_pickle: bool = False) -> MotionTemplate:
    """Load either format, dispatching on content (pickles still need `trust_pickle`)."""
    if template_kind(path) == "pickle":
        return load_official_pickle(path, trust_pickle)
    return load_template(path)


def _read_npz(archive: zipfile.ZipFile) -> MotionTemplate:
    meta = check_archive(archive, _LIMITS, MAX_TEMPLATE_BYTES)
    arrays: dict[str, np.ndarray] = {}
    for key in _FRAME_SHAPES:
        if f"{key}.npy" in archive.namelist():
            with archive.open(f"{key}.npy") as fh:
                arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
    return MotionTemplate(fps=meta["fps"], source_name=meta["source"], **arrays)


class _NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and scalars and nothing else.

    Arrays arrive through `_reconstruct` (protocols 2-4) or `_frombuffer` (protocol 5), under
    `numpy.core` or numpy 2's `numpy._core`; `_codecs.encode` is how protocol 2 stores raw bytes.
    """

    _ALLOWED = frozenset(
        {
            ("_codecs", "encode"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"the template references {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _from_official(data: object, name: str) -> MotionTemplate:
    if not isinstance(data, dict) or not isinstance(data.get("motion"), list) or not data["motion"]:
        raise _bad(f"{name} does not have the official template layout (a dict with a 'motion' list)")
    motion: list[Any] = data["motion"]
    if not all(isinstance(item, dict) for item in motion):
        raise _bad(f"{name}: every 'motion' entry must be a dict")
    n_frames = data.get("n_frames", len(motion))
    if n_frames != len(motion):
        raise _bad(f"{name}: n_frames is {n_frames!r} but 'motion' has {len(motion)} entries")
    if len(motion) > MAX_TEMPLATE_FRAMES:
        raise _bad(f"{name} has more than {MAX_TEMPLATE_FRAMES} frames")
    per_frame: dict[str, list[Any]] = {}
    for key in ("exp", "R", "scale", "t", "kp", "x_s"):
        aliases = ("R", "R_d") if key == "R" else (key,)
        values = [next((item[a] for a in aliases if a in item), None) for item in motion]
        present = sum(value is not None for value in values)
        if present == len(values):
            per_frame[key] = values
        elif present or key in _REQUIRED:
            raise _bad(f"{name}: {key!r} is missing from {len(values) - present} of {len(values)} frames")
    for key, aliases in (("c_eyes", ("c_eyes_lst", "c_d_eyes_lst")), ("c_lip", ("c_lip_lst", "c_d_lip_lst"))):
        ratios = next((data[a] for a in aliases if data.get(a) is not None), None)
        if ratios is None:
            continue
        if not isinstance(ratios, list) or len(ratios) != len(motion):
            raise _bad(f"{name}: {aliases[0]} must be a list with one entry per frame")
        per_frame[key] = ratios
    arrays = {key: _stack(values, _FRAME_SHAPES[key], f"{name}: {key}") for key, values in per_frame.items()}
    return MotionTemplate(fps=data.get("output_fps") or 25, source_name=name, **arrays)


def _stack(values: list[Any], frame_shape: tuple[int, ...], what: str) -> np.ndarray:
    """Stack per-frame values, each holding exactly prod(frame_shape) numbers (batch dims of 1 ok)."""
    size = math.prod(frame_shape)
    frames = []
    for value in values:
        array = np.asarray(value)
        if array.dtype.kind not in "fiu" or array.size != size:
            raise _bad(f"{what} entries must hold {size} numbers each, got {array.dtype} {array.shape}")
        frames.append(array.astype(np.float32).reshape(frame_shape))
    return np.stack(frames)


__all__ = [
    "FORMAT_VERSION",
    "MAX_TEMPLATE_BYTES",
    "MAX_TEMPLATE_FRAMES",
    "MotionTemplate",
    "is_motion_template",
    "load_motion_template",
    "load_official_pickle",
    "load_template",
    "save_template",
    "template_kind",
]
