"""Licence-clean face boxes from MediaPipe's short-range BlazeFace (Apache-2.0) on LiteRT.

Model conventions (public MediaPipe facts): input ``1x128x128x3`` float32 RGB in ``[-1, 1]``;
outputs ``regressors`` ``(1, 896, 16)`` and ``classificators`` ``(1, 896, 1)``. The 896 anchors are
the 16x16 cells of stride 8 with 2 anchors each, then the 8x8 cells of stride 16 with 6, at the cell
centres. A regressor row holds the box centre's offset from its anchor and the box width and
height, in input pixels, then six keypoints; a score is ``sigmoid(clip(logit, -100, 100))``.

The model file ships inside the mediapipe wheels (up to 0.10.21); ``liveportrait weights download
--include-blazeface`` extracts it to ``<weights>/mediapipe/`` (engines.download). It runs on
``ai-edge-litert`` (the ``blazeface`` extra).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from engines.face.detection import BoxFraming, Face, check_rgb_image
from engines.face.detection.scrfd import letterbox, nms

INPUT_SIZE = 128
ANCHOR_LAYOUT = ((8, 2), (16, 6))
"""(stride, anchors per cell) of the two anchor grids, in output order."""
SEED_FRAMING = BoxFraming(scale=1.5, vy_ratio=-0.06)
"""BlazeFace's box spans brows to chin (measured by eye on the astronaut photo), close to the
203-point landmarks' own box, so the seed crop is near LivePortrait's landmark crop (1.5, -0.1)."""


@lru_cache(maxsize=1)
def anchor_centers() -> np.ndarray:
    """``(896, 2)`` anchor centres ``(x, y)`` in input pixels, in the model's output order."""
    centers = []
    for stride, per_cell in ANCHOR_LAYOUT:
        cells = INPUT_SIZE // stride
        rows, cols = np.mgrid[:cells, :cells]
        grid = (np.stack([cols, rows], axis=-1).reshape(-1, 2) + 0.5) * stride
        centers.append(np.repeat(grid, per_cell, axis=0))
    out = np.concatenate(centers).astype(np.float32)
    out.setflags(write=False)
    return out


def decode(regressors: np.ndarray, logits: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` xyxy in input pixels and scores ``(N,)`` of the anchors scoring at least
    ``threshold``, from ``regressors`` ``(896, 16)`` and ``logits`` ``(896,)``."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
    keep = np.flatnonzero(scores >= threshold)
    center = anchor_centers()[keep] + regressors[keep, :2]
    half = regressors[keep, 2:4] / 2
    boxes = np.concatenate([center - half, center + half], axis=1).astype(np.float32)
    return boxes, scores[keep].astype(np.float32)


class BlazeFace:
    """Short-range BlazeFace: boxes and scores, largest box first (a :class:`BoxDetector`).

    Its scores are its own: a job's ``det_thresh`` (SCRFD's scale) does not apply, as for Haar.
    """

    def __init__(self, model_path: Path, score_threshold: float = 0.5, nms_threshold: float = 0.3) -> None:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

        self._interpreter = Interpreter(model_path=str(model_path))
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = {o["name"]: o["index"] for o in self._interpreter.get_output_details()}
        if set(outputs) != {"regressors", "classificators"}:
            raise ValueError(f"{model_path}: not a BlazeFace model (outputs {sorted(outputs)})")
        self._regressors, self._classificators = outputs["regressors"], outputs["classificators"]
        self._lock = threading.Lock()  # one LiteRT interpreter runs one image at a time
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in an ``(H, W, 3)`` RGB uint8 image, largest box first (``min_score`` ignored)."""
        check_rgb_image(image_rgb)
        canvas, scale = letterbox(image_rgb, INPUT_SIZE, INPUT_SIZE)
        blob = (canvas.astype(np.float32) / 127.5 - 1.0)[None]
        with self._lock:
            self._interpreter.set_tensor(self._input, blob)
            self._interpreter.invoke()
            regressors = self._interpreter.get_tensor(self._regressors)[0]
            logits = self._interpreter.get_tensor(self._classificators)[0, :, 0]
        boxes, scores = decode(regressors, logits, self.score_threshold)
        faces = [
            Face(box=boxes[i] / scale, score=float(scores[i])) for i in nms(boxes, scores, self.nms_threshold)
        ]
        return sorted(faces, key=lambda f: f.area, reverse=True)
