"""Landmark models of the official stack and the analyzer combining them with SCRFD.

- 106 points (InsightFace ``2d106det.onnx``): a square crop centred on the detector box, side
  1.5 x the longer box side, resized to the model input (192); RGB; output ``(1, 212)`` in
  ``[-1, 1]`` crop coordinates, ``(p + 1) * 96`` in crop pixels. The model carries its own input
  normalisation when its first nodes subtract and multiply (or start with ``bn_data``), else the
  input is ``(x - 127.5) / 128``.
- 203 points (LivePortrait ``landmark.onnx``): input ``input``, ``1x3x224x224`` RGB in ``[0, 1]``,
  cropped from seed landmarks with LivePortrait's crop (scale 1.5, vy -0.1, rotation on), or from a
  detector's box (``run_box``, upright); the third output holds ``(1, 406)`` values in ``[0, 1]`` crop
  coordinates.

Crops use OpenCV's ``warpAffine`` (bilinear, zero border), as the official code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx

from engines.face.crop import CropBox, crop_box_from_face_box, crop_box_from_landmarks, crop_transform
from engines.face.detection import BoxFraming, Face, check_rgb_image
from engines.face.detection.scrfd import SCRFD, create_session

LMK203_CROP_SCALE = 1.5
LMK203_CROP_VY = -0.1


def model_normalizes_input(model_path: Path) -> bool:
    """Whether an InsightFace landmark model normalises its raw 0..255 input itself.

    True when one of its first 8 nodes is named like a subtraction (``Sub``/``_minus``) and one like
    a multiplication (``Mul``/``_mul``), or one of its first 3 is ``bn_data``.
    """
    names = [node.name for node in onnx.load(str(model_path), load_external_data=False).graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (has_sub and has_mul) or "bn_data" in names[:3]


def _to_blob(crop_rgb: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(S, S, 3)`` uint8 -> ``(1, 3, S, S)`` float32 ``(x - mean) / std``."""
    return np.ascontiguousarray(((crop_rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 (or 3x3) affine matrix to ``(N, 2)`` points."""
    return (pts @ m[:2, :2].T + m[:2, 2]).astype(np.float32)


class _LandmarkModel:
    """An ONNX landmark model: its session, input name and square input size (from the graph, else
    `default_size`)."""

    default_size: int

    def __init__(self, model_path: Path, providers: Sequence[str] | None = None) -> None:
        self.session = create_session(model_path, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = inp.shape[2] if isinstance(inp.shape[2], int) else self.default_size


class Landmark106(_LandmarkModel):
    """InsightFace 106-point model: ``run(image, box) -> (106, 2)`` image pixels."""

    default_size = 192

    def __init__(self, model_path: Path, providers: Sequence[str] | None = None) -> None:
        super().__init__(model_path, providers)
        self.mean, self.std = (0.0, 1.0) if model_normalizes_input(model_path) else (127.5, 128.0)

    def run(self, image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """106 landmarks of the face in ``box`` (xyxy) -> ``(106, 2)`` float32 image pixels."""
        x1, y1, x2, y2 = (float(v) for v in box)
        s = self.size / (max(x2 - x1, y2 - y1) * 1.5)
        half = self.size / 2
        m = np.array([[s, 0.0, half - s * (x1 + x2) / 2], [0.0, s, half - s * (y1 + y2) / 2]])
        crop = cv2.warpAffine(image_rgb, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderValue=0)
        pred = self.session.run(None, {self.input_name: _to_blob(crop, self.mean, self.std)})[0]
        pts = pred.reshape(-1, 2)[-106:].astype(np.float64)
        pts = (pts + 1) * (self.size // 2)
        return _apply(cv2.invertAffineTransform(m), pts)


class Landmark203(_LandmarkModel):
    """LivePortrait 203-point model: ``run(image, seed_points) -> (203, 2)`` image pixels."""

    default_size = 224

    def run(self, image_rgb: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """203 landmarks from a crop around ``seed`` landmarks (``(N, 2)``: 106 or 203 points)."""
        box = crop_box_from_landmarks(seed, scale=LMK203_CROP_SCALE, vy_ratio=LMK203_CROP_VY, rotate=True)
        return self.run_crop(image_rgb, box)

    def run_box(self, image_rgb: np.ndarray, box: np.ndarray, framing: BoxFraming) -> np.ndarray:
        """203 landmarks from an upright crop around a detector's ``(4,)`` xyxy ``box``, framed by
        ``framing`` (a first guess: refine by ``run`` on the result)."""
        crop = crop_box_from_face_box(box, scale=framing.scale, vy_ratio=framing.vy_ratio)
        return self.run_crop(image_rgb, crop)

    def run_crop(self, image_rgb: np.ndarray, box: CropBox) -> np.ndarray:
        """203 landmarks ``(203, 2)`` float32 image pixels of the face in crop ``box``."""
        m_o2c = crop_transform(box, self.size)
        crop = cv2.warpAffine(image_rgb, m_o2c[:2], (self.size, self.size), flags=cv2.INTER_LINEAR)
        pred = self.session.run(None, {self.input_name: _to_blob(crop, 0.0, 255.0)})[2]
        pts = pred.reshape(-1, 2).astype(np.float64) * self.size
        return _apply(np.linalg.inv(m_o2c), pts)


class InsightFaceAnalyzer:
    """The official stack: SCRFD -> 106 points -> 203 points (LivePortrait's flow)."""

    has_landmarks = True

    def __init__(self, detector: SCRFD, lmk106: Landmark106, lmk203: Landmark203) -> None:
        self.detector = detector
        self.lmk106 = lmk106
        self.lmk203 = lmk203

    @classmethod
    def from_paths(
        cls, paths: Mapping[str, Path], providers: Sequence[str] | None = None
    ) -> InsightFaceAnalyzer:
        """Build from ``{"detector", "landmark106", "landmark203"}`` model paths."""
        return cls(
            SCRFD(paths["detector"], providers=providers),
            Landmark106(paths["landmark106"], providers=providers),
            Landmark203(paths["landmark203"], providers=providers),
        )

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces scoring at least ``min_score`` (default: the detector's threshold) with box, score,
        kps5 and lmk106 (no lmk203), largest box first."""
        return [
            Face(f.box, f.score, f.kps5, lmk106=self.lmk106.run(image_rgb, f.box))
            for f in self.detector.detect(image_rgb, min_score)
        ]

    def refine(self, image_rgb: np.ndarray, face: Face) -> Face:
        """``face`` with ``lmk203`` computed from a crop around its 106 points."""
        if face.lmk106 is None:
            raise ValueError("refine needs a face with 106 landmarks")
        return Face(face.box, face.score, face.kps5, face.lmk106, self.lmk203.run(image_rgb, face.lmk106))

    def faces(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Every face with its 106 and 203 points, largest box first."""
        check_rgb_image(image_rgb)
        return [self.refine(image_rgb, face) for face in self.detect(image_rgb, min_score)]

    def landmarks(
        self, image_rgb: np.ndarray, prev: Face | None = None, min_score: float | None = None
    ) -> Face | None:
        """Without ``prev``: the largest face with all landmarks, or None. With ``prev``: re-run
        the 203-point model seeded from ``prev``'s landmarks (box = the points' bounding box)."""
        check_rgb_image(image_rgb)
        if prev is None:
            faces = self.detect(image_rgb, min_score)
            return self.refine(image_rgb, faces[0]) if faces else None
        seed = prev.lmk203 if prev.lmk203 is not None else prev.lmk106
        if seed is None:
            raise ValueError("tracking needs a previous face with landmarks")
        pts = self.lmk203.run(image_rgb, seed)
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float32)
        return Face(box, prev.score, lmk203=pts)
