"""engines.motion.transfer: driving motion -> driving keypoints x_d, specified by its own behaviour.

Keypoints are row vectors, x = scale * (kp @ R + exp) + [tx, ty, 0] (paper eq. 1). For a driving
frame d and the first driving frame d0 (the reference), relative motion re-poses the source s as
R = R_d R_d0^T R_s, exp = exp_s + exp_d - exp_d0, scale = scale_s * scale_d / scale_d0,
t = t_s + t_d - t_d0; absolute motion takes the driving pose and the official subset of the driving
expression. Then come the expression-friendly rescale, stitching, eye/lip retargeting and the
driving multiplier. Motion here is synthetic (seeded); the stitching and retargeting MLPs are the
seed-0 synthetic-weight model of tests/engines/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from common.options import AnimationOptions
from engines.model import LivePortraitModel, ModelMethods
from engines.motion.keypoints import MotionInfo, rotation_matrix, source_keypoints
from engines.motion.smoothing import rts_smooth
from engines.motion.transfer import (
    DrivingMotion,
    MotionTransfer,
    SmoothedMotion,
    SourceMotion,
    lip_array,
    motion_multiplier,
    smooth_video_motion,
)

LIP = [6, 12, 14, 17, 19, 20]
EYES = [11, 13, 15, 16, 18]
ATOL = 2e-5
N = 4  # driving frames; frame 0 is the reference of relative motion


def absolute_exp_mask() -> torch.Tensor:
    """(21, 3) bool: the expression entries that absolute motion takes from the driving frame
    (official: keypoints 1, 2, 6, 11-20 whole; y of 3 and 4; z of 5 and 8; y and z of 9)."""
    mask = torch.zeros(21, 3, dtype=torch.bool)
    mask[[1, 2, 6, *range(11, 21)]] = True
    mask[[3, 4], 1] = True
    mask[[5, 8], 2] = True
    mask[9, 1:] = True
    return mask


def random_motion(n: int, seed: int) -> MotionInfo:
    """Plausible motion for n frames: head angles within +-20 degrees, small expression and shift."""
    gen = torch.Generator().manual_seed(seed)
    pitch, yaw, roll = ((torch.rand(n, generator=gen) - 0.5) * 40 for _ in range(3))
    return MotionInfo(
        kp=0.3 * torch.randn(n, 21, 3, generator=gen),
        exp=0.03 * torch.randn(n, 21, 3, generator=gen),
        pitch=pitch,
        yaw=yaw,
        roll=roll,
        t=0.05 * torch.randn(n, 3, generator=gen),
        scale=1.2 + 0.3 * torch.rand(n, 1, generator=gen),
        R=rotation_matrix(pitch, yaw, roll),
    )


def source_motion(seed: int = 1, *, eye=(0.31, 0.29), lip=0.12, frames: int = 1) -> SourceMotion:
    info = random_motion(frames, seed)
    eye_ratio = torch.tensor([eye], dtype=torch.float32).expand(frames, 2).clone()
    lip_ratio = torch.full((frames, 1), lip, dtype=torch.float32)
    return SourceMotion(info, source_keypoints(info), eye_ratio, lip_ratio)


def driving_motion(seed: int = 2, n: int = N) -> DrivingMotion:
    gen = torch.Generator().manual_seed(seed + 1000)
    eye = 0.1 + 0.3 * torch.rand(n, generator=gen)
    lip = 0.4 * torch.rand(n, generator=gen)
    return DrivingMotion(random_motion(n, seed), eye, lip)


def repose(kp, R, exp, scale, t) -> torch.Tensor:
    """The keypoint formula written out in float64: scale * (kp @ R + exp) + [tx, ty, 0]."""
    kp, R, exp, scale, t = (torch.as_tensor(v).double() for v in (kp, R, exp, scale, t))
    shift = torch.cat([t[..., :2], torch.zeros_like(t[..., :1])], dim=-1)
    return scale[..., None] * (kp @ R + exp) + shift[..., None, :]


def options(**overrides) -> AnimationOptions:
    """Stitching off, pose-friendly, unless overridden: the bare re-posing."""
    return AnimationOptions(**{"flag_stitching": False, "driving_option": "pose-friendly", **overrides})


def transfer_for(model, opts, src: SourceMotion, drv: DrivingMotion, **kwargs) -> MotionTransfer:
    return MotionTransfer(model, opts, src[0:1], drv.info[0:1], **kwargs)


def run(model, opts, src: SourceMotion, drv: DrivingMotion, **kwargs) -> torch.Tensor:
    return transfer_for(model, opts, src, drv, **kwargs)(src, drv)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=atol)


def moved_keypoints(x_d: torch.Tensor, x_s: torch.Tensor) -> set[int]:
    """Indices of the keypoints that differ from x_s in any frame."""
    return set(torch.nonzero((x_d - x_s).abs().amax(dim=(0, 2)) > 1e-6).flatten().tolist())


class Spy(ModelMethods):
    """The model with its stitching and retargeting calls recorded (inputs cloned)."""

    def __init__(self, model: LivePortraitModel) -> None:
        self.model = model
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        self.calls.append(("stitch", x_s.clone(), x_d.clone()))
        return self.model.stitch(x_s, x_d)

    def retarget_eye(self, x_s: torch.Tensor, eye_ratios: torch.Tensor) -> torch.Tensor:
        self.calls.append(("eye", x_s.clone(), eye_ratios.clone()))
        return self.model.retarget_eye(x_s, eye_ratios)

    def retarget_lip(self, x_s: torch.Tensor, lip_ratios: torch.Tensor) -> torch.Tensor:
        self.calls.append(("lip", x_s.clone(), lip_ratios.clone()))
        return self.model.retarget_lip(x_s, lip_ratios)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture(scope="module")
def model(golden_model: LivePortraitModel) -> LivePortraitModel:
    return golden_model


# --- relative motion ------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["all", "exp", "pose", "lip", "eyes"])
@pytest.mark.parametrize("driving_option", ["pose-friendly", "expression-friendly"])
def test_the_reference_frame_itself_gives_back_the_source_keypoints(model, region, driving_option):
    src, drv = source_motion(), driving_motion()
    opts = options(animation_region=region, driving_option=driving_option)
    x_d = run(model, opts, src, drv[0:1])
    close(x_d, src.x_s, atol=1e-5)


def test_relative_motion_applies_the_driving_change_since_the_first_frame(model):
    src, drv = source_motion(), driving_motion()
    s, d, ref = src.info, drv.info, drv.info[0:1]
    expected = repose(
        s.kp,
        d.R @ ref.R.transpose(1, 2) @ s.R,
        s.exp + d.exp - ref.exp,
        s.scale * d.scale / ref.scale,
        s.t + d.t - ref.t,
    )
    close(run(model, options(), src, drv), expected)


def test_relative_motion_never_applies_the_z_translation(model):
    src, drv = source_motion(), driving_motion()
    tz = torch.tensor([0.0, 0.0, 5.0]) * torch.arange(N)[:, None]  # frame 0, the reference, unchanged
    shifted = DrivingMotion(MotionInfo(**{**vars(drv.info), "t": drv.info.t + tz}))
    close(run(model, options(), src, shifted), run(model, options(), src, drv), atol=1e-6)


def test_relative_motion_depends_on_the_first_driving_frame(model):
    src, drv = source_motion(), driving_motion()
    other_reference = MotionTransfer(model, options(), src, random_motion(1, seed=99))
    assert not torch.allclose(other_reference(src, drv), run(model, options(), src, drv), atol=1e-3)


def test_a_driving_image_measures_expression_against_the_neutral_lip_array_and_keeps_the_pose(model):
    """A single driving image: relative expression against the official lip_array; the source keeps
    its rotation, scale and translation."""
    src, drv = source_motion(), driving_motion(n=1)
    x_d = run(model, options(), src, drv, driving_is_video=False)
    s, d = src.info, drv.info
    close(x_d, repose(s.kp, s.R, s.exp + d.exp - lip_array(), s.scale, s.t))
    assert lip_array().shape == (1, 21, 3)


# --- absolute motion ------------------------------------------------------------------------------


def test_absolute_motion_takes_the_driving_pose_and_the_official_expression_entries(model):
    src, drv = source_motion(), driving_motion()
    s, d = src.info, drv.info
    mask = absolute_exp_mask()
    exp = torch.where(mask, d.exp, s.exp)
    expected = repose(s.kp, d.R, exp, s.scale, d.t)
    close(run(model, options(flag_relative_motion=False), src, drv), expected)


def test_absolute_motion_ignores_the_first_driving_frame(model):
    src, drv = source_motion(), driving_motion()
    opts = options(flag_relative_motion=False)
    elsewhere = MotionTransfer(model, opts, src, random_motion(1, seed=99))
    close(elsewhere(src, drv), run(model, opts, src, drv), atol=1e-6)


def test_absolute_and_relative_motion_differ(model):
    src, drv = source_motion(), driving_motion()
    relative = run(model, options(), src, drv)
    absolute = run(model, options(flag_relative_motion=False), src, drv)
    assert (relative - absolute)[1:].abs().max() > 1e-2


def test_absolute_exp_region_keeps_the_source_pose(model):
    src, drv = source_motion(), driving_motion()
    s, d = src.info, drv.info
    exp = torch.where(absolute_exp_mask(), d.exp, s.exp)
    x_d = run(model, options(flag_relative_motion=False, animation_region="exp"), src, drv)
    close(x_d, repose(s.kp, s.R, exp, s.scale, s.t))
    # the expression entries absolute motion leaves alone: keypoints 0, 7 and 10 never move
    assert moved_keypoints(x_d, src.x_s).isdisjoint({0, 7, 10})


# --- animation regions ----------------------------------------------------------------------------


def test_region_exp_moves_the_expression_only(model):
    src, drv = source_motion(), driving_motion()
    s, d, ref = src.info, drv.info, drv.info[0:1]
    x_d = run(model, options(animation_region="exp"), src, drv)
    close(x_d, repose(s.kp, s.R, s.exp + d.exp - ref.exp, s.scale, s.t))


def test_region_pose_moves_rotation_and_translation_but_not_expression_or_scale(model):
    src, drv = source_motion(), driving_motion()
    s, d, ref = src.info, drv.info, drv.info[0:1]
    x_d = run(model, options(animation_region="pose"), src, drv)
    close(x_d, repose(s.kp, d.R @ ref.R.transpose(1, 2) @ s.R, s.exp, s.scale, s.t + d.t - ref.t))


@pytest.mark.parametrize("region,indices", [("lip", LIP), ("eyes", EYES)])
def test_lip_and_eyes_regions_move_only_their_keypoints(model, region, indices):
    src, drv = source_motion(), driving_motion()
    s, d, ref = src.info, drv.info, drv.info[0:1]
    x_d = run(model, options(animation_region=region), src, drv)
    assert moved_keypoints(x_d, src.x_s) == set(indices)
    exp = s.exp.expand(N, -1, -1).clone()
    exp[:, indices] = (s.exp + d.exp - ref.exp)[:, indices]
    close(x_d, repose(s.kp, s.R, exp, s.scale, s.t))


def test_region_all_moves_every_keypoint(model):
    src, drv = source_motion(), driving_motion()
    x_d = run(model, options(animation_region="all"), src, drv)
    assert moved_keypoints(x_d[1:], src.x_s) == set(range(21))


# --- expression-friendly rescale ------------------------------------------------------------------


def test_motion_multiplier_is_the_square_root_of_the_hull_volume_ratio():
    x_s = random_motion(1, seed=3).kp
    for c in (0.5, 2.0, 3.0):
        assert motion_multiplier(x_s, c * x_s) == pytest.approx(c**-1.5, rel=1e-6)
    rotation = rotation_matrix(torch.tensor([10.0]), torch.tensor([-30.0]), torch.tensor([45.0]))
    moved = x_s @ rotation + torch.tensor([0.3, -0.2, 0.1])
    assert motion_multiplier(x_s, moved) == pytest.approx(1.0, rel=1e-5)
    other = random_motion(1, seed=4).kp
    volumes = [ConvexHull(x.reshape(-1, 3).double().numpy()).volume for x in (x_s, other)]
    assert motion_multiplier(x_s, other) == pytest.approx(np.sqrt(volumes[0] / volumes[1]), rel=1e-9)


def test_expression_friendly_measures_the_multiplier_on_the_first_frame(model):
    """x_d,0 is the source re-posed by the reference frame, i.e. the source itself: the multiplier is
    1 up to rounding, and the result is the pose-friendly one."""
    src, drv = source_motion(), driving_motion()
    transfer = transfer_for(model, options(driving_option="expression-friendly"), src, drv)
    assert transfer.x_d_0 is not None
    close(transfer.x_d_0, src.x_s, atol=1e-5)
    assert transfer.multiplier == pytest.approx(motion_multiplier(src.x_s, transfer.x_d_0), rel=1e-12)
    assert transfer.multiplier == pytest.approx(1.0, abs=1e-4)
    close(transfer(src, drv), run(model, options(), src, drv), atol=1e-4)


def test_expression_friendly_scales_the_motion_from_the_first_frame_by_the_multiplier(model):
    src, drv = source_motion(), driving_motion()
    transfer = transfer_for(model, options(driving_option="expression-friendly"), src, drv)
    transfer.multiplier = 1.5
    assert transfer.x_d_0 is not None
    pose_friendly = run(model, options(), src, drv)
    close(transfer(src, drv) - src.x_s, 1.5 * (pose_friendly - transfer.x_d_0), atol=1e-4)


@pytest.mark.parametrize(
    "overrides,kwargs",
    [
        ({"driving_option": "pose-friendly"}, {}),
        ({"flag_relative_motion": False}, {}),
        ({}, {"driving_is_video": False}),
        ({}, {"source_is_video": True}),
    ],
    ids=["pose-friendly", "absolute", "driving-image", "video-source"],
)
def test_no_rescale_outside_relative_image_to_video_expression_friendly(model, overrides, kwargs):
    src, drv = source_motion(), driving_motion()
    opts = options(**{"driving_option": "expression-friendly", **overrides})
    transfer = transfer_for(model, opts, src, drv, **kwargs)
    assert transfer.x_d_0 is None and transfer.multiplier == 1.0


# --- driving multiplier ---------------------------------------------------------------------------


@pytest.mark.parametrize("stitching", [False, True])
def test_driving_multiplier_scales_the_final_motion(model, stitching):
    src, drv = source_motion(), driving_motion()
    base = run(model, options(flag_stitching=stitching), src, drv)
    for k in (0.0, 0.5, 1.7):
        scaled = run(model, options(flag_stitching=stitching, driving_multiplier=k), src, drv)
        close(scaled - src.x_s, k * (base - src.x_s), atol=1e-5)


# --- stitching ------------------------------------------------------------------------------------


def test_stitching_off_leaves_the_reposed_keypoints_alone_and_on_corrects_them(model):
    src, drv = source_motion(), driving_motion()
    spy = Spy(model)
    bare = run(spy, options(), src, drv)
    assert spy.names() == []
    stitched = run(spy, options(flag_stitching=True), src, drv)
    assert spy.names() == ["stitch"]
    _, x_s, x_d = spy.calls[0]
    assert x_s.shape == x_d.shape == (N, 21, 3)
    close(x_s, src.x_s.expand(N, -1, -1), atol=0)
    close(x_d, bare, atol=1e-6)
    close(stitched, model.stitch(src.x_s.expand(N, -1, -1), bare), atol=1e-6)
    assert (stitched - bare).abs().max() > 1e-3


def test_stitching_moves_x_and_y_by_one_shared_shift_plus_per_keypoint_deltas(model):
    """The stitching MLP's output: 63 per-keypoint deltas, then a shared (dx, dy); z gets no shift."""
    src, drv = source_motion(), driving_motion()
    bare = run(model, options(), src, drv)
    stitched = run(model, options(flag_stitching=True), src, drv)
    x_s = src.x_s.expand(N, -1, -1)
    raw = model.run_mlp("stitching", torch.cat([x_s.reshape(N, -1), bare.reshape(N, -1)], dim=1))
    expected = bare + raw[:, :63].view(N, 21, 3)
    expected[..., :2] += raw[:, None, 63:65]
    close(stitched, expected, atol=1e-6)


