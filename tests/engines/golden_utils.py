"""Comparisons against the oracle's golden data, with the oracle README's float32 tolerances."""

from pathlib import Path

import numpy as np
import pytest

from engines.acceleration.export import MANIFEST_NAME, export_onnx_atomic
from engines.model import LivePortraitModel

REL_L2 = 1e-4


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - e) / max(float(np.linalg.norm(e)), 1e-30))


def assert_close(actual: np.ndarray, expected: np.ndarray, name: str, tol: float = REL_L2) -> None:
    assert np.shape(actual) == np.shape(expected), f"{name}: shape {np.shape(actual)} != {np.shape(expected)}"
    err = rel_l2(actual, expected)
    assert err <= tol, f"{name}: relative L2 error {err:.3g} > {tol:g}"


def assert_close_sampled(
    actual: np.ndarray, golden: dict[str, np.ndarray], name: str, tol: float = REL_L2
) -> None:
    """A tensor stored as a sample: shape, values at stored indices, and whole-tensor sum / sum of squares."""
    a = np.asarray(actual, dtype=np.float64)
    assert a.shape == tuple(golden[f"{name}__shape"]), f"{name}: shape {a.shape}"
    assert_close(a.ravel()[golden[f"{name}__idx"]], golden[f"{name}__val"], f"{name} (sampled values)", tol)
    sumsq = float(golden[f"{name}__sumsq"])
    assert abs((a**2).sum() - sumsq) <= tol * sumsq, f"{name}: sum of squares off"
    # the sum may nearly cancel: bound its error by the tensor's norm times sqrt(n)
    assert abs(a.sum() - float(golden[f"{name}__sum"])) <= tol * np.sqrt(a.size * sumsq), f"{name}: sum off"


def assert_frames_close(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """uint8 frames: at most 1 grey level apart and 1e-3 relative L2."""
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, f"{name}: max grey-level difference {diff.max()}"
    assert_close(actual, expected, name, 1e-3)


def golden_export_dir(
    model: LivePortraitModel, tmp_path_factory: pytest.TempPathFactory, precision: str
) -> Path:
    """The export of the golden model at `precision`, made once per session under the base temp dir."""
    out = tmp_path_factory.getbasetemp() / f"golden-onnx-{precision}"
    if not (out / MANIFEST_NAME).is_file():
        export_onnx_atomic(model, out, precision=precision, max_batch=4)
    return out
