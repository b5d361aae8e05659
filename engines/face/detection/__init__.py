"""Face detection and landmarks behind one small interface.

Three stacks implement :class:`FaceAnalyzer` (``docs/models.md`` has their files and licences):

- ``insightface``, the official stack (:class:`engines.face.detection.landmarks.InsightFaceAnalyzer`):
  SCRFD boxes and 5 keypoints, the 106-point model, then LivePortrait's 203-point model. The two
  InsightFace model files are for non-commercial research only.
- ``licence-clean`` (:class:`engines.face.detection.seeded.BoxSeededAnalyzer`): a licence-clean face
  box (OpenCV's Haar cascade, or MediaPipe's BlazeFace where installed) seeds LivePortrait's MIT
  203-point model, which then tracks itself from frame to frame.
- ``haar-box`` (:class:`engines.face.detection.haar.HaarAnalyzer`): OpenCV's bundled frontal-face Haar
  cascade alone, boxes only.

All images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; all coordinates are image pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Literal, NamedTuple, Protocol, get_args, runtime_checkable

import numpy as np

from common.engine_config import Detector

__all__ = [
    "BLAZEFACE_FILE",
    "HAAR_CASCADE",
    "INSIGHTFACE_FILES",
    "LANDMARK203_FILE",
    "LICENCES",
    "OFFICIAL_MODEL_FILES",
    "BoxDetector",
    "BoxFraming",
    "Face",
    "FaceAnalyzer",
    "FaceStack",
    "LandmarksRequired",
    "check_rgb_image",
    "choose_stack",
    "load_analyzer",
    "official_model_paths",
    "require_landmarks",
]

logger = logging.getLogger(__name__)

LANDMARK203_FILE = "liveportrait/landmark.onnx"
INSIGHTFACE_FILES: dict[str, str] = {
    "detector": "insightface/models/buffalo_l/det_10g.onnx",
    "landmark106": "insightface/models/buffalo_l/2d106det.onnx",
}
OFFICIAL_MODEL_FILES: dict[str, str] = {**INSIGHTFACE_FILES, "landmark203": LANDMARK203_FILE}
"""The official landmark stack, relative to the weights directory."""
BLAZEFACE_FILE = "mediapipe/face_detection_short_range.tflite"
"""MediaPipe's short-range BlazeFace, relative to the weights directory (optional)."""
HAAR_CASCADE = "haarcascade_frontalface_default.xml (OpenCV)"
"""OpenCV's frontal-face cascade, bundled with opencv-python (not a weights file)."""

LICENCES: dict[str, str] = {
    INSIGHTFACE_FILES["detector"]: "InsightFace, non-commercial research only",
    INSIGHTFACE_FILES["landmark106"]: "InsightFace, non-commercial research only",
    LANDMARK203_FILE: "LivePortrait, MIT",
    BLAZEFACE_FILE: "MediaPipe, Apache-2.0",
    HAAR_CASCADE: "Intel open-source licence (BSD-style)",
}
"""The licence of every model file a face stack may run."""


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
    """An option needs facial landmarks, which the box-only Haar stack does not give."""

    def __init__(self, option: str) -> None:
        self.option = option
        super().__init__(
            f"{option} needs facial landmarks: put LivePortrait's {LANDMARK203_FILE} (MIT) under the "
            f"weights directory and use detector auto or licence-clean (or the non-commercial "
            f"InsightFace models, {', '.join(INSIGHTFACE_FILES.values())}); the haar-box detector finds "
            f"face boxes only. Or turn {option} off."
        )


class BoxFraming(NamedTuple):
    """How a box detector's boxes frame the first crop of the 203-point model: a square of side
    ``scale`` x the box's longer side, centred ``vy_ratio`` x that side below the box centre."""

    scale: float
    vy_ratio: float