# --- eye and lip retargeting ----------------------------------------------------------------------


def test_eye_retargeting_feeds_source_eyes_and_driving_eye_per_frame(model):
    src, drv = source_motion(), driving_motion()
    spy = Spy(model)
    x_d = run(spy, options(flag_eye_retargeting=True), src, drv)
    assert spy.names() == ["eye"]
    _, x_s, ratios = spy.calls[0]
    assert x_s.shape == (N, 21, 3) and ratios.shape == (N, 3)
    assert src.eye_ratio is not None and drv.eye_ratio is not None
    close(ratios[:, :2], src.eye_ratio.expand(N, 2), atol=0)
    close(ratios[:, 2], drv.eye_ratio, atol=0)
    # relative motion: the retargeting delta is added to the source keypoints, not to the re-posed ones
    close(x_d, x_s + model.retarget_eye(x_s, ratios), atol=1e-6)


def test_lip_retargeting_feeds_source_lip_and_driving_lip_per_frame(model):
    src, drv = source_motion(), driving_motion()
    spy = Spy(model)
    x_d = run(spy, options(flag_lip_retargeting=True, flag_stitching=True), src, drv)
    assert spy.names() == ["lip", "stitch"]
    _, x_s, ratios = spy.calls[0]
    assert x_s.shape == (N, 21, 3) and ratios.shape == (N, 2)
    assert src.lip_ratio is not None and drv.lip_ratio is not None
    close(ratios[:, 0], src.lip_ratio[:, 0].expand(N), atol=0)
    close(ratios[:, 1], drv.lip_ratio, atol=0)
    close(x_d, model.stitch(x_s, x_s + model.retarget_lip(x_s, ratios)), atol=1e-6)


