"""Paste-back of a 512 crop into the original frame."""

from __future__ import annotations

import weakref

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engines.face import pasteback
from engines.face.crop import CropBox, crop_image, crop_transform
from engines.face.pasteback import (
    CROP_WORKING_BYTES,
    PASTE_BYTES_PER_PIXEL,
    _crops_with_mask,
    _mask_template_on,
    _paste_piece,
    mask_template,
    paste_back,
    paste_back_frames,
    paste_pieces,
    warp_mask,
)
from engines.model import to_uint8_frames
from tests.engines.devices import DEVICES


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


# --- torch version: paste_back_frames ----------------------------------------------------------


def crop_to_original(center: tuple[float, float], size: float, angle: float) -> np.ndarray:
    return np.linalg.inv(crop_transform(CropBox(center=np.array(center), size=size, angle=angle), 512))


def frame_1280x960() -> np.ndarray:
    return cv2.resize(skdata.astronaut(), (1280, 960), interpolation=cv2.INTER_LINEAR)


def renderer_output(frame: np.ndarray, M_c2o: np.ndarray, seed: int) -> torch.Tensor:
    """A (3,512,512) float32 'render': the crop of ``frame`` plus noise, a little outside [0, 1]."""
    crop = crop_image(frame, np.linalg.inv(M_c2o), 512).astype(np.float32) / 255
    noise = np.random.default_rng(seed).normal(0.0, 0.05, crop.shape).astype(np.float32)
    return torch.from_numpy(crop + noise).permute(2, 0, 1)


def assert_matches_paste_back(
    out: torch.Tensor, results: torch.Tensor, M_c2o: np.ndarray, originals: np.ndarray
) -> None:
    """Each frame within 2 grey levels (mean < 0.05) of `paste_back`, the original outside the mask."""
    crops = to_uint8_frames(results.cpu()).numpy()
    M_c2o = np.broadcast_to(M_c2o, (len(crops), 3, 3))
    originals = np.broadcast_to(originals, (len(crops), *originals.shape[-3:]))
    for frame, crop, M, original in zip(out.cpu().numpy(), crops, M_c2o, originals, strict=True):
        diff = np.abs(frame.astype(np.int16) - paste_back(crop, M, original))
        assert diff.max() <= 2 and diff.mean() < 0.05
        outside = warp_mask(M, original.shape[:2])[..., 0] == 0
        np.testing.assert_array_equal(frame[outside], original[outside])


@pytest.mark.parametrize("device", DEVICES)
def test_paste_back_frames_per_frame_transforms(device: str) -> None:
    original = frame_1280x960()
    transforms = np.stack(
        [
            crop_to_original((420.0, 330.0), 380.0, 0.3),  # rotated
            crop_to_original((540.0, 400.0), 300.0, -0.6),
            crop_to_original((120.0, 90.0), 420.0, 2.6),  # partly outside the frame
        ]
    )
    results = torch.stack([renderer_output(original, M, i) for i, M in enumerate(transforms)])
    with torch.inference_mode():
        out = paste_back_frames(results.to(device), transforms, torch.from_numpy(original).to(device))
    assert out.shape == (3, 960, 1280, 3) and out.dtype == torch.uint8
    assert out.device.type == device
    assert_matches_paste_back(out, results, transforms, original)
    assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("device", DEVICES)
def test_paste_back_frames_shared_transform_and_sharp_results(device: str) -> None:
    originals = np.random.default_rng(7).integers(0, 256, (3, 960, 1280, 3), dtype=np.uint8)
    M_c2o = crop_to_original((1150.0, 880.0), 520.0, 1.0)  # rotated, leaves the frame at the corner
    results = torch.rand(3, 3, 512, 512, generator=torch.Generator().manual_seed(8)) * 1.2 - 0.1
    M_device = torch.from_numpy(M_c2o[:2]).to(device)
    out = paste_back_frames(results.to(device), M_device, torch.from_numpy(originals).to(device))
    assert out.shape == (3, 960, 1280, 3) and out.dtype == torch.uint8 and out.device.type == device
    assert_matches_paste_back(out, results, M_c2o, originals)


