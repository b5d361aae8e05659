"""Golden files of the official code: our copies in tests/data, or the file an environment variable names."""

import os
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


def load_golden(variable: str, default_name: str) -> dict[str, np.ndarray]:
    """Every array of the golden file named by env `variable`, else of tests/data/`default_name`
    (never unpickled)."""
    path = Path(os.environ.get(variable) or DATA / default_name)
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
