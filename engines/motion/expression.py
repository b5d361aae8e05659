"""The expression editor's keypoint math: the official "retargeting image" panel (EXPRESSION_EDITOR.md).

Controls (common.expression) become an `ExpressionEdit`: a change of the source's expression deltas
(21, 3), degrees added to its pose, a scale mov_z and target eye/lip open ratios. The edited
keypoints are x_d = mov_z * s * (x_c R' + exp') + t, with R' = (R_d R_s^T) R_s, R_d the source's pose
plus the edit, and the FULL translation t (z too). Edits are linear in the controls (eyebrow and
the horizontal gaze piecewise), so an animated edit ramps them linearly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.expression import ExpressionControls
from engines.model import ModelMethods
from engines.motion.keypoints import NUM_KP, MotionInfo, rotation_matrix

if TYPE_CHECKING:  # transfer drives edited sources (it imports this module)
    from engines.motion.transfer import SourceMotion

X, Y, Z = 0, 1, 2
Entries = tuple[tuple[int, int, float], ...]
"""(keypoint, axis, change per unit of the control) of the expression deltas."""

EYES_CLOSE: Entries = ((11, Y, -0.001), (13, Y, 0.0003), (15, Y, -0.001), (16, Y, 0.0003))
"""The eyelids' part of closing the eyes (the vertical gaze opens them by half its value)."""

LINEAR: dict[str, Entries] = {
    "eyeball_direction_y": ((11, Y, -0.001), (15, Y, -0.001), *((k, a, -0.5 * c) for k, a, c in EYES_CLOSE)),
    "smile": (
        (20, Y, -0.01),
        (14, Y, -0.02),
        (17, Y, 0.0065),
        (17, Z, 0.003),
        (13, Y, -0.00275),
        (16, Y, -0.00275),
        (3, Y, -0.0035),
        (7, Y, -0.0035),
    ),
    "wink": ((11, Y, 0.001), (13, Y, -0.0003), (17, X, 0.0003), (17, Y, 0.0003), (3, Y, -0.0003)),
    "lip_variation_zero": ((19, X, 1.0),),
    "lip_variation_one": ((14, Y, 0.001), (3, Y, -0.0005), (7, Y, -0.0005), (17, Z, -0.0005)),
    "lip_variation_two": ((20, Z, -0.001), (20, Y, -0.001), (14, Y, -0.001)),
    "lip_variation_three": ((19, Y, 0.001), (19, Z, 0.0001), (17, Y, -0.0001)),
    "mov_x": ((5, X, -1.0),),
    "mov_y": ((5, Y, 1.0),),
    "blink": (*EYES_CLOSE, (1, Y, -0.00025), (2, Y, 0.00025)),
}
"""Controls whose change of the expression is linear in their value."""

PIECEWISE: dict[str, tuple[Entries, Entries]] = {
    "eyeball_direction_x": (((11, X, 0.0007), (15, X, 0.001)), ((11, X, 0.001), (15, X, 0.0007))),
    "eyebrow": (
        ((1, Y, 0.001), (2, Y, -0.001)),
        ((1, X, -0.001), (2, X, 0.001), (1, Y, 0.0003), (2, Y, -0.0003)),
    ),
}
"""Controls with one change for values > 0 and another for values <= 0."""

ORDER = (
    "eyeball_direction_x",
    "eyeball_direction_y",
    "smile",
    "wink",
    "eyebrow",
    "lip_variation_zero",
    "lip_variation_one",
    "lip_variation_two",
    "lip_variation_three",
    "mov_x",
    "mov_y",
    "blink",
)
"""The order in which the panel adds the controls' changes (ComfyUI's blink last)."""

AAA_PITCH = -0.05
"""Degrees of pitch per unit of aaa (ComfyUI's lip opening also tilts the head)."""


