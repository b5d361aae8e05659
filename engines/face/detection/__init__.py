"""Face detection and landmarks behind one small interface.

Two analyzers implement :class:`FaceAnalyzer`:

- the official stack (:class:`engines.face.detection.landmarks.InsightFaceAnalyzer`): SCRFD boxes and
  5 keypoints, the 106-point model, then LivePortrait's 203-point model. Its model files are for
  non-commercial use only.
- a licence-clean fallback (:class:`engines.face.detection.haar.HaarAnalyzer`): OpenCV's bundled
  frontal-face Haar cascade, boxes only.

All images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; all coordinates are image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "OFFICIAL_MODEL_FILES",
    "Face",
    "FaceAnalyzer",
    "LandmarksRequired",
    "check_rgb_image",
    "load_analyzer",
    "official_model_paths",
    "require_landmarks",
]

OFFICIAL_MODEL_FILES: dict[str, str] = {
    "detector": "insightface/models/buffalo_l/det_10g.onnx",
    "landmark106": "insightface/models/buffalo_l/2d106det.onnx",
    "landmark203": "liveportrait/landmark.onnx",
}
"""The official landmark stack, relative to the weights directory."""


@dataclass(frozen=True, eq=False)
class Face:
    """One face in an image.

    ``box`` is ``(4,)`` float32 ``[x1, y1, x2, y2]``; ``kps5`` ``(5, 2)`` (eyes, nose, mouth corners),
    ``lmk106`` ``(106, 2)`` and ``lmk203`` ``(203, 2)`` are float32 pixel coordinates, or ``None``
    where the analyzer does not provide them.
    """

    box: np.ndarray
    score: float
    kps5: np.ndarray | None = None
    lmk106: np.ndarray | None = None
    lmk203: np.ndarray | None = None

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class LandmarksRequired(RuntimeError):
    """An option needs facial landmarks, which only the official landmark models provide."""

    def __init__(self, option: str) -> None:
        self.option = option
        files = ", ".join(OFFICIAL_MODEL_FILES.values())
        super().__init__(
            f"{option} needs facial landmarks, which only the official landmark models provide "
            f"({files} under the weights directory); the licence-clean Haar detector finds face "
            f"boxes only. Install those models or turn {option} off."
        )


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Finds faces and, where ``has_landmarks``, their landmarks."""

    has_landmarks: bool

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """All faces in an ``(H, W, 3)`` RGB uint8 image, largest box first; detectors with scores
        keep those of at least ``min_score`` (default: their own threshold)."""
        ...

    def landmarks(
        self, image_rgb: np.ndarray, prev: Face | None = None, min_score: float | None = None
    ) -> Face | None:
        """The tracked face of one video frame (``min_score`` as in ``detect``).

        Without ``prev`` (first frame, or no face so far): detect and take the largest face, or
        ``None`` if there is none. With ``prev`` (the previous frame's result): follow that face.
        """
        ...


def check_rgb_image(image_rgb: np.ndarray) -> None:
    """Raise ValueError unless ``image_rgb`` is an ``(H, W, 3)`` uint8 array."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}")


def require_landmarks(analyzer: FaceAnalyzer, option: str) -> None:
    """Raise :class:`LandmarksRequired` naming ``option`` unless ``analyzer`` gives landmarks."""
    if not analyzer.has_landmarks:
        raise LandmarksRequired(option)


def official_model_paths(weights_dir: Path) -> dict[str, Path]:
    """Paths of the official detector/landmark models in the official layout under ``weights_dir``."""
    return {name: Path(weights_dir) / rel for name, rel in OFFICIAL_MODEL_FILES.items()}


def load_analyzer(
    weights_dir: Path | None,
    prefer: Literal["auto", "insightface", "haar"] = "auto",
    providers: Sequence[str] | None = None,
) -> FaceAnalyzer:
    """Build the face analyzer.

    ``auto`` takes the official stack when its three ONNX files exist under ``weights_dir``, else
    the Haar detector; ``insightface`` requires those files (FileNotFoundError otherwise); ``haar``
    always takes the Haar detector. ``providers`` are onnxruntime execution providers (default:
    CUDA when available, then CPU).
    """
    if prefer not in ("auto", "insightface", "haar"):
        raise ValueError(f"unknown detector preference {prefer!r}: use auto, insightface or haar")
    if prefer != "haar":
        paths = official_model_paths(weights_dir) if weights_dir is not None else None
        missing = [str(p) for p in paths.values() if not p.is_file()] if paths else ["(no weights dir)"]
        if paths and not missing:
            from engines.face.detection.landmarks import InsightFaceAnalyzer

            return InsightFaceAnalyzer.from_paths(paths, providers=providers)
        if prefer == "insightface":
            raise FileNotFoundError(f"official face models missing: {', '.join(missing)}")
    from engines.face.detection.haar import HaarAnalyzer

    return HaarAnalyzer()
