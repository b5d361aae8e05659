"""SCRFD face detector (InsightFace ``det_10g.onnx``) on onnxruntime.

Model conventions (public InsightFace facts): input ``1x3xHxW`` float32 RGB, ``(x - 127.5) / 128``;
nine outputs ordered scores, box distances, keypoint distances, each for strides 8, 16, 32; two
anchors per feature-map location, ordered row-major with the anchors of one location adjacent.
Distances are in units of the stride and measured from the anchor centre ``(col, row) * stride``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from engines.face.detection import Face, check_rgb_image

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
INPUT_MEAN = 127.5
INPUT_STD = 128.0


def create_session(model_path: Path, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session; default providers: CUDA when available, then CPU."""
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(model_path), providers=list(providers))


def letterbox(image_rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into the top-left of a black ``(height, width, 3)`` canvas.

    Returns the canvas and the scale (canvas pixels per image pixel).
    """
    h, w = image_rgb.shape[:2]
    ratio = h / w
    if ratio > height / width:
        new_h, new_w = height, max(1, int(height / ratio))
    else:
        new_w, new_h = width, max(1, int(width * ratio))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, new_h / h


@lru_cache(maxsize=32)
def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
    """Anchor centres ``(height * width * num_anchors, 2)`` as ``(x, y)`` in input pixels."""
    rows, cols = np.mgrid[:height, :width]
    centers = np.stack([cols, rows], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    centers = np.repeat(centers, num_anchors, axis=0)
    centers.setflags(write=False)
    return centers


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS over ``(N, 4)`` xyxy boxes; returns kept indices by descending score.

    Overlap uses InsightFace's inclusive-pixel areas (``x2 - x1 + 1``); a box is dropped when its
    IoU with a kept box exceeds ``threshold``.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return np.asarray(keep, dtype=np.int64)


class SCRFD:
    """SCRFD detector: boxes, scores and 5 keypoints, largest face first.

    ``det_size`` is the square input side (ignored when the model has a fixed input size).
    """

    def __init__(
        self,
        model_path: Path,
        det_size: int = 512,
        score_threshold: float = 0.15,
        nms_threshold: float = 0.4,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.session = create_session(model_path, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        fixed = isinstance(inp.shape[2], int) and isinstance(inp.shape[3], int)
        size: tuple[int, int] = (inp.shape[2], inp.shape[3]) if fixed else (det_size, det_size)
        self.input_height, self.input_width = size
        n_out = len(self.session.get_outputs())
        if n_out != 3 * len(STRIDES):
            raise ValueError(f"{model_path}: expected {3 * len(STRIDES)} SCRFD outputs, got {n_out}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in an ``(H, W, 3)`` RGB uint8 image (box, score, kps5), largest box first.

        ``min_score`` overrides the detector's score threshold for this call (a job's det_thresh)."""
        check_rgb_image(image_rgb)
        canvas, scale = letterbox(image_rgb, self.input_width, self.input_height)
        blob = ((canvas.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(blob)})
        threshold = self.score_threshold if min_score is None else min_score
        boxes, scores, kpss = self._decode(outs, threshold)
        keep = nms(boxes, scores, self.nms_threshold)
        faces = [Face(box=boxes[i] / scale, score=float(scores[i]), kps5=kpss[i] / scale) for i in keep]
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def _decode(self, outs: list[np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates scoring at least `threshold`, in canvas pixels: boxes ``(N, 4)``, scores ``(N,)``,
        keypoints ``(N, 5, 2)``."""
        n = len(STRIDES)
        boxes, scores, kpss = [], [], []
        for k, stride in enumerate(STRIDES):
            centers = anchor_centers(self.input_height // stride, self.input_width // stride, stride)
            score = outs[k].reshape(-1)
            dist = outs[n + k].reshape(-1, 4) * stride
            kps = outs[2 * n + k].reshape(-1, 5, 2) * stride
            if not score.shape[0] == dist.shape[0] == kps.shape[0] == centers.shape[0]:
                raise ValueError(f"SCRFD output sizes at stride {stride} do not match the anchors")
            idx = np.flatnonzero(score >= threshold)
            c = centers[idx]
            boxes.append(np.concatenate([c - dist[idx, :2], c + dist[idx, 2:]], axis=1))
            scores.append(score[idx])
            kpss.append(c[:, None, :] + kps[idx])
        return (
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(scores).astype(np.float32),
            np.concatenate(kpss).astype(np.float32),
        )
