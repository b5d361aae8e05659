"""Fixtures for the engine tests: the golden data and a model built from its synthetic weights."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.model import LivePortraitModel
from engines.weights import write_synthetic_bundle

GOLDEN_DEFAULT = Path(__file__).parents[1] / "data" / "golden_seed0.npz"


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """The module golden file (``LIVEPORTRAIT_GOLDEN`` overrides the path)."""
    path = Path(os.environ.get("LIVEPORTRAIT_GOLDEN") or GOLDEN_DEFAULT)
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def golden_weights(golden: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic bundle written with the golden file's own weights seed."""
    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), int(golden["weights_seed"]))


@pytest.fixture(scope="session")
def golden_model(golden_weights: Path) -> LivePortraitModel:
    torch.manual_seed(0)
    return LivePortraitModel.from_weights(golden_weights, "cpu")
