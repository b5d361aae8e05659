"""Paste a 512x512 animated crop back into the original frame with the official feathered mask.

mask = warp(mask_template, crop->original) / 255 (bilinear, zero border);
out = uint8(clip(mask * warp(result) + (1 - mask) * original, 0, 255)) (truncating, as the official
code does). The warped mask depends only on the transform and the frame size, so it is computed
once and cached. The crop is warped over the whole frame (cheap with OpenCV, and bit-identical to
the official call) but blended only inside the mask's bounding box; pixels outside it are the
original's exactly.

`paste_back_frames` is the batched torch version for frames on a device. It reproduces OpenCV's
``warpAffine(INTER_LINEAR)`` arithmetic exactly (sample positions in 1/32 pixel from 10-bit fixed-point
row and column offsets, 15-bit integer weights), so its frames equal `paste_back`'s bit for bit (checked
with OpenCV 4.14, whose default, accurate warpAffine is that fixed-point code). It works in pieces that
keep its working set within a byte budget; a piece short of device memory is split, or done on the host.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.face.crop import as_3x3, as_3x3_batch, bilinear_taps, full_255
from engines.model import to_uint8_frames

MASK_TEMPLATE_PATH = Path(__file__).parents[1] / "data" / "mask_template.png"

Roi = tuple[int, int, int, int]

_AB_BITS = 10  # OpenCV's fixed-point precision of affine sample positions
_INTER_BITS = 5  # sample positions are rounded to 1/32 pixel
_COEF_BITS = 15  # bilinear weights are integers summing to 2**15

PASTE_BYTES_PER_PIXEL = 192
"""Working bytes of `paste_back_frames` per pasted pixel (sample positions, taps and weights in
int64/int32, the float blend): an upper bound of the ~165-180 measured by
tests/engines/face/test_pasteback.py."""
CROP_WORKING_BYTES = 7 << 20
"""Working bytes per frame of a piece besides its pixels: the crop made uint8 (two float copies of the
512x512 RGB render on the way) with its mask; measured 6.3 MB."""
PASTE_BUDGET_BYTES = 1 << 30
"""The default bound on `paste_back_frames`' working set: 1 GiB (a batch of 16 frames of 512x512 in one
piece); a batch of 8 at 4096x4096 would need ~26 GB in one piece."""
MIN_PIECE_PIXELS = 1 << 16
"""A piece that runs out of device memory is split in halves down to this size, then done on the host."""


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
    nonzero: np.ndarray = np.any(mask.reshape(mask.shape[0], mask.shape[1], -1), axis=2)
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


@lru_cache(maxsize=4)
def _mask_template_on(device: torch.device) -> torch.Tensor:
    """The mask template as a (1,512,512,1) uint8 tensor on ``device`` (one copy per device).

    Made outside inference mode, so the cached copy is an ordinary tensor whatever the first caller's mode.
    """
    with torch.inference_mode(False):
        return torch.from_numpy(mask_template().copy()).to(device).view(1, *mask_template().shape, 1)


def _paste_roi(M_c2o: np.ndarray, height: int, width: int) -> Roi | None:
    """Union over the batch of the (y0, y1, x0, x1) boxes that the crops of (B,3,3) M_c2o can change.

    A bilinear sample of a 512 crop is non-zero only at crop positions inside (-1, 512); the box is
    that of the crop square grown by one crop pixel (more than the 1/64-pixel rounding of the
    positions), padded by one frame pixel and clipped to the frame.
    """
    if len(M_c2o) == 0:
        return None
    side = mask_template().shape[0]
    corners = np.array([[-2.0, -2.0], [side + 1.0, -2.0], [-2.0, side + 1.0], [side + 1.0, side + 1.0]])
    points = corners @ M_c2o[:, :2, :2].transpose(0, 2, 1) + M_c2o[:, None, :2, 2]
    x0, y0 = np.floor(points.min(axis=(0, 1))) - 1
    x1, y1 = np.ceil(points.max(axis=(0, 1))) + 2
    x0, x1 = int(np.clip(x0, 0, width)), int(np.clip(x1, 0, width))
    y0, y1 = int(np.clip(y0, 0, height)), int(np.clip(y1, 0, height))
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _fixed_point_positions(
    M_c2o: np.ndarray, roi: Roi, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's warpAffine sample positions in 1/32 crop pixel for the frame pixels of ``roi``.

    M_c2o (B,3,3) maps crop to frame pixels. Returns the crop positions x and y (B,h,w) int64 in units
    of 1/32 pixel (``>> 5`` is the pixel, ``& 31`` the fraction). As in OpenCV, the inverse map and
    the row and column offsets are computed in float64 and each rounded to 10-bit fixed point.
    """
    y0, y1, x0, x1 = roi
    m = M_c2o[:, :2].reshape(-1, 6).T
    det = m[0] * m[4] - m[1] * m[3]
    inv_det = np.divide(1.0, det, out=np.zeros_like(det), where=det != 0)
    a11, a12, a21, a22 = m[4] * inv_det, m[1] * -inv_det, m[3] * -inv_det, m[0] * inv_det
    b1 = -a11 * m[2] - a12 * m[5]
    b2 = -a21 * m[2] - a22 * m[5]
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    scale = float(1 << _AB_BITS)
    shift = _AB_BITS - _INTER_BITS
    round_delta = 1 << (shift - 1)

    def fixed(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.rint(values).astype(np.int64)).to(device)

    col_x, col_y = fixed(a11[:, None] * xs * scale), fixed(a21[:, None] * xs * scale)
    row_x = fixed((a12[:, None, None] * ys + b1[:, None, None]) * scale) + round_delta
    row_y = fixed((a22[:, None, None] * ys + b2[:, None, None]) * scale) + round_delta
    return (row_x + col_x[:, None, :]) >> shift, (row_y + col_y[:, None, :]) >> shift


