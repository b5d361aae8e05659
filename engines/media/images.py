"""Still images: read JPEG/PNG/WebP to RGB after the header checks; write PNG/JPEG/WebP."""

import os
from pathlib import Path

import cv2
import numpy as np

from engines.media.errors import Limits, MediaError
from engines.media.probe import probe
from engines.media.sniff import mapped

_ENCODE_PARAMS: dict[str, list[int]] = {
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
}


def read_image(path: str | os.PathLike[str], limits: Limits | None = None) -> np.ndarray:
    """Decode an image to a uint8 HxWx3 RGB array.

    The size is checked against `limits` from the header and the file's structure is validated
    before decoding (see `probe` for the errors). Decoding is OpenCV's, as in the official
    LivePortrait: alpha is dropped, 16-bit and grey images become 8-bit RGB, and the EXIF
    orientation is applied (so width and height may come out swapped relative to the header).
    """
    info = probe(path, limits)
    if info.kind != "image":
        raise MediaError("unsupported_media", "expected an image (JPEG, PNG or WebP), got a video")
    with mapped(Path(path)) as buf:
        bgr = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError("corrupt_media", f"cannot decode the {info.format} image")
    if bgr.shape[:2] not in ((info.height, info.width), (info.width, info.height)):
        raise MediaError("corrupt_media", "the decoded size differs from the header's")
    return np.ascontiguousarray(bgr[..., ::-1])


def write_image(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write a uint8 HxWx3 RGB array; the format follows the suffix (.png, .jpg/.jpeg, .webp)."""
    path = Path(path)
    suffix = path.suffix.lower()
    params = _ENCODE_PARAMS.get(suffix)
    if params is None:
        raise ValueError(f"cannot write {path.suffix!r} images; use .png, .jpg or .webp")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got {rgb.dtype} {rgb.shape}")
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {suffix}")
    path.write_bytes(encoded.tobytes())
