"""Motion transfer (paper section 3 and the official inference loop): driving motion -> x_d.

For each driving frame i the source keypoints are re-posed with the driving motion (relative to the
first driving frame, or absolute), optionally rescaled (expression-friendly), stitched, eye/lip
retargeted and multiplied. Everything here works on batches of frames.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import ConvexHull

from common.options import AnimationOptions
from engines.model import ModelMethods
from engines.motion.expression import EditBatch, edited_motion, retarget_delta
from engines.motion.keypoints import MotionInfo, transform_keypoints
from engines.motion.smoothing import rts_smooth

LIP_INDICES = (6, 12, 14, 17, 19, 20)
EYE_INDICES = (11, 13, 15, 16, 18)
ABSOLUTE_EXP_INDICES = (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
LIP_ARRAY_PATH = Path(__file__).parents[1] / "data" / "lip_array.npy"
EYE_HOLD_FALLBACK = 0.39


def lip_array() -> torch.Tensor:
    """The official neutral-lip expression (1, 21, 3), the reference of a driving image."""
    return torch.from_numpy(np.load(LIP_ARRAY_PATH, allow_pickle=False).astype(np.float32))


def take_absolute_exp(exp_s: torch.Tensor, exp_d: torch.Tensor) -> torch.Tensor:
    """exp_s with the official "absolute" entries taken from exp_d (both (B, 21, 3))."""
    out = exp_s.clone().expand_as(exp_d).clone()
    idx = list(ABSOLUTE_EXP_INDICES)
    out[:, idx] = exp_d[:, idx]
    out[:, 3:5, 1] = exp_d[:, 3:5, 1]
    out[:, 5, 2] = exp_d[:, 5, 2]
    out[:, 8, 2] = exp_d[:, 8, 2]
    out[:, 9, 1:] = exp_d[:, 9, 1:]
    return out


def take_entries(base: torch.Tensor, new: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
    """base (B, 21, 3) with keypoints `indices` taken from new."""
    out = base.expand_as(new).clone()
    out[:, list(indices)] = new[:, list(indices)]
    return out


def motion_multiplier(x_s: torch.Tensor, x_d_0: torch.Tensor) -> float:
    """Expression-friendly scale: sqrt of the ratio of the 3-D convex-hull volumes of x_s and x_d,0."""
    v_s = ConvexHull(x_s.reshape(-1, 3).double().cpu().numpy()).volume
    v_d = ConvexHull(x_d_0.reshape(-1, 3).double().cpu().numpy()).volume
    return float(np.sqrt(v_s) / np.sqrt(v_d))


def region_expression(
    exp_s: torch.Tensor, exp_new: torch.Tensor, region: str, absolute: bool
) -> torch.Tensor:
    """The expression of the animated frame for an animation region.

    all / exp: exp_new (absolute and video-source transfers take only the official subset of
    entries); lip / eyes: only those keypoints from exp_new; pose: the source's own expression.
    """
    if region in ("all", "exp"):
        return take_absolute_exp(exp_s, exp_new) if absolute else exp_new
    if region == "lip":
        return take_entries(exp_s, exp_new, LIP_INDICES)
    if region == "eyes":
        return take_entries(exp_s, exp_new, EYE_INDICES)
    return exp_s


@dataclass
class SourceMotion:
    """Source motion for S frames (S = 1 for an image): M's info, x_s (S, 21, 3) and, when landmarks
    are known, eye ratios (S, 2) and lip ratio (S, 1)."""

    info: MotionInfo
    x_s: torch.Tensor
    eye_ratio: torch.Tensor | None = None
    lip_ratio: torch.Tensor | None = None

    def __getitem__(self, index: slice) -> "SourceMotion":
        return SourceMotion(
            self.info[index],
            self.x_s[index],
            None if self.eye_ratio is None else self.eye_ratio[index],
            None if self.lip_ratio is None else self.lip_ratio[index],
        )


@dataclass
class DrivingMotion:
    """Driving motion for N frames: M's info and, when landmarks are known, each frame's eye ratio
    (N,) (the left eye's, as the official code feeds it) and lip ratio (N,)."""

    info: MotionInfo
    eye_ratio: torch.Tensor | None = None
    lip_ratio: torch.Tensor | None = None

    def __getitem__(self, index: slice) -> "DrivingMotion":
        return DrivingMotion(
            self.info[index],
            None if self.eye_ratio is None else self.eye_ratio[index],
            None if self.lip_ratio is None else self.lip_ratio[index],
        )


@dataclass
class SmoothedMotion:
    """Video source: the Kalman-smoothed expression (N, 21, 3) and rotation (N, 3, 3)."""

    exp: torch.Tensor
    R: torch.Tensor

    def __getitem__(self, index: slice) -> "SmoothedMotion":
        return SmoothedMotion(self.exp[index], self.R[index])


def smooth_video_motion(
    source: MotionInfo, driving: MotionInfo, options: AnimationOptions
) -> tuple[SmoothedMotion, np.ndarray, np.ndarray]:
    """Video source and driving (N frames each): the observed and smoothed exp and R sequences.

    Returns (smoothed, exp_observed (N, 21, 3), R_observed (N, 3, 3)).
    """
    if options.flag_relative_motion:
        exp_obs = source.exp + (driving.exp - driving.exp[:1])
        r_obs = (driving.R @ driving.R[:1].transpose(1, 2)) @ source.R
    else:
        exp_obs, r_obs = driving.exp, driving.R
    exp_obs_np = exp_obs.double().cpu().numpy()
    r_obs_np = r_obs.double().cpu().numpy()
    var = options.driving_smooth_observation_variance
    smoothed = SmoothedMotion(
        exp=torch.from_numpy(rts_smooth(exp_obs_np, var)).float().to(source.exp.device),
        R=torch.from_numpy(rts_smooth(r_obs_np, var)).float().to(source.R.device),
    )
    return smoothed, exp_obs_np, r_obs_np


class MotionTransfer:
    """Turns batches of driving motion into driving keypoints x_d, the official way.

    Built once per job from the first source frame and the first driving frame (the reference of
    relative motion); then called on aligned batches of source and driving motion. With an expression
    `edit` (engines.motion.expression), the edited source is driven: its expression, pose and scale
    are the edit's, and the edit's eye/lip retargeting delta is added to every frame before stitching;
    the expression-friendly reference stays the unedited source, so the multiplier scales the edit too.
    """

    def __init__(
        self,
        model: ModelMethods,
        options: AnimationOptions,
        source_first: SourceMotion,
        driving_first: MotionInfo,
        *,
        source_is_video: bool = False,
        driving_is_video: bool = True,
        edit: EditBatch | None = None,
    ) -> None:
        self.model = model
        self.edit = edit
        self.edit_delta = None if edit is None else retarget_delta(model, source_first, edit)
        self.options = options
        self.source_is_video = source_is_video
        self.driving_is_video = driving_is_video
        self.reference = driving_first[0:1]
        self.reference_exp = (
            self.reference.exp if driving_is_video else lip_array().to(self.reference.exp.device)
        )
        needs_landmarks = options.flag_eye_retargeting or options.flag_lip_retargeting
        if needs_landmarks and source_first.eye_ratio is None:
            raise ValueError("eye/lip retargeting needs source landmarks (eye and lip ratios)")

        self.multiplier = 1.0
        self.x_d_0: torch.Tensor | None = None
        expression_friendly = options.flag_relative_motion and options.driving_option == "expression-friendly"
        if expression_friendly and driving_is_video and not source_is_video:
            self.x_d_0 = self._pose(source_first, self.reference, None)
            self.multiplier = motion_multiplier(source_first.x_s, self.x_d_0)

        self.eye_hold_target: torch.Tensor | None = None  # (1, 1), on the ratios' device: no host sync
        if (
            source_is_video
            and options.flag_source_video_eye_retargeting
            and source_first.eye_ratio is not None
        ):
            target = source_first.eye_ratio[:1, :2].mean(dim=1, keepdim=True)
            below = target < options.source_video_eye_retargeting_threshold
            self.eye_hold_target = target.masked_fill(below, EYE_HOLD_FALLBACK)

    def _edited(self, src: SourceMotion) -> SourceMotion:
        """The source with the expression edit applied to its motion (x_s stays the rendered source's)."""
        if self.edit is None:
            return src
        return SourceMotion(edited_motion(src.info, self.edit), src.x_s, src.eye_ratio, src.lip_ratio)

    def _pose(self, src: SourceMotion, drv: MotionInfo, smooth: SmoothedMotion | None) -> torch.Tensor:
        """Re-pose the source keypoints with the driving motion (before stitching): (B, 21, 3)."""
        o, s, ref = self.options, src.info, self.reference
        region = o.animation_region
        moves_pose = region in ("all", "pose")
        if not o.flag_relative_motion:
            rot = drv.R if moves_pose else s.R
            exp = region_expression(s.exp, drv.exp, region, absolute=True)
            scale, t = s.scale, (drv.t if moves_pose else s.t)
        elif self.source_is_video:  # smoothed sequences; scale and t stay the source frame's
            assert smooth is not None, "__call__ checks that a video source comes with its smoothed motion"
            rot = smooth.R if (o.flag_video_editing_head_rotation and moves_pose) else s.R
            exp = region_expression(s.exp, smooth.exp, region, absolute=True)
            scale, t = s.scale, s.t
        else:
            rot = (drv.R @ ref.R.transpose(1, 2)) @ s.R if moves_pose and self.driving_is_video else s.R
            exp = region_expression(s.exp, s.exp + (drv.exp - self.reference_exp), region, absolute=False)
            scale = s.scale * (drv.scale / ref.scale) if region == "all" else s.scale
            t = s.t + (drv.t - ref.t) if moves_pose else s.t
        b = len(drv)
        t = t.expand(b, 3) * torch.tensor([1.0, 1.0, 0.0], device=t.device)  # tz is never applied
        kp = s.kp.expand(b, -1, -1)
        return transform_keypoints(kp, rot.expand(b, 3, 3), exp.expand(b, -1, -1), scale.expand(b, 1), t)

    def _lip_normalisation(self, src: SourceMotion) -> torch.Tensor | None:
        o = self.options
        if not (o.flag_normalize_lip and o.flag_relative_motion) or src.lip_ratio is None:
            return None
        ratios = torch.cat([src.lip_ratio, torch.zeros_like(src.lip_ratio)], dim=1)  # [c_s,lip, 0]
        delta = self.model.retarget_lip(src.x_s, ratios)
        keep = (src.lip_ratio[:, 0] >= o.lip_normalize_threshold).to(delta.dtype)
        return delta * keep[:, None, None]

    def _eye_hold(self, src: SourceMotion) -> torch.Tensor | None:
        if self.eye_hold_target is None or src.eye_ratio is None:
            return None
        target = self.eye_hold_target.expand(src.eye_ratio.shape[0], 1)
        return self.model.retarget_eye(src.x_s, torch.cat([src.eye_ratio, target], dim=1))

    def _retarget(
        self, part: str, x_s: torch.Tensor, source: torch.Tensor | None, driving: torch.Tensor | None
    ) -> torch.Tensor:
        """The eye or lip MLP's keypoint delta (B, 21, 3) driving `part` from the source ratios (1|B, K)
        to each driving frame's ratio (B,)."""
        if driving is None:
            raise ValueError(f"{part} retargeting needs the driving {part} ratios")
        if source is None:
            raise ValueError("eye/lip retargeting needs source landmarks (eye and lip ratios)")
        b = x_s.shape[0]
        ratios = torch.cat([source.expand(b, source.shape[1]), driving.view(b, 1)], dim=1)
        retarget = self.model.retarget_eye if part == "eye" else self.model.retarget_lip
        return retarget(x_s, ratios)

    @torch.no_grad()
    def __call__(
        self, src: SourceMotion, drv: DrivingMotion, smooth: SmoothedMotion | None = None
    ) -> torch.Tensor:
        """Driving keypoints for a batch: src has 1 frame or as many as drv; returns x_d (B, 21, 3)."""
        o = self.options
        b = len(drv.info)
        if self.source_is_video and smooth is None:
            raise ValueError("a video source needs the smoothed motion (smooth_video_motion)")
        x_s = src.x_s.expand(b, -1, -1)
        x_d = self._pose(self._edited(src), drv.info, smooth)
        if self.x_d_0 is not None:
            x_d = x_s + (x_d - self.x_d_0) * self.multiplier
        if self.edit_delta is not None:
            x_d = x_d + self.edit_delta

        lip_before = self._lip_normalisation(src)
        eye_before = self._eye_hold(src)
        if not (o.flag_eye_retargeting or o.flag_lip_retargeting):
            if o.flag_stitching:
                x_d = self.model.stitch(x_s, x_d)
            if lip_before is not None:
                x_d = x_d + lip_before
            if eye_before is not None:
                x_d = x_d + eye_before
        else:
            deltas = torch.zeros_like(x_d)
            if o.flag_eye_retargeting:
                deltas = deltas + self._retarget("eye", x_s, src.eye_ratio, drv.eye_ratio)
            if o.flag_lip_retargeting:
                deltas = deltas + self._retarget("lip", x_s, src.lip_ratio, drv.lip_ratio)
            x_d = (x_s if o.flag_relative_motion else x_d) + deltas
            if o.flag_stitching:
                x_d = self.model.stitch(x_s, x_d)
        return x_s + (x_d - x_s) * o.driving_multiplier