def _warp_fixed_point(source: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B,h,w,C) uint8 of (B,H,W,C) uint8 ``source`` at 1/32-pixel positions x, y (B,h,w).

    OpenCV's INTER_LINEAR on uint8 with a zero border: integer weights (32-fx)(32-fy)*32 etc. summing to
    2**15, the weighted sum rounded by (sum + 2**14) >> 15.
    """
    one = 1 << _INTER_BITS
    ix, iy = x >> _INTER_BITS, y >> _INTER_BITS
    fx = (x & (one - 1)).to(torch.int32)[..., None]
    fy = (y & (one - 1)).to(torch.int32)[..., None]
    unit = 1 << (_COEF_BITS - 2 * _INTER_BITS)

    t00, t10, t01, t11 = (tap.to(torch.int32) for tap in bilinear_taps(source, ix, iy))
    top = t00 * (one - fx) + t10 * fx
    bottom = t01 * (one - fx) + t11 * fx
    total = (top * (one - fy) + bottom * fy) * unit
    return ((total + (1 << (_COEF_BITS - 1))) >> _COEF_BITS).clamp(0, 255).to(torch.uint8)


def paste_pieces(batch: int, roi: Roi, budget_bytes: int) -> list[tuple[slice, list[Roi]]]:
    """How `paste_back_frames` splits its work so that its working set stays within `budget_bytes`:
    chunks of frames, each with the boxes pasted one after the other. Whole frames' boxes while one
    fits, else one frame at a time in boxes of rows (one row at least). A chunk of f frames pasting
    boxes of p pixels needs at most f * (CROP_WORKING_BYTES + p * PASTE_BYTES_PER_PIXEL)."""
    y0, y1, x0, x1 = roi
    frame_bytes = CROP_WORKING_BYTES + (y1 - y0) * (x1 - x0) * PASTE_BYTES_PER_PIXEL
    if frame_bytes <= budget_bytes:
        step = budget_bytes // frame_bytes
        return [(slice(i, min(i + step, batch)), [roi]) for i in range(0, batch, step)]
    rows = max(1, (budget_bytes - CROP_WORKING_BYTES) // ((x1 - x0) * PASTE_BYTES_PER_PIXEL))
    boxes = [(y, min(y + rows, y1), x0, x1) for y in range(y0, y1, rows)]
    return [(slice(i, i + 1), boxes) for i in range(batch)]


def _halves(frames: int, roi: Roi) -> list[tuple[slice, Roi]] | None:
    """A piece split in two (its frames, else its rows), or None when it is too small to split."""
    y0, y1, x0, x1 = roi
    if frames * (y1 - y0) * (x1 - x0) <= MIN_PIECE_PIXELS:
        return None
    if frames > 1:
        return [(slice(0, frames // 2), roi), (slice(frames // 2, frames), roi)]
    if y1 - y0 < 2:
        return None
    mid = (y0 + y1) // 2
    return [(slice(0, 1), (y0, mid, x0, x1)), (slice(0, 1), (mid, y1, x0, x1))]


def _crops_with_mask(results: torch.Tensor) -> torch.Tensor:
    """(f,512,512,4) uint8: the (f,3,512,512) renders as uint8 frames, the mask template as 4th channel."""
    mask = _mask_template_on(results.device).expand(len(results), -1, -1, -1)
    return torch.cat([to_uint8_frames(results), mask], dim=3)


def _paste_piece(
    source: torch.Tensor, M_c2o: np.ndarray, out: torch.Tensor, roi: Roi, on_host: bool = False
) -> None:
    """Blend (f,512,512,4) `source` (`_crops_with_mask`) into the box `roi` of (f,H,W,3) `out`, in place.

    on_host: compute on the CPU (the device ran out of memory), then copy the box back.
    """
    device = torch.device("cpu") if on_host else source.device
    y0, y1, x0, x1 = roi
    warped = _warp_fixed_point(source.to(device), *_fixed_point_positions(M_c2o, roi, device))
    m = warped[..., 3:].float() / full_255(device)
    original = out[:, y0:y1, x0:x1].to(device).float()
    blend = m * warped[..., :3].float() + (1.0 - m) * original
    out[:, y0:y1, x0:x1] = blend.clamp(0, 255).to(torch.uint8)


def _paste_or_split(source: torch.Tensor, M_c2o: np.ndarray, out: torch.Tensor, roi: Roi) -> None:
    """`_paste_piece`; when the device runs out of memory, the piece is pasted in halves (down to
    MIN_PIECE_PIXELS), and a piece that cannot be split is pasted on the host. A piece writes `out`
    only once it is computed, so a failed one leaves it as it was."""
    try:
        _paste_piece(source, M_c2o, out, roi)
        return
    except torch.cuda.OutOfMemoryError:
        halves = _halves(len(source), roi)
    if halves is None:
        _paste_piece(source, M_c2o, out, roi, on_host=True)
        return
    for frames, box in halves:
        _paste_or_split(source[frames], M_c2o[frames], out[frames], box)


def paste_back_frames(
    results: torch.Tensor,
    M_c2o: np.ndarray | torch.Tensor,
    originals: torch.Tensor,
    *,
    budget_bytes: int = PASTE_BUDGET_BYTES,
) -> torch.Tensor:
    """Batched torch `paste_back` on the device of ``results``: returns (B,H,W,3) uint8 frames.

    results: the renderer's (B,3,512,512) float output in [0,1], made uint8 by `to_uint8_frames`
    first; M_c2o: crop->original transform, (2,3)/(3,3) shared or (B,2,3)/(B,3,3) per frame;
    originals: (H,W,3) uint8 shared by the batch or (B,H,W,3) per frame, on the same device.
    Only the box that the crops can reach is computed; the rest of each frame is its original's.
    The frames equal `paste_back(to_uint8_frames(results)[i].numpy(), M, original)` bit for bit.

    Besides its inputs and output, it needs about PASTE_BYTES_PER_PIXEL bytes per pasted pixel: the
    work is done in pieces (`paste_pieces`) whose working set stays within `budget_bytes`, with the
    same result; a piece that runs out of device memory is split further, or done on the host.
    """
    side = mask_template().shape[0]
    if results.ndim != 4 or results.shape[1:] != (3, side, side):
        raise ValueError(f"results must be (B,3,{side},{side}), got {tuple(results.shape)}")
    b = results.shape[0]
    if originals.ndim == 3:
        originals = originals.unsqueeze(0).expand(b, -1, -1, -1)
    if originals.ndim != 4 or originals.shape[0] != b or originals.shape[3] != 3:
        raise ValueError(f"originals must be (H,W,3) or ({b},H,W,3), got {tuple(originals.shape)}")
    if originals.dtype != torch.uint8:
        raise ValueError(f"originals must be uint8, got {originals.dtype}")
    if originals.device != results.device:
        raise ValueError(f"originals are on {originals.device}, results on {results.device}")
    height, width = originals.shape[1:3]
    M = as_3x3_batch(M_c2o, b)
    out = originals.clone(memory_format=torch.contiguous_format)
    roi = _paste_roi(M, height, width)
    if roi is None:
        return out
    for frames, boxes in paste_pieces(b, roi, budget_bytes):
        source = _crops_with_mask(results[frames])
        for box in boxes:
            _paste_or_split(source, M[frames], out[frames], box)
    return out