def test_eye_and_lip_deltas_add_up_and_absolute_motion_keeps_the_reposed_keypoints(model):
    src, drv = source_motion(), driving_motion()
    assert src.eye_ratio is not None and src.lip_ratio is not None
    assert drv.eye_ratio is not None and drv.lip_ratio is not None
    x_s = src.x_s.expand(N, -1, -1)
    eye = model.retarget_eye(x_s, torch.cat([src.eye_ratio.expand(N, 2), drv.eye_ratio[:, None]], dim=1))
    lip = model.retarget_lip(x_s, torch.cat([src.lip_ratio.expand(N, 1), drv.lip_ratio[:, None]], dim=1))
    both = {"flag_eye_retargeting": True, "flag_lip_retargeting": True}
    close(run(model, options(**both), src, drv), x_s + eye + lip, atol=1e-6)
    reposed = run(model, options(flag_relative_motion=False), src, drv)
    close(run(model, options(flag_relative_motion=False, **both), src, drv), reposed + eye + lip, atol=1e-6)


def test_retargeting_needs_the_landmark_ratios(model):
    src, drv = source_motion(), driving_motion()
    bare_source = SourceMotion(src.info, src.x_s)
    with pytest.raises(ValueError, match="source landmarks"):
        MotionTransfer(model, options(flag_eye_retargeting=True), bare_source, drv.info[0:1])
    no_eyes = DrivingMotion(drv.info, None, drv.lip_ratio)
    with pytest.raises(ValueError, match="driving eye ratios"):
        run(model, options(flag_eye_retargeting=True), src, no_eyes)
    no_lip = DrivingMotion(drv.info, drv.eye_ratio, None)
    with pytest.raises(ValueError, match="driving lip ratios"):
        run(model, options(flag_lip_retargeting=True), src, no_lip)


