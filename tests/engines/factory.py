"""Engines for tests, built the one way the CLI, the worker and bench/ build them (load_engine)."""

from pathlib import Path
from typing import Any

from common.engine_config import EngineConfig
from engines.engine import Engine, load_engine
from engines.pipeline import Animator


def cpu_engine(weights: Path, **config: Any) -> Engine:
    """An engine on the CPU for `weights`; `config` overrides EngineConfig fields (plain model unless
    optimize=True, as the golden tests compare the official modules)."""
    config = {"device": "cpu", "optimize": False, **config}
    return load_engine(EngineConfig(weights_dir=weights, **config))


def cpu_animator(weights: Path, **config: Any) -> Animator:
    """The file job on `cpu_engine(weights, **config)`."""
    return Animator(cpu_engine(weights, **config))
