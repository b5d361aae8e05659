"""Paste-back of a 512 crop into the original frame."""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data as skdata

from engines.crop import CropBox, crop_image, crop_transform
from engines.pasteback import mask_template, paste_back, warp_mask


def max_grey_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_mask_template_is_the_official_ramp() -> None:
    mask = mask_template()
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[256, :17], np.round(np.arange(17) * 255 / 16 - 0.5 + 1e-9).clip(0))
    assert (mask[16:-16, 16:-16] == 255).all()
    assert mask[0, 0] == 0 and mask[-1, -1] == 0


def test_round_trip_of_an_unchanged_crop() -> None:
    img = skdata.astronaut()
    M_o2c = crop_transform(CropBox(center=np.array([250.0, 190.0]), size=300.0, angle=0.3), 512)
    M_c2o = np.linalg.inv(M_o2c)
    crop = crop_image(img, M_o2c, 512)
    out = paste_back(crop, M_c2o, img)
    mask = warp_mask(M_c2o, img.shape[:2])[..., 0]
    assert out.dtype == np.uint8 and out.shape == img.shape

    outside = mask == 0
    assert outside.mean() > 0.5
    np.testing.assert_array_equal(out[outside], img[outside])

    inside = mask == 1
    assert inside.sum() > 200 * 200
    back = cv2.warpAffine(crop, M_c2o[:2], (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)
    assert max_grey_diff(out[inside], back[inside]) <= 1
    assert np.abs(out[inside].astype(np.float64) - img[inside]).mean() < 3.0


def test_mask_is_cached_and_explicit_mask_gives_the_same_result() -> None:
    img = skdata.astronaut()[:300, :400]
    M_c2o = np.linalg.inv(crop_transform(CropBox(center=np.array([200.0, 150.0]), size=256.0), 512))
    first = warp_mask(M_c2o[:2], img.shape[:2])
    assert warp_mask(M_c2o, img.shape[:2]) is first
    assert first.shape == (300, 400, 1) and not first.flags.writeable
    result = np.full((512, 512, 3), 200, dtype=np.uint8)
    out = paste_back(result, M_c2o, img)
    np.testing.assert_array_equal(out, paste_back(result, M_c2o, img, mask=first[..., 0]))
    np.testing.assert_array_equal(out, paste_back(result, M_c2o, img, mask=np.repeat(first, 3, axis=2)))
    assert (out[150, 200] == 200).all()


def test_crop_outside_the_frame_leaves_it_unchanged() -> None:
    img = skdata.astronaut()[:100, :100]
    M_c2o = np.array([[1.0, 0.0, 500.0], [0.0, 1.0, 500.0]])
    result = np.zeros((512, 512, 3), dtype=np.uint8)
    out = paste_back(result, M_c2o, img)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_crop_golden_pasteback(golden_crop: dict) -> None:
    image = golden_crop["image"]
    M_c2o = np.linalg.inv(golden_crop["crop106_M_o2c"][0].astype(np.float64))
    mask = warp_mask(M_c2o, image.shape[:2])
    np.testing.assert_allclose(
        np.broadcast_to(mask, image.shape), golden_crop["pasteback_mask"], atol=1 / 255 + 1e-6
    )
    out = paste_back(golden_crop["pasteback_result512"], M_c2o, image)
    assert max_grey_diff(out, golden_crop["pasteback_out"]) <= 1