@pytest.mark.parametrize("lip_ratio,applied", [(0.12, True), (0.01, False)])
def test_lip_normalisation_closes_open_source_lips_only(model, lip_ratio, applied):
    """flag_normalize_lip adds retarget_lip(x_s, [c_s,lip, 0]) when c_s,lip reaches the threshold (0.03)."""
    src, drv = source_motion(lip=lip_ratio), driving_motion()
    bare = run(model, options(), src, drv)
    normalised = run(model, options(flag_normalize_lip=True), src, drv)
    delta = model.retarget_lip(src.x_s, torch.tensor([[lip_ratio, 0.0]]))
    close(normalised, bare + delta if applied else bare, atol=1e-6)


# --- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"driving_option": "expression-friendly", "flag_stitching": True},
        {"flag_relative_motion": False, "animation_region": "exp"},
        {"animation_region": "lip", "flag_eye_retargeting": True, "flag_lip_retargeting": True},
        {"flag_normalize_lip": True, "flag_stitching": True, "driving_multiplier": 1.3},
    ],
    ids=["bare", "default", "absolute-exp", "lip-retarget", "normalize-lip"],
)
def test_a_batch_of_frames_equals_the_frames_one_by_one(model, overrides):
    src, drv = source_motion(), driving_motion()
    transfer = transfer_for(model, options(**overrides), src, drv)
    batch = transfer(src, drv)
    assert batch.shape == (N, 21, 3)
    singles = torch.cat([transfer(src, drv[i : i + 1]) for i in range(N)])
    close(batch, singles, atol=1e-6)


