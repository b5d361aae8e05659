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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

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