@dataclass(frozen=True)
class ExpressionEdit:
    """What controls do to a source: exp (21, 3) added to its expression deltas, pose (3,) degrees
    added to its pitch, yaw and roll, its scale times mov_z, and target eye / lip open ratios (None:
    the source's own)."""

    exp: np.ndarray
    pose: np.ndarray
    mov_z: float = 1.0
    eye_ratio: float | None = None
    lip_ratio: float | None = None

    def lerp(self, other: ExpressionEdit, w: float) -> ExpressionEdit:
        """(1 - w) * self + w * other: self at w = 0 and other at w = 1, exactly. Ratios must be both set
        or both unset (`resolve` them first)."""

        def mix(a: float, b: float) -> float:
            return (1 - w) * a + w * b

        def mix_ratio(a: float | None, b: float | None) -> float | None:
            if a is None and b is None:
                return None
            if a is None or b is None:
                raise ValueError("resolve the ratios of both edits before interpolating")
            return mix(a, b)

        return ExpressionEdit(
            (1 - w) * self.exp + w * other.exp,
            (1 - w) * self.pose + w * other.pose,
            mix(self.mov_z, other.mov_z),
            mix_ratio(self.eye_ratio, other.eye_ratio),
            mix_ratio(self.lip_ratio, other.lip_ratio),
        )

    def resolve(self, eye_rest: float | None, lip_rest: float | None) -> ExpressionEdit:
        """The unset ratios made the source's own (`source_ratio`; None for a source without landmarks)."""
        return ExpressionEdit(
            self.exp,
            self.pose,
            self.mov_z,
            self.eye_ratio if self.eye_ratio is not None else eye_rest,
            self.lip_ratio if self.lip_ratio is not None else lip_rest,
        )


def _add(exp: np.ndarray, entries: Entries, value: float) -> None:
    for k, a, c in entries:
        exp[k, a] += c * value


def expression_edit(controls: ExpressionControls) -> ExpressionEdit:
    """The edit that `controls` make (aliases included), as the official panel computes it."""
    exp = np.zeros((NUM_KP, 3))
    for name in ORDER:
        value = controls.value(name)
        if name in PIECEWISE:
            positive, other = PIECEWISE[name]
            _add(exp, positive if value > 0 else other, value)
        else:
            _add(exp, LINEAR[name], value)
    pitch = controls.pitch + AAA_PITCH * (controls.aaa or 0.0)
    return ExpressionEdit(
        exp,
        np.array([pitch, controls.yaw, controls.roll]),
        controls.mov_z,
        controls.eye_ratio,
        controls.lip_ratio,
    )


REST = ExpressionEdit(np.zeros((NUM_KP, 3)), np.zeros(3))
"""Every control at rest: the source as it is."""


def ramp(
    steps: list[tuple[ExpressionEdit, int, int]], rest: ExpressionEdit = REST
) -> Iterator[ExpressionEdit]:
    """The frames of keyframes (target, change, keep): from the previous state (`rest` first), frame j of
    `change` is lerp(previous, target, j / change), so the last one is the target; then `keep` frames
    of the target."""
    previous = rest
    for target, change, keep in steps:
        for j in range(1, change + 1):
            yield previous.lerp(target, j / change)
        for _ in range(keep):
            yield target
        previous = target


def source_ratio(ratios: torch.Tensor | None) -> float | None:
    """The panel's ratio of a source (1, K): the mean (of both eyes), rounded to 2 decimals."""
    return None if ratios is None else round(float(ratios[0].mean()), 2)