# --- video source ---------------------------------------------------------------------------------


def test_smooth_video_motion_observes_relative_motion_and_smooths_it(model):
    src, drv = source_motion(frames=N), driving_motion()
    s, d = src.info, drv.info
    opts = options(driving_smooth_observation_variance=1e-4)
    smoothed, exp_obs, r_obs = smooth_video_motion(s, d, opts)
    np.testing.assert_allclose(exp_obs, (s.exp + d.exp - d.exp[:1]).double().numpy(), atol=1e-6)
    expected_r = d.R.double() @ d.R[:1].double().transpose(1, 2) @ s.R.double()
    np.testing.assert_allclose(r_obs, expected_r.numpy(), atol=1e-6)
    np.testing.assert_allclose(smoothed.exp.numpy(), rts_smooth(exp_obs, 1e-4), atol=1e-6)
    np.testing.assert_allclose(smoothed.R.numpy(), rts_smooth(r_obs, 1e-4), atol=1e-6)
    absolute, exp_abs, r_abs = smooth_video_motion(s, d, options(flag_relative_motion=False))
    np.testing.assert_allclose(exp_abs, d.exp.numpy(), atol=1e-7)
    np.testing.assert_allclose(r_abs, d.R.numpy(), atol=1e-7)
    np.testing.assert_allclose(absolute.exp.numpy(), rts_smooth(d.exp.numpy()), atol=1e-6)