@pytest.mark.parametrize("device", DEVICES)
def test_paste_back_frames_crop_outside_the_frame_leaves_it_unchanged(device: str) -> None:
    original = torch.from_numpy(skdata.astronaut()[:100, :100].copy()).to(device)
    M_c2o = np.array([[1.0, 0.0, 500.0], [0.0, 1.0, 500.0]])
    out = paste_back_frames(torch.zeros(2, 3, 512, 512, device=device), M_c2o, original)
    assert out.shape == (2, 100, 100, 3)
    assert torch.equal(out, original.expand(2, -1, -1, -1))
    out[0, 0, 0] = 1 - original[0, 0]
    assert not torch.equal(out[0], original) and torch.equal(out[1], original)


def test_paste_back_frames_reject_bad_inputs() -> None:
    results = torch.zeros(2, 3, 512, 512)
    original = torch.zeros(64, 64, 3, dtype=torch.uint8)
    with pytest.raises(ValueError):
        paste_back_frames(results[:, :, :256], np.eye(3), original)
    with pytest.raises(ValueError):
        paste_back_frames(results, np.eye(3), original.float())
    with pytest.raises(ValueError):
        paste_back_frames(results, np.eye(3), original.expand(3, -1, -1, -1))
    with pytest.raises(ValueError):
        paste_back_frames(results, np.stack([np.eye(3)] * 3), original)


# --- paste_back_frames in pieces: a bounded working set, the same frames ----------------------------


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storage that torch operations allocate and that are still alive, and their
    peak: the working set of the code run under this mode. Storages of `known` tensors (inputs) and
    views of them are not counted."""

    def __init__(self, *known: torch.Tensor) -> None:
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if storage.nbytes() and key not in self.live and key not in self.known:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def batch_to_paste() -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Three renders, their per-frame transforms and one 1280x960 original."""
    original = frame_1280x960()
    transforms = np.stack(
        [
            crop_to_original((420.0, 330.0), 380.0, 0.3),
            crop_to_original((540.0, 400.0), 300.0, -0.6),
            crop_to_original((120.0, 90.0), 420.0, 2.6),
        ]
    )
    results = torch.stack([renderer_output(original, M, i) for i, M in enumerate(transforms)])
    return results, transforms, torch.from_numpy(original)


def piece_bytes(frames: slice, box: tuple[int, int, int, int]) -> int:
    y0, y1, x0, x1 = box
    return (frames.stop - frames.start) * (CROP_WORKING_BYTES + (y1 - y0) * (x1 - x0) * PASTE_BYTES_PER_PIXEL)


@pytest.mark.parametrize("budget", [1 << 40, 64 << 20, 12 << 20])
def test_paste_back_frames_in_pieces_equals_one_piece(budget: int) -> None:
    results, transforms, original = batch_to_paste()
    whole = paste_back_frames(results, transforms, original, budget_bytes=1 << 40)
    assert torch.equal(paste_back_frames(results, transforms, original, budget_bytes=budget), whole)


@pytest.mark.parametrize("budget", [12 << 20, 40 << 20, 100 << 20, 1 << 30])
def test_paste_pieces_cover_the_box_once_within_the_budget(budget: int) -> None:
    box = (100, 1900, 50, 1650)  # 1800 rows of 1600 pixels: ~550 MB per frame
    covered = np.zeros((5, 1800), dtype=int)
    for frames, boxes in paste_pieces(5, box, budget):
        for y0, y1, x0, x1 in boxes:
            assert (x0, x1) == (50, 1650) and 100 <= y0 < y1 <= 1900
            assert piece_bytes(frames, (y0, y1, x0, x1)) <= budget
            covered[frames, y0 - 100 : y1 - 100] += 1
    assert (covered == 1).all()


