"""Fixtures for the engine tests: the golden data and a model built from its synthetic weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.model import LivePortraitModel
from engines.weights import write_synthetic_bundle
from tests.golden import load_golden


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """The module golden file (``LIVEPORTRAIT_GOLDEN`` overrides the path)."""
    return load_golden("LIVEPORTRAIT_GOLDEN", "golden_seed0.npz")


@pytest.fixture(scope="session")
def golden_weights(golden: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic bundle written with the golden file's own weights seed."""
    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), int(golden["weights_seed"]))


@pytest.fixture(scope="session")
def golden_model(golden_weights: Path) -> LivePortraitModel:
    torch.manual_seed(0)
    return LivePortraitModel.from_weights(golden_weights, "cpu")