@pytest.mark.parametrize("head_rotation", [True, False])
def test_video_source_takes_smoothed_motion_and_keeps_each_frames_scale_and_shift(model, head_rotation):
    src, drv = source_motion(frames=N), driving_motion()
    s = src.info
    opts = options(flag_video_editing_head_rotation=head_rotation)
    smoothed, _, _ = smooth_video_motion(s, drv.info, opts)
    transfer = MotionTransfer(model, opts, src[0:1], drv.info[0:1], source_is_video=True)
    x_d = transfer(src, drv, smoothed)
    exp = torch.where(absolute_exp_mask(), smoothed.exp, s.exp)
    rotation = smoothed.R if head_rotation else s.R
    close(x_d, repose(s.kp, rotation, exp, s.scale, s.t))
    with pytest.raises(ValueError, match="smoothed motion"):
        transfer(src, drv)


def test_video_source_frames_are_independent_of_the_batching(model):
    src, drv = source_motion(frames=N), driving_motion()
    smoothed, _, _ = smooth_video_motion(src.info, drv.info, options())
    opts = options(flag_stitching=True)
    transfer = MotionTransfer(model, opts, src[0:1], drv.info[0:1], source_is_video=True)
    batch = transfer(src, drv, smoothed)
    singles = [transfer(src[i : i + 1], drv[i : i + 1], smoothed[i : i + 1]) for i in range(N)]
    close(batch, torch.cat(singles), atol=1e-6)
    assert isinstance(smoothed[1:3], SmoothedMotion) and smoothed[1:3].exp.shape == (2, 21, 3)


def test_source_video_eye_retargeting_holds_the_first_frames_eye_opening(model):
    """Each source frame's eyes are retargeted to the first frame's mean eye ratio (to 0.39 when that
    is below the threshold, 0.18)."""
    src, drv = source_motion(frames=N, eye=(0.3, 0.26)), driving_motion()
    opts = options(flag_source_video_eye_retargeting=True)
    smoothed, _, _ = smooth_video_motion(src.info, drv.info, opts)
    spy = Spy(model)
    x_d = MotionTransfer(spy, opts, src[0:1], drv.info[0:1], source_is_video=True)(src, drv, smoothed)
    assert spy.names() == ["eye"]
    _, x_s, ratios = spy.calls[0]
    close(ratios, torch.tensor([[0.3, 0.26, 0.28]]).expand(N, 3), atol=1e-7)
    bare = MotionTransfer(model, options(), src[0:1], drv.info[0:1], source_is_video=True)(src, drv, smoothed)
    close(x_d, bare + model.retarget_eye(x_s, ratios), atol=1e-6)
    closed = source_motion(frames=N, eye=(0.1, 0.12))
    held = MotionTransfer(model, opts, closed[0:1], drv.info[0:1], source_is_video=True)
    assert held.eye_hold_target is not None and float(held.eye_hold_target) == pytest.approx(0.39)
