"""Eye and lip open ratios on 203-point landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face.ratios import eye_open_ratio, lip_open_ratio


def test_ratios_by_hand() -> None:
    lmk = np.zeros((2, 203, 2), dtype=np.float32)
    # left eye: corners 0 and 12 are 4 apart, lids 6 and 18 are 3 apart
    lmk[:, 12] = [4, 0]
    lmk[:, 6], lmk[:, 18] = [2, -1], [2, 2]
    # right eye: corners 24 and 36 are 10 apart, lids 30 and 42 are 1 apart
    lmk[:, 24], lmk[:, 36] = [20, 0], [20, 10]
    lmk[:, 30], lmk[:, 42] = [25, 5], [26, 5]
    # lips: corners 48 and 66 are 5 apart (3-4-5), lips 90 and 102 are 2 apart
    lmk[:, 48], lmk[:, 66] = [0, 30], [3, 34]
    lmk[:, 90], lmk[:, 102] = [1, 31], [1, 33]
    lmk[1, 18] = [2, -1]  # second item: left eye closed

    eyes = eye_open_ratio(lmk)
    lips = lip_open_ratio(lmk)
    assert eyes.shape == (2, 2) and lips.shape == (2, 1)
    assert eyes.dtype == np.float32
    np.testing.assert_allclose(eyes, [[3 / (4 + 1e-6), 1 / (10 + 1e-6)], [0.0, 1 / (10 + 1e-6)]], rtol=1e-6)
    np.testing.assert_allclose(lips, [[2 / (5 + 1e-6)], [2 / (5 + 1e-6)]], rtol=1e-6)


def test_zero_width_eye_stays_finite() -> None:
    lmk = np.zeros((1, 203, 2))
    lmk[0, 18] = [0, 1e-3]
    np.testing.assert_allclose(eye_open_ratio(lmk)[0, 0], 1e-3 / 1e-6)


def test_wrong_layout_is_rejected() -> None:
    with pytest.raises(ValueError):
        eye_open_ratio(np.zeros((1, 106, 2)))
    with pytest.raises(ValueError):
        lip_open_ratio(np.zeros((203, 2)))


def test_crop_golden_ratios(golden_crop: dict) -> None:
    lmk = golden_crop["lmk203"]
    np.testing.assert_allclose(eye_open_ratio(lmk), golden_crop["ratio_eye"], rtol=1e-5)
    np.testing.assert_allclose(lip_open_ratio(lmk), golden_crop["ratio_lip"], rtol=1e-5)
