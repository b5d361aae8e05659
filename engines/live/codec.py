"""JPEG in and out of a live session: driving frames checked by their header before decoding."""

import io

import cv2
import numpy as np

from common.live import LiveError
from common.media import MediaError, MediaLimits, inspect_media


def decode_frame(data: bytes, max_pixels: int) -> np.ndarray:
    """A driving frame, JPEG bytes -> (H, W, 3) uint8 RGB. LiveError frame_too_large over `max_pixels`
    (from the header, before decoding), bad_frame for anything that is no decodable JPEG."""
    limits = MediaLimits(
        max_image_pixels=max_pixels, max_video_pixels=max_pixels, max_frames=1, max_seconds=1.0
    )
    try:
        info = inspect_media(io.BytesIO(data), len(data), limits)
    except MediaError as exc:
        raise LiveError("frame_too_large" if exc.code == "too_large" else "bad_frame", exc.message) from exc
    if info.content_type != "image/jpeg":
        raise LiveError("bad_frame", f"a driving frame is one JPEG image, not {info.content_type}")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise LiveError("bad_frame", "the JPEG cannot be decoded")
    return np.ascontiguousarray(bgr[..., ::-1])


def resized(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """`rgb` with its longest side `size` (aspect kept; None: as it is)."""
    h, w = rgb.shape[:2]
    if size is None or max(h, w) == size:
        return rgb
    scale = size / max(h, w)
    dsize = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, dsize, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def encode_frame(rgb: np.ndarray, quality: int, size: int | None = None) -> bytes:
    """An animated frame (H, W, 3) uint8 RGB as JPEG bytes, longest side `size` (None: as it is)."""
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(resized(rgb, size)[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return data.tobytes()
