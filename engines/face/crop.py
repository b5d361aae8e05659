"""Face-crop geometry of the LivePortrait pipeline: crop boxes, similarity transforms, crops.

Conventions (numerically checked against the official release):

* A crop box is a square of side ``size`` centred at ``center`` (image pixels, x right, y down),
  rotated by ``angle`` (radians). The crop's x axis is the face's ``u_x`` direction and its y axis
  the face's "down" direction ``u_y`` (eye centre -> lip centre).
* The original->crop similarity for a crop of side ``dsize`` is, with ``s = dsize / size``,
  ``c = cos(angle)``, ``n = sin(angle)`` and ``(cx, cy) = center``::

      [[ s*c, s*n, dsize/2 - s*( c*cx + n*cy)],
       [-s*n, s*c, dsize/2 - s*(-n*cx + c*cy)],
       [   0,   0, 1                         ]]

  so the box centre lands on the crop centre. Nothing is rounded.
* Crops are sampled with exact bilinear interpolation and a zero border, rounded to the nearest
  integer for uint8 images. (OpenCV's ``warpAffine`` quantises sample positions to 1/32 pixel and
  can differ from that by a few grey levels on sharp edges.)
* `crop_frames` and `to_network_input_frames` are the batched torch versions of `crop_image` and
  `to_network_input`: they run on the device of their input frames and give the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

SOURCE_SCALE = 2.3
SOURCE_VY_RATIO = -0.125
DRIVING_SCALE = 2.2
DRIVING_VY_RATIO = -0.1
CROP_SIZE = 512
NETWORK_SIZE = 256

_EYES_106 = ([33, 35, 40, 39], [87, 89, 94, 93])
_LIPS_106 = (52, 61)
_EYES_203 = ([0, 6, 12, 18], [24, 30, 36, 42])
_LIPS_203 = (48, 66)


@dataclass(frozen=True, eq=False)
class CropBox:
    """A square crop region: ``center`` (2,) in image pixels, side ``size``, ``angle`` in radians."""

    center: np.ndarray
    size: float
    angle: float = 0.0


class DrivingCrop(NamedTuple):
    """Driving auto-crop: per-frame boxes (T,4) and their average (4,), each [left, top, right, bottom],
    and the (3,3) original->crop transform of the average box (no rotation)."""

    boxes: np.ndarray
    global_box: np.ndarray
    M_o2c: np.ndarray


def _down_axis(lmk: np.ndarray) -> np.ndarray | None:
    """Unit vector (2,) from the eye centre to the lip centre, or None for an unknown layout."""
    n = lmk.shape[0]
    if n == 106:
        eyes, lips = _EYES_106, _LIPS_106
    elif n == 203:
        eyes, lips = _EYES_203, _LIPS_203
    else:
        return None
    eye_center = (lmk[eyes[0]].mean(axis=0) + lmk[eyes[1]].mean(axis=0)) / 2
    lip_center = (lmk[lips[0]] + lmk[lips[1]]) / 2
    u_y = lip_center - eye_center
    length = float(np.linalg.norm(u_y))
    if length <= 1e-3:
        return np.array([0.0, 1.0])
    return u_y / length


def crop_box_from_face_box(
    box_xyxy: Sequence[float] | np.ndarray,
    scale: float = SOURCE_SCALE,
    vx_ratio: float = 0.0,
    vy_ratio: float = SOURCE_VY_RATIO,
) -> CropBox:
    """Crop box from an axis-aligned face box [left, top, right, bottom] (no landmarks, no rotation).

    size = max(w, h) * scale; center = box centre + (vx_ratio, vy_ratio) * size; angle = 0.
    This is exactly what `crop_box_from_landmarks` gives for an upright face (eye->lip axis pointing
    straight down) whose landmarks have this bounding box. A detector box is not the landmarks'
    bounding box (106/203 points span brows to chin and ear to ear), so a detector path may need
    its own scale and vy_ratio to frame the face the same way.
    """
    left, top, right, bottom = (float(v) for v in box_xyxy)
    size = max(right - left, bottom - top) * scale
    center = np.array([(left + right) / 2 + vx_ratio * size, (top + bottom) / 2 + vy_ratio * size])
    return CropBox(center=center, size=size, angle=0.0)


def crop_box_from_landmarks(
    lmk: np.ndarray,
    scale: float = SOURCE_SCALE,
    vx_ratio: float = 0.0,
    vy_ratio: float = SOURCE_VY_RATIO,
    rotate: bool = True,
) -> CropBox:
    """Crop box from (N,2) landmarks: 106- or 203-point layouts, any other N as a plain point box.

    For 106/203 points: u_y = unit(lip centre - eye centre), u_x = (u_y.y, -u_y.x); the points minus
    their mean m are projected on (u_x, u_y) and their min/max box (centre b, sides w, h) taken;
    size = max(w, h) * scale; center = m + b.x u_x + b.y u_y + (vx_ratio u_x + vy_ratio u_y) size;
    angle = atan2(u_x.y, u_x.x). ``rotate=False`` keeps that centre and size and sets angle = 0
    (as the official code does). Other layouts use their axis-aligned bounding box and
    `crop_box_from_face_box`.
    """
    pts = np.asarray(lmk, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 2:
        raise ValueError(f"landmarks must be (N,2) with N >= 2, got {pts.shape}")
    u_y = _down_axis(pts)
    if u_y is None:
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
        return crop_box_from_face_box(box, scale, vx_ratio, vy_ratio)
    u_x = np.array([u_y[1], -u_y[0]])
    mean = pts.mean(axis=0)
    projected = (pts - mean) @ np.stack([u_x, u_y]).T
    lo, hi = projected.min(axis=0), projected.max(axis=0)
    mid = (lo + hi) / 2
    size = float((hi - lo).max()) * scale
    center = mean + u_x * (mid[0] + vx_ratio * size) + u_y * (mid[1] + vy_ratio * size)
    angle = float(np.arctan2(u_x[1], u_x[0])) if rotate else 0.0
    return CropBox(center=center, size=size, angle=angle)


def crop_transform(box: CropBox, dsize: int = CROP_SIZE) -> np.ndarray:
    """(3,3) float64 similarity mapping original pixels to a dsize x dsize crop of ``box``."""
    s = dsize / box.size
    c, n = np.cos(box.angle), np.sin(box.angle)
    cx, cy = float(box.center[0]), float(box.center[1])
    half = dsize / 2
    return np.array(
        [
            [s * c, s * n, half - s * (c * cx + n * cy)],
            [-s * n, s * c, half - s * (-n * cx + c * cy)],
            [0.0, 0.0, 1.0],
        ]
    )


def as_3x3(M: np.ndarray) -> np.ndarray:
    """A (2,3) or (3,3) affine transform as a (3,3) float64 matrix."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape == (3, 3):
        return M
    if M.shape == (2, 3):
        return np.vstack([M, [0.0, 0.0, 1.0]])
    raise ValueError(f"affine transform must be (2,3) or (3,3), got {M.shape}")


