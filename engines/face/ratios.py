"""Eye and lip open ratios on the 203-point landmark layout (inputs of the retargeting MLPs)."""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def _distance_ratio(lmk: np.ndarray, a: int, b: int, c: int, d: int) -> np.ndarray:
    """|p_a - p_b| / (|p_c - p_d| + EPS) per batch item: (B,203,2) -> (B,1)."""
    num = np.linalg.norm(lmk[:, a] - lmk[:, b], axis=-1, keepdims=True)
    den = np.linalg.norm(lmk[:, c] - lmk[:, d], axis=-1, keepdims=True)
    return num / (den + EPS)


def _check(lmk: np.ndarray) -> np.ndarray:
    """Validate (B,203,2) landmarks; returns them as float32 or float64."""
    arr = np.asarray(lmk)
    if arr.ndim != 3 or arr.shape[1:] != (203, 2):
        raise ValueError(f"expected (B,203,2) landmarks, got {arr.shape}")
    return arr.astype(np.result_type(arr.dtype, np.float32), copy=False)


def eye_open_ratio(lmk203: np.ndarray) -> np.ndarray:
    """Eye open ratios (B,2) [left, right] of (B,203,2) landmarks.

    left = |p6 - p18| / (|p0 - p12| + 1e-6); right = |p30 - p42| / (|p24 - p36| + 1e-6).
    """
    lmk = _check(lmk203)
    return np.concatenate([_distance_ratio(lmk, 6, 18, 0, 12), _distance_ratio(lmk, 30, 42, 24, 36)], axis=1)


def lip_open_ratio(lmk203: np.ndarray) -> np.ndarray:
    """Lip open ratio (B,1) of (B,203,2) landmarks: |p90 - p102| / (|p48 - p66| + 1e-6)."""
    return _distance_ratio(_check(lmk203), 90, 102, 48, 66)
