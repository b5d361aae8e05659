"""Paste a 512x512 animated crop back into the original frame with the official feathered mask.

mask = warp(mask_template, crop->original) / 255 (bilinear, zero border);
out = uint8(clip(mask * warp(result) + (1 - mask) * original, 0, 255)) (truncating, as the official
code does). The warped mask depends only on the transform and the frame size, so it is computed
once and cached. The crop is warped over the whole frame (cheap with OpenCV, and bit-identical to
the official call) but blended only inside the mask's bounding box; pixels outside it are the
original's exactly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from engines.crop import as_3x3

MASK_TEMPLATE_PATH = Path(__file__).with_name("data") / "mask_template.png"

Roi = tuple[int, int, int, int]


@lru_cache(maxsize=1)
def mask_template() -> np.ndarray:
    """The official (512,512) uint8 mask: 255 inside, a 16-pixel linear ramp to 0 at the borders."""
    mask = cv2.imread(str(MASK_TEMPLATE_PATH), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read the paste-back mask template {MASK_TEMPLATE_PATH}")
    mask.flags.writeable = False
    return mask


def _support(mask: np.ndarray) -> Roi | None:
    """Bounding box (y0, y1, x0, x1) of the non-zero pixels of an (H,W,...) mask, or None if empty."""
    nonzero = mask.reshape(mask.shape[0], mask.shape[1], -1).any(axis=2)
    rows = np.flatnonzero(nonzero.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(nonzero.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@lru_cache(maxsize=8)
def _warped_mask(M_bytes: bytes, height: int, width: int) -> tuple[np.ndarray, Roi | None]:
    """Cached warped mask (H,W,1) float32 and its support for one crop->original transform."""
    M = np.frombuffer(M_bytes, dtype=np.float64).reshape(3, 3)
    warped = cv2.warpAffine(mask_template(), M[:2], (width, height), flags=cv2.INTER_LINEAR)
    mask = (warped.astype(np.float32) / 255.0)[..., None]
    mask.flags.writeable = False
    return mask, _support(mask)


def warp_mask(M_c2o: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask template warped into an (H,W) frame by the crop->original transform ((2,3) or (3,3)).

    Returns a read-only (H,W,1) float32 array in [0,1], cached per (transform, shape).
    """
    return _warped_mask(as_3x3(M_c2o).tobytes(), int(shape[0]), int(shape[1]))[0]


def paste_back(
    result512: np.ndarray,
    M_c2o: np.ndarray,
    original: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a (512,512,3) uint8 crop into the (H,W,3) uint8 ``original``; returns a new (H,W,3) uint8.

    M_c2o ((2,3) or (3,3)) maps crop pixels to original pixels. ``mask`` ((H,W), (H,W,1) or (H,W,3),
    values in [0,1]) defaults to `warp_mask(M_c2o, (H,W))`.
    """
    M = as_3x3(M_c2o)
    height, width = original.shape[:2]
    if mask is None:
        mask, roi = _warped_mask(M.tobytes(), height, width)
    else:
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim == 2:
            mask = mask[..., None]
        roi = _support(mask)
    out = original.copy()
    if roi is None:
        return out
    y0, y1, x0, x1 = roi
    warped = cv2.warpAffine(result512, M[:2], (width, height), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1]
    blend = m * warped.astype(np.float32) + (1.0 - m) * original[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(blend, 0, 255).astype(np.uint8)
    return out