def test_paste_pieces_of_whole_frames_and_of_one_row() -> None:
    box = (0, 3, 0, 10)
    assert paste_pieces(5, box, 2 * piece_bytes(slice(0, 1), box)) == [
        (slice(0, 2), [box]),
        (slice(2, 4), [box]),
        (slice(4, 5), [box]),
    ]
    rows = [(y, y + 1, 0, 10) for y in range(3)]
    assert paste_pieces(2, box, 1) == [(slice(0, 1), rows), (slice(1, 2), rows)]


@pytest.mark.parametrize("budget", [12 << 20, 48 << 20, 160 << 20])
def test_paste_back_frames_working_set_stays_within_the_budget(budget: int) -> None:
    """Measured: the peak of the bytes that paste_back_frames allocates, less its output."""
    results, transforms, original = batch_to_paste()
    known = (results, original, _mask_template_on(original.device))
    with torch.inference_mode(), LiveBytes(*known) as live:
        out = paste_back_frames(results, transforms, original, budget_bytes=budget)
    assert 0 < live.peak - out.nbytes <= budget


def test_paste_bytes_per_pixel_bounds_the_measured_working_set() -> None:
    """One piece of one whole frame: the measured peak is within the model that sizes the pieces."""
    results, transforms, original = batch_to_paste()
    out = original[None].clone()
    box = (100, 700, 200, 900)
    known = (results, original, out, _mask_template_on(original.device))
    with torch.inference_mode(), LiveBytes(*known) as live:
        _paste_piece(_crops_with_mask(results[:1]), transforms[:1], out, box)
    measured = live.peak
    assert 0.7 * piece_bytes(slice(0, 1), box) < measured <= piece_bytes(slice(0, 1), box)


def test_paste_back_frames_out_of_device_memory_splits_then_uses_the_host(monkeypatch) -> None:
    """A fake of the device running out of memory (CUDA cannot run here): pieces of more than 60000
    pixels raise torch.cuda.OutOfMemoryError off the host; the frames are the same."""
    results, transforms, original = batch_to_paste()
    expected = paste_back_frames(results, transforms, original)
    calls: list[tuple[int, int, bool]] = []
    real = pasteback._paste_piece

    def short_of_memory(source, M_c2o, out, roi, on_host=False):
        y0, y1, x0, x1 = roi
        pixels = len(source) * (y1 - y0) * (x1 - x0)
        calls.append((len(source), pixels, on_host))
        if pixels > 20_000 and not on_host:
            raise torch.cuda.OutOfMemoryError("fake: out of device memory")
        real(source, M_c2o, out, roi, on_host)

    monkeypatch.setattr(pasteback, "_paste_piece", short_of_memory)
    assert torch.equal(paste_back_frames(results, transforms, original), expected)
    done = [(frames, pixels) for frames, pixels, on_host in calls if pixels <= 20_000 or on_host]
    assert calls[0][0] == 3 and all(frames == 1 for frames, _ in done)
    assert any(on_host for *_, on_host in calls)  # halves of <= MIN_PIECE_PIXELS that still fail
    assert sum(pixels for _, pixels in done) == calls[0][1]


def test_paste_back_frames_all_on_the_host_when_the_device_has_no_memory(monkeypatch) -> None:
    results, transforms, original = batch_to_paste()
    expected = paste_back_frames(results, transforms, original)
    real = pasteback._paste_piece
    hosts: list[bool] = []

    def no_memory(source, M_c2o, out, roi, on_host=False):
        hosts.append(on_host)
        if not on_host:
            raise torch.cuda.OutOfMemoryError("fake: out of device memory")
        real(source, M_c2o, out, roi, on_host)

    monkeypatch.setattr(pasteback, "_paste_piece", no_memory)
    assert torch.equal(paste_back_frames(results, transforms, original), expected)
    assert hosts.count(True) >= 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU check runs it")
def test_cuda_paste_back_frames_peak_memory_within_the_budget() -> None:
    results, transforms, original = batch_to_paste()
    results, original = results.cuda(), original.cuda()
    expected = paste_back_frames(results, transforms, original, budget_bytes=1 << 40)
    budget = 48 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = paste_back_frames(results, transforms, original, budget_bytes=budget)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before - out.nbytes <= budget
    assert torch.equal(out, expected)