def as_3x3_batch(M: np.ndarray | torch.Tensor, batch: int) -> np.ndarray:
    """Affine transforms for a batch as (batch,3,3) float64 on the host.

    M is (2,3)/(3,3), shared by the batch, or (batch,2,3)/(batch,3,3), one per frame; a tensor is
    copied to the host.
    """
    if isinstance(M, torch.Tensor):
        M = M.detach().to("cpu", torch.float64).numpy()
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 2:
        return np.broadcast_to(as_3x3(M), (batch, 3, 3))
    if M.ndim == 3 and M.shape[0] == batch and M.shape[1:] in ((2, 3), (3, 3)):
        if M.shape[1] == 2:
            M = np.concatenate([M, np.broadcast_to([[0.0, 0.0, 1.0]], (batch, 1, 3))], axis=1)
        return M
    raise ValueError(f"affine transforms must be (2,3), (3,3), ({batch},2,3) or ({batch},3,3), got {M.shape}")


def transform_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply the affine ``M`` ((2,3) or (3,3)) to points (...,2); returns float64 (...,2)."""
    A = as_3x3(M)
    return np.asarray(pts, dtype=np.float64) @ A[:2, :2].T + A[:2, 2]


def warp_affine(
    img: np.ndarray,
    M: np.ndarray,
    dsize: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Exact bilinear warp with a zero border: output pixel (x, y) samples ``img`` at M^-1 (x, y).

    img (H,W) or (H,W,C), uint8 or float; M (2,3)/(3,3) maps ``img`` coordinates to output
    coordinates; dsize = (width, height) of the output. ``offset`` = (x0, y0) returns only the
    window of the full output whose top-left pixel is (x0, y0). uint8 in -> rounded uint8 out,
    float in -> float32 out.
    """
    width, height = dsize
    A = np.linalg.inv(as_3x3(M))
    xs = np.arange(offset[0], offset[0] + width, dtype=np.float64)
    ys = np.arange(offset[1], offset[1] + height, dtype=np.float64)[:, None]
    sx = A[0, 0] * xs + A[0, 1] * ys + A[0, 2]
    sy = A[1, 0] * xs + A[1, 1] * ys + A[1, 2]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    mx0, my0 = x0.astype(np.float32), y0.astype(np.float32)
    mx1, my1 = mx0 + 1, my0 + 1

    def tap(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        out = cv2.remap(img, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape(height, width, *img.shape[2:]).astype(np.float32)

    top = tap(mx0, my0)
    top += fx * (tap(mx1, my0) - top)
    bottom = tap(mx0, my1)
    bottom += fx * (tap(mx1, my1) - bottom)
    out = top + fy * (bottom - top)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def crop_image(img: np.ndarray, M_o2c: np.ndarray, dsize: int = CROP_SIZE) -> np.ndarray:
    """Crop (H,W,C) ``img`` to (dsize,dsize,C) with the original->crop transform (bilinear, zero border)."""
    return warp_affine(img, M_o2c, (dsize, dsize))


def to_network_input(img512: np.ndarray, size: int = NETWORK_SIZE) -> np.ndarray:
    """Resize a (512,512,3) crop to the (size,size,3) network input with area interpolation."""
    return cv2.resize(img512, (size, size), interpolation=cv2.INTER_AREA)


def _check_frames(frames: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``frames`` is a (B,H,W,C) uint8 tensor."""
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"{name} must be (B,H,W,C) uint8, got {tuple(frames.shape)} {frames.dtype}")


def full_255(device: torch.device) -> torch.Tensor:
    """A 0-d float32 255 on ``device``: the divisor of an exact x / 255 on every device.

    CUDA turns a division by a Python number into a multiplication by its float32 reciprocal, which
    can be one ulp off the CPU's (and numpy's) correctly rounded quotient.
    """
    return torch.full((), 255.0, dtype=torch.float32, device=device)


def bilinear_taps(
    frames: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2x2 neighbourhoods of (B,H,W,C) ``frames`` at integer maps x0, y0 (B,h,w).

    Returns the (B,h,w,C) pixels at (x0, y0), (x0+1, y0), (x0, y0+1) and (x0+1, y0+1), with the dtype
    of ``frames``; a pixel outside the frame is 0 (a zero border).
    """
    b, height, width, channels = frames.shape
    flat = frames.reshape(b * height * width, channels)
    base = torch.arange(b, device=frames.device).view(b, 1, 1) * (height * width)
    cols = [((x >= 0) & (x < width), x.clamp(0, width - 1)) for x in (x0, x0 + 1)]
    rows = [((y >= 0) & (y < height), base + y.clamp(0, height - 1) * width) for y in (y0, y0 + 1)]

    def tap(row: torch.Tensor, col: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        pixels = flat.index_select(0, (row + col).view(-1)).view(*inside.shape, channels)
        return torch.where(inside[..., None], pixels, 0)

    t00, t10, t01, t11 = (
        tap(row, col, row_inside & col_inside) for row_inside, row in rows for col_inside, col in cols
    )
    return t00, t10, t01, t11


def crop_frames(
    frames: torch.Tensor, M_o2c: np.ndarray | torch.Tensor, dsize: int = CROP_SIZE
) -> torch.Tensor:
    """Batched torch `crop_image`: (B,H,W,3) uint8 frames -> (B,dsize,dsize,3) uint8 on their device.

    M_o2c: original->crop transform, (2,3)/(3,3) shared by the batch or (B,2,3)/(B,3,3) per frame.
    Exact bilinear sampling with a zero border, rounded to nearest, with the arithmetic of
    `warp_affine` (float64 sample positions, float32 weights), so the crops equal `crop_image`'s.
    """
    _check_frames(frames, "frames")
    b, height, width, _ = frames.shape
    A = torch.from_numpy(np.linalg.inv(as_3x3_batch(M_o2c, b))[:, :2]).to(frames.device)
    xs = torch.arange(dsize, dtype=torch.float64, device=frames.device)
    ys = xs[:, None]

    def source(row: int, extent: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer part (B,dsize,dsize) int64 and fraction (B,dsize,dsize,1) float32 of one coordinate.

        The integer part is clamped to [-2, extent], which keeps both taps of an outside position outside.
        """
        a = A[:, row, :, None, None]
        pos = a[:, 0] * xs + a[:, 1] * ys + a[:, 2]
        lower = pos.floor()
        return lower.clamp(-2, extent).long(), (pos - lower).float()[..., None]

    x0, fx = source(0, width)
    y0, fy = source(1, height)

    t00, t10, t01, t11 = (tap.float() for tap in bilinear_taps(frames, x0, y0))
    top = t00 + fx * (t10 - t00)
    bottom = t01 + fx * (t11 - t01)
    out = top + fy * (bottom - top)
    return out.round().clamp(0, 255).to(torch.uint8)


def to_network_input_frames(crops512: torch.Tensor, size: int = NETWORK_SIZE) -> torch.Tensor:
    """Batched torch `image_to_tensor(to_network_input(crop))`: (B,H,W,3) uint8 -> (B,3,size,size) float32.

    Values in [0,1]; H and W must be integer multiples of ``size`` (512 -> 256 in the pipeline). The
    area resize is OpenCV's INTER_AREA on uint8, bit for bit: a 2x2 block gives (sum + 2) >> 2, any
    other kx x ky block round-half-even(float32(sum) * float32(1 / (kx ky))).
    """
    _check_frames(crops512, "crops512")
    b, height, width, channels = crops512.shape
    if height % size or width % size:
        raise ValueError(f"crops of {height}x{width} are not an integer multiple of {size}")
    ky, kx = height // size, width // size
    sums = crops512.to(torch.int32).reshape(b, size, ky, size, kx, channels).sum(dim=(2, 4))
    if (kx, ky) == (2, 2):
        small = (sums + 2) >> 2
    else:
        scale = torch.full((), 1.0 / (kx * ky), dtype=torch.float32, device=crops512.device)
        small = (sums.float() * scale).round()
    return small.to(torch.uint8).permute(0, 3, 1, 2).float().div(full_255(crops512.device))


def _xyxy(box: CropBox) -> np.ndarray:
    """Axis-aligned [left, top, right, bottom] (4,) of a box, ignoring its angle."""
    half = box.size / 2
    cx, cy = float(box.center[0]), float(box.center[1])
    return np.array([cx - half, cy - half, cx + half, cy + half])


def driving_global_box(
    lmks: Sequence[np.ndarray] | np.ndarray,
    scale: float = DRIVING_SCALE,
    vx_ratio: float = 0.0,
    vy_ratio: float = DRIVING_VY_RATIO,
    dsize: int = CROP_SIZE,
) -> DrivingCrop:
    """The official driving-video auto-crop from per-frame landmarks (T,N,2).

    Each frame's box is `crop_box_from_landmarks` without rotation as [cx - size/2, cy - size/2,
    cx + size/2, cy + size/2]; the global box is their mean; the transform crops the global box
    (side = right - left, centre = box centre) to dsize without rotation.
    """
    if len(lmks) == 0:
        raise ValueError("driving_global_box needs at least one frame of landmarks")
    boxes = np.stack(
        [_xyxy(crop_box_from_landmarks(lmk, scale, vx_ratio, vy_ratio, rotate=False)) for lmk in lmks]
    )
    left, top, right, bottom = boxes.mean(axis=0)
    global_box = np.array([left, top, right, bottom])
    center = np.array([(left + right) / 2, (top + bottom) / 2])
    M_o2c = crop_transform(CropBox(center=center, size=float(right - left)), dsize)
    return DrivingCrop(boxes=boxes, global_box=global_box, M_o2c=M_o2c)
