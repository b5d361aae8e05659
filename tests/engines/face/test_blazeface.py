"""BlazeFace, the second licence-clean box detector: its anchors and decoding, the stack choice, the
model's extraction from a mediapipe wheel, and (where the model file is given) the real model.

The real model is not in the repository: ``LIVEPORTRAIT_BLAZEFACE_MODEL`` names the extracted
``face_detection_short_range.tflite`` (``liveportrait weights download DIR --include-blazeface``);
without it those tests are skipped.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.demo import portrait
from engines.download import BLAZEFACE_IN_WHEEL, extract_blazeface
from engines.face.detection import BLAZEFACE_FILE, LANDMARK203_FILE, choose_stack, load_analyzer
from engines.face.detection.blazeface import BlazeFace, anchor_centers, decode
from engines.face.detection.haar import box_iou
from engines.face.detection.seeded import BoxSeededAnalyzer
from tests.engines.face.test_seeded import make_face_203

REAL_MODEL = os.environ.get("LIVEPORTRAIT_BLAZEFACE_MODEL", "")
needs_model = pytest.mark.skipif(
    not Path(REAL_MODEL).is_file(), reason="LIVEPORTRAIT_BLAZEFACE_MODEL not set"
)
ASTRONAUT_FACE = np.array([180, 90, 272, 178], np.float32)  # brows to chin, cheek to cheek (by eye)


def test_anchors_are_two_grids_in_output_order() -> None:
    centers = anchor_centers()
    assert centers.shape == (896, 2)
    np.testing.assert_array_equal(centers[:4], [[4, 4], [4, 4], [12, 4], [12, 4]])  # stride 8, 2 per cell
    np.testing.assert_array_equal(centers[32], [4, 12])  # second row of 16 cells
    np.testing.assert_array_equal(centers[512:519], [[8, 8]] * 6 + [[24, 8]])  # stride 16, 6 per cell
    np.testing.assert_array_equal(centers[-1], [120, 120])


def test_decode_keeps_scores_from_the_threshold_and_places_boxes_on_anchors() -> None:
    logits = np.full(896, -500.0, np.float32)  # clipped to -100: no overflow
    regressors = np.zeros((896, 16), np.float32)
    logits[5], regressors[5, :4] = 3.0, [2, -1, 20, 30]  # anchor (20, 4)
    logits[600], regressors[600, :4] = 0.2, [0, 0, 10, 10]  # sigmoid 0.55; stride-16 cell 14: (104, 24)
    logits[700] = -0.1  # sigmoid 0.475
    boxes, scores = decode(regressors, logits, 0.5)
    np.testing.assert_allclose(boxes, [[12, -12, 32, 18], [99, 19, 109, 29]])
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-0.2))], rtol=1e-6)


def test_licence_clean_takes_blazeface_boxes_when_its_model_is_there(tmp_path: Path) -> None:
    (tmp_path / LANDMARK203_FILE).parent.mkdir(parents=True)
    (tmp_path / LANDMARK203_FILE).touch()
    assert choose_stack(tmp_path).models[0] != BLAZEFACE_FILE
    (tmp_path / BLAZEFACE_FILE).parent.mkdir(parents=True)
    (tmp_path / BLAZEFACE_FILE).touch()
    stack = choose_stack(tmp_path, "licence-clean")
    assert stack.models == (BLAZEFACE_FILE, LANDMARK203_FILE) and stack.commercial_use
    assert "MediaPipe, Apache-2.0" in stack.describe()
    assert choose_stack(tmp_path, "haar-box").models[0] != BLAZEFACE_FILE


def fake_wheel(path: Path, model: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mediapipe/__init__.py", "")
        archive.writestr(BLAZEFACE_IN_WHEEL, model)
    return path


def test_the_model_is_extracted_from_the_wheel_only_with_its_digest(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "mediapipe-0.10.21-any.whl", b"tflite bytes")
    dest = tmp_path / "weights" / BLAZEFACE_FILE
    assert extract_blazeface(wheel, dest, hashlib.sha256(b"tflite bytes").hexdigest()) == dest
    assert dest.read_bytes() == b"tflite bytes"
    other = tmp_path / "other" / BLAZEFACE_FILE
    with pytest.raises(ValueError, match="sha256"):
        extract_blazeface(wheel, other)  # not the official file's digest
    assert not other.exists()


@needs_model
def test_blazeface_finds_the_astronaut_upright_and_rolled() -> None:
    """Rolled by 45 degrees, where the Haar cascade misses her (bench/bench_face_boxes.py)."""
    blazeface = BlazeFace(Path(REAL_MODEL))
    (face,) = blazeface.detect(portrait())
    assert box_iou(ASTRONAUT_FACE, face.box[None])[0] > 0.7 and face.score > 0.8
    m = cv2.getRotationMatrix2D((226, 134), 45, 1.0)
    rolled = cv2.warpAffine(portrait(), m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    (face,) = blazeface.detect(rolled)
    center = (face.box[:2] + face.box[2:]) / 2
    np.testing.assert_allclose(center, m[:, :2] @ [226, 134] + m[:, 2], atol=15)
    assert blazeface.detect(np.full((240, 320, 3), 128, np.uint8)) == []


@needs_model
def test_the_licence_clean_stack_seeds_from_blazeface(tmp_path: Path) -> None:
    make_face_203(tmp_path / LANDMARK203_FILE)
    (tmp_path / BLAZEFACE_FILE).parent.mkdir(parents=True)
    (tmp_path / BLAZEFACE_FILE).write_bytes(Path(REAL_MODEL).read_bytes())
    analyzer = load_analyzer(tmp_path)
    assert isinstance(analyzer, BoxSeededAnalyzer) and isinstance(analyzer.boxes, BlazeFace)
    face = analyzer.landmarks(portrait())
    assert face is not None and face.lmk203 is not None
    assert box_iou(ASTRONAUT_FACE, face.box[None])[0] > 0.7
