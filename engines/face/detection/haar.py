"""Licence-clean face detector: OpenCV's bundled frontal-face Haar cascade (boxes only).

The cascade was trained on upright frontal faces: it misses heads rolled by 30 degrees or more
(``bench/bench_face_boxes.py``, ``docs/models.md``) and is not made for profiles. The licence-clean
stack still follows such a face in a video once it has found it, and BlazeFace finds rolled heads.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
from cv2.data import haarcascades

from engines.face.detection import BoxFraming, Face, check_rgb_image

DEFAULT_CASCADE = Path(haarcascades) / "haarcascade_frontalface_default.xml"
SEED_FRAMING = BoxFraming(scale=1.5, vy_ratio=0.05)
"""The cascade's box spans forehead to chin, about the size of the brows-to-chin landmark box but
some 0.2 box sides higher (measured by eye on the astronaut photo), so the seed crop of the
203-point model sits a little lower than LivePortrait's own landmark crop (scale 1.5, vy -0.1)."""


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` xyxy box with each of ``(N, 4)`` boxes -> ``(N,)``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


TRACK_SIZES = (0.6, 1.6)
"""The face sides searched when following a face, in sides of its last box."""


class HaarAnalyzer:
    """Frontal-face Haar cascade. Gives boxes only (``has_landmarks`` is False, score is 1.0).

    ``min_size_ratio`` is the smallest face side searched, as a fraction of the shorter image side.
    """

    has_landmarks = False

    def __init__(
        self,
        cascade_path: Path = DEFAULT_CASCADE,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size_ratio: float = 0.05,
    ) -> None:
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        self._lock = threading.Lock()  # one cascade serves a job's thread and the live sessions' pool
        if self._cascade.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_ratio = min_size_ratio

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in an ``(H, W, 3)`` RGB uint8 image, largest box first. The cascade gives no scores,
        so ``min_score`` (a job's det_thresh) does not apply; ``min_neighbors`` is its strictness."""
        check_rgb_image(image_rgb)
        return self._search(image_rgb)

    def _search(self, image_rgb: np.ndarray, sides: tuple[int, int] = (0, 0)) -> list[Face]:
        """The cascade over the face sides within ``sides`` (smallest, largest; 0: no bound), never
        below the smallest one searched (``min_size_ratio``); largest box first."""
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        low, high = max(24, round(min(gray.shape) * self.min_size_ratio), sides[0]), sides[1]
        if 0 < high < low:
            return []
        with self._lock:
            rects = self._cascade.detectMultiScale(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(low, low),
                maxSize=(high, high),
            )
        faces = [
            Face(box=np.array([x, y, x + w, y + h], dtype=np.float32), score=1.0) for x, y, w, h in rects
        ]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def faces(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Every face (boxes only: ``detect``), largest box first."""
        return self.detect(image_rgb, min_score)

    def landmarks(
        self, image_rgb: np.ndarray, prev: Face | None = None, min_score: float | None = None
    ) -> Face | None:
        """Box-only tracking: the detection overlapping ``prev`` most (the largest one without
        ``prev`` or overlap); ``prev`` itself when this frame has no detection. With ``prev``, only
        faces of TRACK_SIZES times its side are searched (a face does not grow or shrink more
        between two frames), a fraction of the cascade's work."""
        check_rgb_image(image_rgb)
        if prev is None:
            faces = self._search(image_rgb)
        else:
            side = float(max(prev.box[2] - prev.box[0], prev.box[3] - prev.box[1]))
            faces = self._search(image_rgb, (round(side * TRACK_SIZES[0]), round(side * TRACK_SIZES[1])))
        if not faces:
            return prev
        if prev is None:
            return faces[0]
        ious = box_iou(prev.box, np.stack([f.box for f in faces]))
        return faces[int(np.argmax(ious))] if ious.max() > 0 else faces[0]
