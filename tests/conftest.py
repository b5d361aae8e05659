"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

GOLDEN_CROP_DEFAULT = Path(__file__).parent / "data" / "golden_crop_seed0.npz"


@pytest.fixture(scope="session")
def golden_crop() -> dict[str, np.ndarray]:
    """Arrays of the crop/ratio/paste-back golden file (``LIVEPORTRAIT_GOLDEN_CROP`` overrides the path)."""
    path = Path(os.environ.get("LIVEPORTRAIT_GOLDEN_CROP") or GOLDEN_CROP_DEFAULT)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
