"""The prepared source: resize, detection with the job's det_thresh, crop, M and F on the engine."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.options import AnimationOptions
from engines.engine import Engine
from engines.face.detection import load_analyzer, official_model_paths
from engines.model import LivePortraitModel
from engines.source import EngineError, crop_source, prepare_source, resize_to_limit, stack_ratios
from tests.engines.face.test_detection import make_106, make_203, make_scrfd, square
from tests.engines.factory import cpu_engine


@pytest.fixture(scope="module")
def detector_engine(tmp_path_factory: pytest.TempPathFactory, golden_model: LivePortraitModel) -> Engine:
    """An engine with the official detector stack (tiny generated models); its networks (the golden
    synthetic ones) are not used by detection and crop."""
    root = tmp_path_factory.mktemp("detector")
    paths = official_model_paths(root)
    make_scrfd(paths["detector"])
    make_106(paths["landmark106"])
    make_203(paths["landmark203"])
    analyzer = load_analyzer(root, "insightface")
    return Engine(
        model=golden_model, analyzer=analyzer, device=torch.device("cpu"), backend="torch", precision="fp32"
    )


def test_det_thresh_reaches_the_detector(detector_engine: Engine) -> None:
    image = np.zeros((512, 512, 3), np.uint8)
    square(image, 64, 64, 32, (150, 0, 0))  # the tiny SCRFD scores red 150 at (150 - 127.5) / 128
    _, face = crop_source(detector_engine, image, AnimationOptions(det_thresh=0.15))
    assert face is not None and face.score == pytest.approx(22.5 / 128, abs=1e-4)
    with pytest.raises(EngineError) as err:
        crop_source(detector_engine, image, AnimationOptions(det_thresh=0.2))
    assert err.value.code == "no_face"


def test_source_resize_follows_the_official_rule() -> None:
    rgb = np.zeros((1001, 2001, 3), np.uint8)
    assert resize_to_limit(rgb, 1280, 2).shape == (640, 1280, 3)
    assert resize_to_limit(rgb, 4096, 2).shape == (1000, 2000, 3)
    assert resize_to_limit(np.zeros((1, 1, 3), np.uint8), 1280, 2).shape == (1, 1, 3)


def test_ratios_are_stacked_on_the_engine_device() -> None:
    ratios = stack_ratios([np.array([0.3, 0.4]), np.array([0.2, 0.1])], torch.device("meta"))
    assert ratios is not None and ratios.device.type == "meta" and ratios.shape == (2, 2)
    assert stack_ratios([np.array([0.3, 0.4]), None], torch.device("cpu")) is None


def test_prepare_source_gives_crop_keypoints_and_features(golden_weights: Path) -> None:
    engine = cpu_engine(golden_weights, detector="haar-box")
    rgb = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    source = prepare_source(engine, rgb, AnimationOptions(flag_do_crop=False))
    assert source.crop.crop512.shape == (512, 512, 3) and source.crop.frame.shape == (300, 200, 3)
    assert source.x_s.shape == (1, 21, 3) and source.f_s.shape == (1, 32, 16, 64, 64)
    np.testing.assert_allclose(source.crop.M_c2o, np.diag([200 / 512, 300 / 512, 1.0]))
