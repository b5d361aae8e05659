"""203-point landmarks seeded from face boxes: the licence-clean stack.

LivePortrait's 203-point model (``landmark.onnx``, MIT) only needs a rough face region to start
from. A box detector (OpenCV's Haar cascade or MediaPipe's BlazeFace) gives that region; the model
runs on an upright crop around the box (the detector's :class:`BoxFraming`), then again on a crop
around its own landmarks (rotation-aware, as LivePortrait crops for it), which corrects the box's
framing. Video frames are tracked as the official code tracks them: the model runs on a crop around
the previous frame's 203 points, and the detector is asked again only when the face is lost.

A tracked face is *lost* when its points are not all finite, when fewer than half of them lie in
the frame, when their spread (RMS distance from their centroid) is under ``MIN_SPREAD_PX``, or when
that spread changed more than ``MAX_SPREAD_CHANGE`` times from the previous frame's (no head moves
that much between frames; the model has latched onto something else).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engines.face.detection import BoxDetector, BoxFraming, Face, check_rgb_image
from engines.face.detection.landmarks import Landmark203

MIN_INSIDE_FRACTION = 0.5
MIN_SPREAD_PX = 2.0
MAX_SPREAD_CHANGE = 2.0


def spread(points: np.ndarray) -> float:
    """RMS distance of ``(N, 2)`` points from their centroid, in pixels."""
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def is_lost(points: np.ndarray, frame_hw: tuple[int, int], prev: np.ndarray | None = None) -> bool:
    """Whether ``(203, 2)`` landmarks in a frame of ``frame_hw`` (H, W) no longer follow a face
    (the rules in the module docstring; ``prev``: the previous frame's points, if tracked)."""
    if not np.isfinite(points).all():
        return True
    h, w = frame_hw
    x, y = points[:, 0], points[:, 1]
    if ((x >= 0) & (x < w) & (y >= 0) & (y < h)).mean() < MIN_INSIDE_FRACTION:
        return True
    s = spread(points)
    if s < MIN_SPREAD_PX:
        return True
    if prev is None:
        return False
    change = s / max(spread(prev), 1e-6)
    return not 1 / MAX_SPREAD_CHANGE <= change <= MAX_SPREAD_CHANGE


def points_box(points: np.ndarray) -> np.ndarray:
    """The ``(4,)`` float32 xyxy bounding box of ``(N, 2)`` points."""
    return np.concatenate([points.min(axis=0), points.max(axis=0)]).astype(np.float32)


class BoxSeededAnalyzer:
    """Face boxes from ``boxes``, 203 points from ``lmk203`` seeded by them and refined
    ``refine_passes`` times; faces carry ``box``, ``score`` and ``lmk203``."""

    has_landmarks = True

    def __init__(
        self, boxes: BoxDetector, lmk203: Landmark203, framing: BoxFraming, refine_passes: int = 1
    ) -> None:
        self.boxes = boxes
        self.lmk203 = lmk203
        self.framing = framing
        self.refine_passes = refine_passes

    def seed(self, image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``(203, 2)`` landmarks of the face in a detector's ``(4,)`` box: seeded, then refined."""
        points = self.lmk203.run_box(image_rgb, box, self.framing)
        for _ in range(self.refine_passes):
            points = self.lmk203.run(image_rgb, points)
        return points

    def _faces(self, image_rgb: np.ndarray, min_score: float | None) -> Iterator[Face]:
        """Detected faces, largest box first, with their seeded landmarks (lost ones left out),
        seeded one at a time as they are asked for."""
        check_rgb_image(image_rgb)
        for face in self.boxes.detect(image_rgb, min_score):
            points = self.seed(image_rgb, face.box)
            if not is_lost(points, image_rgb.shape[:2]):
                yield Face(face.box, face.score, lmk203=points)

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Every detected face (largest box first) whose seeded landmarks are not lost."""
        return list(self._faces(image_rgb, min_score))

    def faces(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Every face with its seeded 203 points (``detect``), largest box first."""
        return self.detect(image_rgb, min_score)

    def landmarks(
        self, image_rgb: np.ndarray, prev: Face | None = None, min_score: float | None = None
    ) -> Face | None:
        """Track from ``prev``'s 203 points; without them, or when the face is lost, detect again
        and take the largest face. A lost face that cannot be found again keeps ``prev``."""
        check_rgb_image(image_rgb)
        if prev is not None and prev.lmk203 is not None:
            points = self.lmk203.run(image_rgb, prev.lmk203)
            if not is_lost(points, image_rgb.shape[:2], prev.lmk203):
                return Face(points_box(points), prev.score, lmk203=points)
        return next(self._faces(image_rgb, min_score), prev)
