"""The one engine factory: what a config resolves to, for the CLI, the worker and bench/ alike."""

from pathlib import Path

import pytest

from common.engine_config import EngineConfig
from engines.acceleration.inference import InferenceModel
from engines.engine import FRAME_BATCH, load_engine, resolve_device
from engines.face.detection.haar import HaarAnalyzer
from engines.model import LivePortraitModel
from service.settings import Settings


def test_defaults_are_the_optimised_torch_model_in_float32(golden_weights: Path) -> None:
    engine = load_engine(EngineConfig(weights_dir=golden_weights, device="cpu"))
    assert isinstance(engine.model, InferenceModel)
    assert (engine.backend, engine.precision, engine.frame_batch) == ("torch", "fp32", FRAME_BATCH["cpu"])
    assert engine.pipelined and not engine.compose_on_device
    assert isinstance(engine.analyzer, HaarAnalyzer)  # no InsightFace models in the synthetic bundle


def test_the_config_decides_model_and_batching(golden_weights: Path) -> None:
    config = EngineConfig(
        weights_dir=golden_weights,
        device="cpu",
        optimize=False,
        pipelined=False,
        frame_batch=3,
        backend="auto",
    )
    engine = load_engine(config)
    assert type(engine.model) is LivePortraitModel and engine.backend == "torch"
    assert not engine.pipelined and engine.frame_batch == 3
    with pytest.raises(ValueError, match="needs optimize"):
        load_engine(config.model_copy(update={"precision": "bf16"}))


def test_settings_give_the_engine_config(tmp_path: Path) -> None:
    settings = Settings(
        weights_dir=tmp_path, device="cpu", frame_batch=4, detector="haar-box", optimize=False
    )
    assert settings.engine_config() == EngineConfig(
        weights_dir=tmp_path,
        device="cpu",
        frame_batch=4,
        detector="haar-box",
        optimize=False,
        engine_cache_dir=Settings().engine_cache_dir,
    )
    with pytest.raises(ValueError, match="LIVEPORTRAIT_WEIGHTS_DIR"):
        Settings(weights_dir=None).engine_config()


def test_settings_defaults_are_the_engine_defaults() -> None:
    settings = Settings()
    for name in ("device", "backend", "optimize", "precision", "pipelined", "frame_batch", "detector"):
        assert getattr(settings, name) == EngineConfig.model_fields[name].default, name


def test_auto_device_is_cuda_only_when_present() -> None:
    import torch

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert str(resolve_device("cpu")) == "cpu"