@dataclass
class EditBatch:
    """B edits: exp (B, 21, 3), pose (B, 3) degrees and mov_z (B, 1) on the device; the target ratios
    (B,) stay on the host in float64, where they are compared with the source's."""

    exp: torch.Tensor
    pose: torch.Tensor
    mov_z: torch.Tensor
    eye_ratio: np.ndarray | None
    lip_ratio: np.ndarray | None

    @classmethod
    def stack(cls, edits: list[ExpressionEdit], device: torch.device) -> EditBatch:
        """Edits whose ratios are all set or all unset, as one batch."""

        def ratios(values: list[float | None]) -> np.ndarray | None:
            known = [v for v in values if v is not None]
            if not known:
                return None
            if len(known) != len(values):
                raise ValueError("a batch of edits has some ratios set and others not")
            return np.array(known, dtype=np.float64)

        def tensor(values: list[np.ndarray] | list[float]) -> torch.Tensor:
            return torch.from_numpy(np.asarray(values, dtype=np.float32)).to(device)

        return cls(
            tensor([e.exp for e in edits]),
            tensor([e.pose for e in edits]),
            tensor([e.mov_z for e in edits])[:, None],
            ratios([e.eye_ratio for e in edits]),
            ratios([e.lip_ratio for e in edits]),
        )

    def __len__(self) -> int:
        return self.exp.shape[0]


def edited_motion(info: MotionInfo, edit: EditBatch) -> MotionInfo:
    """The source's motion (1 or B) with B edits: exp + delta, pose + degrees with R' = (R_d R_s^T) R_s,
    scale * mov_z; kp and t stay the source's."""
    b = max(len(info), len(edit))
    pitch, yaw, roll = (getattr(info, k) + edit.pose[:, i] for i, k in enumerate(("pitch", "yaw", "roll")))
    R_d = rotation_matrix(pitch, yaw, roll)
    return MotionInfo(
        kp=info.kp.expand(b, -1, -1),
        exp=info.exp + edit.exp,
        pitch=pitch,
        yaw=yaw,
        roll=roll,
        t=info.t.expand(b, -1),
        scale=info.scale * edit.mov_z,
        R=(R_d @ info.R.transpose(1, 2)) @ info.R,
    )


def edit_keypoints(info: MotionInfo, edit: EditBatch) -> torch.Tensor:
    """The panel's keypoints before retargeting and stitching: mov_z * s * (x_c R' + exp') + t, with the
    full translation t (z included); (B, 21, 3)."""
    e = edited_motion(info, edit)
    return e.scale[:, :, None] * (e.kp @ e.R + e.exp) + e.t[:, None, :]


@torch.no_grad()
def retarget_delta(model: ModelMethods, src: SourceMotion, edit: EditBatch) -> torch.Tensor | None:
    """The eye and lip MLPs' keypoint change (B, 21, 3) towards each edit's target ratio, for the edits
    whose target differs from the source's own (`source_ratio`); None where no edit moves a ratio."""
    b = len(edit)
    x_s = src.x_s.expand(b, -1, -1)
    delta: torch.Tensor | None = None
    for target, source, retarget in (
        (edit.eye_ratio, src.eye_ratio, model.retarget_eye),
        (edit.lip_ratio, src.lip_ratio, model.retarget_lip),
    ):
        if target is None:
            continue
        if source is None:
            raise ValueError("a target eye or lip ratio needs the source's ratios (landmarks)")
        moved = target != source_ratio(source)
        if not moved.any():
            continue
        wanted = torch.from_numpy(target.astype(np.float32)).to(source.device)[:, None]
        part = retarget(x_s, torch.cat([source.expand(b, -1), wanted], dim=1))
        part = part * torch.from_numpy(moved).to(part)[:, None, None]
        delta = part if delta is None else delta + part
    return delta


@torch.no_grad()
def edit_motion(
    model: ModelMethods, src: SourceMotion, edit: EditBatch, stitching: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """B edits of one source: (x_d before retargeting, final x_d), each (B, 21, 3). The final keypoints
    add the eye/lip retargeting deltas, then stitch (when `stitching`)."""
    before = edit_keypoints(src.info, edit)
    delta = retarget_delta(model, src, edit)
    x_d = before if delta is None else before + delta
    if stitching:
        x_d = model.stitch(src.x_s.expand(len(edit), -1, -1), x_d)
    return before, x_d
