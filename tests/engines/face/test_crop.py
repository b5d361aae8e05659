"""Crop geometry: golden numbers of the official pipeline and hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.face.crop import (
    CropBox,
    crop_box_from_face_box,
    crop_box_from_landmarks,
    crop_frames,
    crop_image,
    crop_transform,
    driving_global_box,
    to_network_input,
    to_network_input_frames,
    transform_points,
    warp_affine,
)
from engines.model import image_to_tensor
from tests.engines.devices import DEVICES

ASTRONAUT_PATH = Path(__file__).parents[3] / "engines" / "data" / "astronaut.jpg"

EYES = {106: ([33, 35, 40, 39], [87, 89, 94, 93]), 203: ([0, 6, 12, 18], [24, 30, 36, 42])}
LIPS = {106: (52, 61), 203: (48, 66)}


def assert_transform_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * np.abs(expected).max())


def max_grey_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def upright_face(n: int) -> np.ndarray:
    """(n,2) landmarks spanning x 50..150, y 40..200, eye centre (100,80), lip centre (100,140)."""
    rng = np.random.default_rng(n)
    pts = np.column_stack([rng.uniform(60, 140, n), rng.uniform(50, 190, n)])
    left, right = EYES[n]
    pts[left] = [[70, 75], [80, 85], [90, 75], [80, 85]]
    pts[right] = [[110, 75], [120, 85], [130, 75], [120, 85]]
    pts[list(LIPS[n])] = [[100, 130], [100, 150]]
    extremes = [i for i in range(n) if i not in {*left, *right, *LIPS[n]}][:4]
    pts[extremes] = [[50, 120], [150, 120], [100, 40], [100, 200]]
    return pts


@pytest.mark.parametrize("n", [106, 203])
def test_axis_aligned_box_by_hand(n: int) -> None:
    box = crop_box_from_landmarks(upright_face(n), scale=2.0, vy_ratio=-0.1)
    size = 160 * 2.0
    assert box.size == pytest.approx(size)
    assert box.angle == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(box.center, [100.0, 120.0 - 0.1 * size], atol=1e-9)
    s = 512 / size
    expected = [[s, 0, 256 - s * 100], [0, s, 256 - s * 88], [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(crop_transform(box, 512), expected, atol=1e-9)


@pytest.mark.parametrize("n", [106, 203])
@pytest.mark.parametrize("theta", [0.4, -1.1, 2.5])
def test_rotated_box_has_the_rotation_angle(n: int, theta: float) -> None:
    pts = upright_face(n)
    c, s = np.cos(theta), np.sin(theta)
    pivot = np.array([300.0, 250.0])
    rotated = (pts - pivot) @ np.array([[c, -s], [s, c]]).T + pivot
    box = crop_box_from_landmarks(pts, vx_ratio=0.05)
    rbox = crop_box_from_landmarks(rotated, vx_ratio=0.05)
    assert rbox.angle == pytest.approx(theta)
    assert rbox.size == pytest.approx(box.size)
    # the crop does not depend on how the face is turned in the image
    np.testing.assert_allclose(
        transform_points(rotated, crop_transform(rbox)), transform_points(pts, crop_transform(box)), atol=1e-9
    )


def test_vx_ratio_moves_along_the_face_x_axis() -> None:
    pts = upright_face(203)
    base = crop_box_from_landmarks(pts, vx_ratio=0.0)
    moved = crop_box_from_landmarks(pts, vx_ratio=0.2)
    np.testing.assert_allclose(moved.center - base.center, [0.2 * base.size, 0.0], atol=1e-9)


def test_no_rotation_keeps_centre_and_size() -> None:
    pts = upright_face(106) @ np.array([[0.8, -0.6], [0.6, 0.8]]).T
    rot = crop_box_from_landmarks(pts, rotate=True)
    norot = crop_box_from_landmarks(pts, rotate=False)
    assert norot.angle == 0.0
    assert rot.angle != pytest.approx(0.0)
    np.testing.assert_allclose(norot.center, rot.center)
    assert norot.size == rot.size


def test_coincident_eye_and_lip_fall_back_to_upright() -> None:
    pts = upright_face(106)
    pts[[52, 61]] = pts[[33, 35, 40, 39, 87, 89, 94, 93]].mean(axis=0)
    assert crop_box_from_landmarks(pts).angle == 0.0


def test_face_box_by_hand() -> None:
    box = crop_box_from_face_box([10, 20, 110, 220], scale=2.0, vx_ratio=0.05, vy_ratio=-0.1)
    assert box.size == pytest.approx(400.0)
    assert box.angle == 0.0
    np.testing.assert_allclose(box.center, [60 + 20, 120 - 40])


def test_other_layouts_use_the_point_box() -> None:
    pts = np.array([[10.0, 30.0], [50.0, 20.0], [40.0, 90.0], [20.0, 60.0], [30.0, 40.0]])
    box = crop_box_from_landmarks(pts, scale=1.5, vy_ratio=-0.2)
    expected = crop_box_from_face_box([10, 20, 50, 90], scale=1.5, vy_ratio=-0.2)
    np.testing.assert_allclose(box.center, expected.center)
    assert box.size == expected.size
    assert box.angle == 0.0


def test_upright_face_box_equals_its_landmark_box() -> None:
    pts = upright_face(203)
    via_box = crop_box_from_face_box([*pts.min(axis=0), *pts.max(axis=0)], vx_ratio=0.1)
    via_lmk = crop_box_from_landmarks(pts, vx_ratio=0.1)
    np.testing.assert_allclose(via_box.center, via_lmk.center, atol=1e-9)
    assert via_box.size == pytest.approx(via_lmk.size)


def test_bad_landmarks_are_rejected() -> None:
    with pytest.raises(ValueError):
        crop_box_from_landmarks(np.zeros((106, 3)))


def test_transform_points_accepts_2x3_and_3x3() -> None:
    M = np.array([[2.0, 0.5, 3.0], [-0.5, 2.0, -1.0]])
    pts = np.array([[[1.0, 2.0], [0.0, 0.0]]])
    expected = np.array([[[6.0, 2.5], [3.0, -1.0]]])
    np.testing.assert_allclose(transform_points(pts, M), expected)
    np.testing.assert_allclose(transform_points(pts, np.vstack([M, [0, 0, 1]])), expected)


def test_integer_shift_crop_is_a_copy() -> None:
    img = np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8)
    crop = crop_image(img, np.array([[1.0, 0.0, -10.0], [0.0, 1.0, -20.0]]), 40)
    np.testing.assert_array_equal(crop, img[20:60, 10:50])
    outside = crop_image(img, np.array([[1.0, 0.0, -70.0], [0.0, 1.0, -60.0]]), 40)
    np.testing.assert_array_equal(outside[20:, :], 0)
    np.testing.assert_array_equal(outside[:, 20:], 0)
    np.testing.assert_array_equal(outside[:20, :20], img[60:, 70:])


def test_warp_matches_opencv_on_smooth_images_and_windows() -> None:
    y, x = np.mgrid[0:120, 0:160]
    img = np.dstack([x * 1.5, y * 2.0, (x + y) * 0.7]).astype(np.uint8)
    M = crop_transform(CropBox(center=np.array([80.0, 60.0]), size=90.0, angle=0.3), 128)
    full = warp_affine(img, M, (128, 128))
    reference = cv2.warpAffine(img, M[:2], (128, 128), flags=cv2.INTER_LINEAR)
    assert max_grey_diff(full[8:-8, 8:-8], reference[8:-8, 8:-8]) <= 1
    np.testing.assert_array_equal(warp_affine(img, M, (50, 30), offset=(20, 40)), full[40:70, 20:70])
    gray = warp_affine(img[..., 0].astype(np.float32), M, (128, 128))
    assert gray.shape == (128, 128) and gray.dtype == np.float32


def test_network_input_is_area_resize() -> None:
    img = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    small = to_network_input(img)
    assert small.shape == (256, 256, 3)
    expected = img.reshape(256, 2, 256, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small - expected).max() <= 0.5 + 1e-9


def test_driving_box_of_identical_frames() -> None:
    pts = upright_face(203)
    crop = driving_global_box([pts, pts, pts], scale=2.0, vy_ratio=-0.1)
    size = 320.0
    np.testing.assert_allclose(crop.boxes, np.tile([100 - 160, 88 - 160, 100 + 160, 88 + 160], (3, 1)))
    np.testing.assert_allclose(crop.global_box, crop.boxes[0])
    s = 512 / size
    np.testing.assert_allclose(crop.M_o2c, [[s, 0, 256 - s * 100], [0, s, 256 - s * 88], [0.0, 0.0, 1.0]])


def test_driving_box_averages_frames_without_rotation() -> None:
    pts = upright_face(106)
    turned = (pts - 100) @ np.array([[0.6, -0.8], [0.8, 0.6]]).T + 100
    crop = driving_global_box(np.stack([pts, turned + 7]))
    np.testing.assert_allclose(crop.global_box, crop.boxes.mean(axis=0))
    left, top, right, bottom = crop.global_box
    corners = transform_points(np.array([[left, top], [right, bottom]]), crop.M_o2c)
    np.testing.assert_allclose(corners, [[0, 0], [512, 512]], atol=1e-9)
    with pytest.raises(ValueError):
        driving_global_box([])


@pytest.mark.parametrize(
    ("lmk_key", "m_key", "rotate"),
    [
        ("lmk106", "crop106_M_o2c", True),
        ("lmk203", "crop203_M_o2c", True),
        ("lmk106", "crop106_norot_M_o2c", False),
    ],
)
def test_crop_golden_transforms(golden_crop: dict, lmk_key: str, m_key: str, rotate: bool) -> None:
    for lmk, expected in zip(golden_crop[lmk_key], golden_crop[m_key], strict=True):
        box = crop_box_from_landmarks(lmk, scale=2.3, vx_ratio=0.0, vy_ratio=-0.125, rotate=rotate)
        assert_transform_close(crop_transform(box, 512), expected)


def test_crop_golden_images(golden_crop: dict) -> None:
    box = crop_box_from_landmarks(golden_crop["lmk106"][0], scale=2.3, vy_ratio=-0.125)
    for M in (golden_crop["crop106_M_o2c"][0], crop_transform(box, 512)):
        img512 = crop_image(golden_crop["image"], M, 512)
        assert max_grey_diff(img512, golden_crop["crop106_0_img512"]) <= 1
        assert max_grey_diff(to_network_input(img512), golden_crop["crop106_0_img256"]) <= 1


def test_crop_golden_driving(golden_crop: dict) -> None:
    crop = driving_global_box(golden_crop["drv_lmk203"], scale=2.2, vy_ratio=-0.1, dsize=512)
    assert_transform_close(crop.boxes, golden_crop["drv_boxes"])
    assert_transform_close(crop.global_box, golden_crop["drv_global_box"])
    assert_transform_close(crop.M_o2c, golden_crop["drv_M_o2c"])


# --- torch versions: crop_frames and to_network_input_frames -----------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    img = cv2.imread(str(ASTRONAUT_PATH))
    assert img is not None, ASTRONAUT_PATH
    return img


def assert_matches_reference(actual: torch.Tensor, expected: np.ndarray) -> None:
    """At most 1 grey level off and >= 99.9 % of the values identical."""
    got = actual.cpu().numpy()
    assert max_grey_diff(got, expected) <= 1
    assert (got == expected).mean() >= 0.999


def box_transform(center: tuple[float, float], size: float, angle: float) -> np.ndarray:
    return crop_transform(CropBox(center=np.array(center), size=size, angle=angle), 512)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_frames_per_frame_transforms_match_crop_image(astronaut: np.ndarray, device: str) -> None:
    frames = np.stack([astronaut, astronaut[::-1, ::-1], astronaut[:, :, ::-1]])
    transforms = np.stack(
        [
            box_transform((256.0, 230.0), 300.0, 0.35),  # rotated, upscaled
            box_transform((40.0, 470.0), 420.0, -2.4),  # rotated and mostly outside the frame
            box_transform((256.0, 256.0), 900.0, 1.0),  # downscaled, the frame inside the crop
        ]
    )
    with torch.inference_mode():
        crops = crop_frames(torch.from_numpy(frames).to(device), transforms)
    assert crops.shape == (3, 512, 512, 3) and crops.dtype == torch.uint8
    assert crops.device.type == device
    for crop, frame, M in zip(crops, frames, transforms, strict=True):
        assert_matches_reference(crop, crop_image(frame, M))
    outside = (crops == 0).all(dim=3)  # the zero border
    assert outside[1].float().mean() > 0.5 and outside[1, :20].all()
    assert outside[2, :20].all() and outside[2, -20:].all() and outside[2, :, :20].all()


@pytest.mark.parametrize("device", DEVICES)
def test_crop_frames_shared_transform_on_random_frames(device: str) -> None:
    frames = np.random.default_rng(3).integers(0, 256, (3, 960, 1280, 3), dtype=np.uint8)
    M = box_transform((1200.0, 100.0), 350.0, 0.8)  # the crop leaves the frame at the top right
    batch = torch.from_numpy(frames).to(device)
    crops = crop_frames(batch, M[:2])
    assert crops.shape == (3, 512, 512, 3) and crops.device.type == device
    for crop, frame in zip(crops, frames, strict=True):
        assert_matches_reference(crop, crop_image(frame, M))
    assert torch.equal(crop_frames(batch[:1], torch.from_numpy(M).to(device)), crops[:1])


@pytest.mark.parametrize("device", DEVICES)
def test_crop_frames_keep_subpixel_precision_far_from_the_origin(device: str) -> None:
    frame = np.random.default_rng(4).integers(0, 256, (1, 160, 4096, 3), dtype=np.uint8)
    M = box_transform((4010.0, 90.0), 123.4, 0.2)  # 4096-px coordinates, partly outside
    crop = crop_frames(torch.from_numpy(frame).to(device), M[None], dsize=256)
    assert crop.shape == (1, 256, 256, 3)
    assert_matches_reference(crop[0], warp_affine(frame[0], M, (256, 256)))


def test_crop_frames_reject_bad_inputs() -> None:
    frames = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    with pytest.raises(ValueError):
        crop_frames(frames, np.eye(3)[None].repeat(3, axis=0))
    with pytest.raises(ValueError):
        crop_frames(frames.float(), np.eye(3))
    with pytest.raises(ValueError):
        crop_frames(frames[0], np.eye(3))


@pytest.mark.parametrize("device", DEVICES)
def test_network_input_frames_equal_opencv_area_resize(device: str) -> None:
    rng = np.random.default_rng(5)
    crops = np.concatenate(
        [
            rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8),
            rng.integers(0, 4, (1, 512, 512, 3), dtype=np.uint8),  # many exact halves to round
        ]
    )
    with torch.inference_mode():
        net = to_network_input_frames(torch.from_numpy(crops).to(device))
    assert net.shape == (3, 3, 256, 256) and net.dtype == torch.float32
    assert net.device.type == device
    expected = image_to_tensor(torch.from_numpy(np.stack([to_network_input(c) for c in crops])))
    assert torch.equal(net.cpu(), expected)


@pytest.mark.parametrize("shape", [(1024, 1024), (512, 1024), (768, 768)])
def test_network_input_frames_other_integer_factors(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(6)
    crops = np.concatenate(
        [
            rng.integers(0, 256, (1, *shape, 3), dtype=np.uint8),
            rng.integers(0, 3, (1, *shape, 3), dtype=np.uint8),
        ]
    )
    expected = image_to_tensor(torch.from_numpy(np.stack([to_network_input(c) for c in crops])))
    assert torch.equal(to_network_input_frames(torch.from_numpy(crops)), expected)


def test_network_input_frames_reject_non_integer_factors() -> None:
    with pytest.raises(ValueError):
        to_network_input_frames(torch.zeros(1, 500, 500, 3, dtype=torch.uint8))
