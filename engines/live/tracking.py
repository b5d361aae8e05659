"""Following the driving face from camera frame to camera frame, cheaply, and the driving crop.

`DrivingCropper` keeps one crop box, checked now and then. `track_face` runs the face analyzer
(engines.face.detection) on a small image, never on the whole camera frame at its size: while the
face is known, on the region around its last box (ROI_SIDES box sides, resized to TRACK_SIDE pixels,
where the face is some 100 pixels wide), with the last face as the analyzer's `prev`; when it is
lost (none in the region, or only the analyzer's hold of `prev`), detected again on the whole frame
resized to DETECT_SIDE pixels. The face comes back in the frame's pixels.
"""

import dataclasses
from concurrent.futures import Executor, Future

import cv2
import numpy as np

from common.live import LiveError
from common.options import AnimationOptions
from engines.face.crop import (
    CROP_SIZE,
    CropBox,
    crop_box_from_face_box,
    crop_box_from_landmarks,
    crop_transform,
)
from engines.face.detection import Face, FaceAnalyzer
from engines.source import landmark_points

TRACK_SIDE = 192
"""Longest side of the region the face is followed in, in pixels."""
ROI_SIDES = 2.0
"""Side of that region, in sides of the last face box."""
DETECT_SIDE = 320
"""Longest side of a whole frame when the face is detected afresh."""


def _moved(face: Face, scale: float, offset: np.ndarray) -> Face:
    """`face` with every coordinate mapped p -> p * scale + offset."""

    def move(points: np.ndarray | None) -> np.ndarray | None:
        return None if points is None else (points * scale + offset).astype(np.float32)

    return dataclasses.replace(
        face,
        box=(face.box * scale + np.tile(offset, 2)).astype(np.float32),
        kps5=move(face.kps5),
        lmk106=move(face.lmk106),
        lmk203=move(face.lmk203),
    )


def _region(shape: tuple[int, ...], box: np.ndarray) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1) of the square of ROI_SIDES box sides around `box`, inside an image of `shape`."""
    h, w = shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = ROI_SIDES * max(box[2] - box[0], box[3] - box[1]) / 2
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
    return x0, y0, min(w, int(cx + half) + 1), min(h, int(cy + half) + 1)


def _look(
    analyzer: FaceAnalyzer, rgb: np.ndarray, side: int, prev: Face | None, min_score: float
) -> Face | None:
    """The analyzer on `rgb` resized to a longest side of `side` (never enlarged past 2x), in `rgb`'s
    pixels; None when it finds nothing or only holds `prev`."""
    scale = min(2.0, side / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else rgb
    seed = None if prev is None else _moved(prev, scale, np.zeros(2))
    face = analyzer.landmarks(np.ascontiguousarray(small), seed, min_score=min_score)
    if face is None or face is seed:
        return None
    return _moved(face, 1 / scale, np.zeros(2))


def track_face(analyzer: FaceAnalyzer, rgb: np.ndarray, prev: Face | None, min_score: float) -> Face | None:
    """The face of camera frame `rgb` (H, W, 3), followed from `prev` (the last frame's), or detected
    afresh when there is no `prev` or it is lost; None when there is no face."""
    if prev is not None:
        x0, y0, x1, y1 = _region(rgb.shape, prev.box)
        if x1 - x0 > 8 and y1 - y0 > 8:
            offset = np.array([x0, y0], dtype=np.float32)
            local = _moved(prev, 1.0, -offset)
            face = _look(analyzer, rgb[y0:y1, x0:x1], TRACK_SIDE, local, min_score)
            if face is not None:
                return _moved(face, 1.0, offset)
    return _look(analyzer, rgb, DETECT_SIDE, None, min_score)


CHECK_EVERY = 10
"""Frames between two checks that the face is still where the driving crop expects it."""


def _box_of(face: Face, options: AnimationOptions) -> CropBox:
    scale = options.scale_crop_driving_video
    vx, vy = options.vx_ratio_crop_driving_video, options.vy_ratio_crop_driving_video
    points = landmark_points(face)
    if points is None:
        return crop_box_from_face_box(face.box, scale, vx, vy)
    return crop_box_from_landmarks(points, scale, vx, vy, rotate=False)


def _left(face: Face, box: CropBox) -> bool:
    """Whether the face's centre left the middle half of the crop box, or its size changed by half."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    side = max(x1 - x0, y1 - y0)
    expected = box.size / 2.2
    return bool(np.abs(centre - box.center).max() > box.size / 4 or not 2 / 3 < side / expected < 1.5)


class DrivingCropper:
    """The driving crop of a camera: one box, as the official driving crop keeps one box for a whole
    video (so the head's moves in the frame stay motion that M sees). The face is detected on the first
    frame; every CHECK_EVERY frames it is followed again, off the frame's path when an `executor` is
    given, and the box moves only when the face left its middle (or lost: detected afresh). With
    `every_frame` (eye or lip retargeting needs each frame's landmarks) it is followed on every frame.
    The crop is OpenCV's fixed-point bilinear warp, not engines.face.crop's exact one: a camera frame
    needs the speed, and M does not see the difference.
    """

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        options: AnimationOptions,
        *,
        executor: Executor | None = None,
        every_frame: bool = False,
    ) -> None:
        self.analyzer = analyzer
        self.options = options
        self.executor = executor
        self.every_frame = every_frame
        self.face: Face | None = None
        self._box: CropBox | None = None
        self._M: np.ndarray | None = None
        self._frames = 0
        self._check: Future[Face | None] | None = None

    def _place(self, face: Face) -> None:
        self.face, self._box = face, _box_of(face, self.options)
        self._M = crop_transform(self._box)

    def _follow(self, rgb: np.ndarray, prev: Face | None) -> Face | None:
        return track_face(self.analyzer, rgb, prev, self.options.det_thresh)

    def _apply(self, face: Face | None) -> None:
        """A check's result: lost (detect afresh on the next frame), moved (a new box), or still there."""
        if face is None:
            self.face = self._box = self._M = None
        elif self._box is None or _left(face, self._box):
            self._place(face)
        else:
            self.face = face

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, Face]:
        """The (512, 512, 3) driving crop of camera frame `rgb` and the face it follows; LiveError no_face
        when no face is known."""
        if self._check is not None and self._check.done():
            check, self._check = self._check, None
            self._apply(check.result())
        self._frames += 1
        if self._M is None or self.every_frame:
            self._apply(self._follow(rgb, self.face))
        elif self._frames % CHECK_EVERY == 0 and self._check is None:
            if self.executor is None:
                self._apply(self._follow(rgb, self.face))
            else:
                self._check = self.executor.submit(self._follow, rgb, self.face)
        if self._M is None or self.face is None:
            raise LiveError("no_face", "no face was found in the driving frame")
        crop = cv2.warpAffine(rgb, self._M[:2], (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
        return crop, self.face