class BoxDetector(Protocol):
    """Finds face boxes (and scores): what seeds the 203-point landmark model."""

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """All faces in an ``(H, W, 3)`` RGB uint8 image, largest box first."""
        ...


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Finds faces and, where ``has_landmarks``, their landmarks. Safe to call from several threads at
    once (a worker's job and its live sessions share one): ONNX Runtime sessions are, and the Haar
    cascade, which is not, runs under a lock of its own."""

    has_landmarks: bool

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """All faces in an ``(H, W, 3)`` RGB uint8 image, largest box first; detectors with scores
        keep those of at least ``min_score`` (default: their own threshold)."""
        ...

    def faces(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Every face of an image with the landmarks ``landmarks`` gives a first frame (its result
        is the first of these), largest box first; ``min_score`` as in ``detect``."""
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


StackName = Literal["insightface", "licence-clean", "haar-box"]


@dataclass(frozen=True)
class FaceStack:
    """A face stack as chosen for a weights directory: its name and the models it runs, the box
    detector first (keys of :data:`LICENCES`)."""

    name: StackName
    models: tuple[str, ...]

    @property
    def commercial_use(self) -> bool:
        """Whether every model of the stack may be used commercially."""
        return not any("non-commercial" in LICENCES[m] for m in self.models)

    def describe(self) -> str:
        """One line: the stack, what it gives, and each model with its licence."""
        gives = "boxes only" if self.name == "haar-box" else "203-point landmarks"
        use = "commercial use allowed" if self.commercial_use else "NON-COMMERCIAL use only"
        models = "; ".join(f"{m} [{LICENCES[m]}]" for m in self.models)
        return f"face stack {self.name} ({gives}, {use}): {models}"


def choose_stack(weights_dir: Path | None, prefer: Detector = "auto") -> FaceStack:
    """Which face stack ``prefer`` takes with the model files under ``weights_dir``.

    ``insightface`` needs the three official files (FileNotFoundError otherwise); ``licence-clean``
    needs ``landmark.onnx``, its boxes coming from BlazeFace where its model file and ai-edge-litert
    are installed, else from the Haar cascade; ``haar-box`` needs nothing. ``auto`` takes
    ``insightface`` when all its files are present, else ``licence-clean`` when ``landmark.onnx`` is,
    else ``haar-box``.
    """
    if prefer not in get_args(Detector):
        raise ValueError(f"unknown detector {prefer!r}: use one of {', '.join(get_args(Detector))}")

    def present(rel: str) -> bool:
        return weights_dir is not None and (Path(weights_dir) / rel).is_file()

    missing = [rel for rel in OFFICIAL_MODEL_FILES.values() if not present(rel)]
    if prefer == "insightface" or (prefer == "auto" and not missing):
        if missing:
            where = weights_dir if weights_dir is not None else "(no weights directory)"
            raise FileNotFoundError(f"official face models missing under {where}: {', '.join(missing)}")
        return FaceStack("insightface", tuple(OFFICIAL_MODEL_FILES.values()))
    if prefer == "licence-clean" or (prefer == "auto" and present(LANDMARK203_FILE)):
        if not present(LANDMARK203_FILE):
            raise FileNotFoundError(
                f"the licence-clean detector needs {LANDMARK203_FILE} under {weights_dir}"
            )
        blazeface = present(BLAZEFACE_FILE) and find_spec("ai_edge_litert") is not None
        return FaceStack("licence-clean", (BLAZEFACE_FILE if blazeface else HAAR_CASCADE, LANDMARK203_FILE))
    return FaceStack("haar-box", (HAAR_CASCADE,))


def load_analyzer(
    weights_dir: Path | None,
    prefer: Detector = "auto",
    providers: Sequence[str] | None = None,
) -> FaceAnalyzer:
    """Build the face analyzer of :func:`choose_stack` and log the stack with its licences.

    ``providers`` are onnxruntime execution providers (default: CUDA when available, then CPU).
    """
    stack = choose_stack(weights_dir, prefer)
    logger.info("%s", stack.describe())
    from engines.face.detection.haar import SEED_FRAMING as HAAR_FRAMING
    from engines.face.detection.haar import HaarAnalyzer

    if weights_dir is None or stack.name == "haar-box":  # choose_stack gives haar-box without a directory
        return HaarAnalyzer()
    root = Path(weights_dir)
    if stack.name == "insightface":
        from engines.face.detection.landmarks import InsightFaceAnalyzer

        return InsightFaceAnalyzer.from_paths(official_model_paths(root), providers)
    from engines.face.detection.landmarks import Landmark203
    from engines.face.detection.seeded import BoxSeededAnalyzer

    lmk203 = Landmark203(root / LANDMARK203_FILE, providers=providers)
    if stack.models[0] == BLAZEFACE_FILE:
        from engines.face.detection.blazeface import SEED_FRAMING, BlazeFace

        return BoxSeededAnalyzer(BlazeFace(root / BLAZEFACE_FILE), lmk203, SEED_FRAMING)
    return BoxSeededAnalyzer(HaarAnalyzer(), lmk203, HAAR_FRAMING)
