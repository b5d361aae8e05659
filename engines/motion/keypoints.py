"""Implicit-keypoint math of LivePortrait (paper eq. 1): head pose, rotation and keypoint transform.

Keypoints are row vectors: x = scale * (kp @ R + exp) + [tx, ty, 0].
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_KP = 21
NUM_BINS = 66


def headpose_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """66-bin logits (B, 66) -> degrees (B,): 3 * E[bin] - 97.5."""
    bins = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return (F.softmax(logits, dim=-1) * bins).sum(dim=-1) * 3 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (B,) each -> R (B, 3, 3) = (Rz Ry Rx)^T, to right-multiply row keypoints."""
    x, y, z = (torch.deg2rad(a) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rx = torch.stack([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


@dataclass
class MotionInfo:
    """M's output for B images, refined: kp and exp (B, 21, 3), pitch/yaw/roll in degrees (B,),
    t (B, 3), scale (B, 1), R (B, 3, 3)."""

    kp: torch.Tensor
    exp: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    R: torch.Tensor

    @classmethod
    def from_raw(cls, raw: dict[str, torch.Tensor]) -> "MotionInfo":
        """Turn M's raw heads (see MotionExtractor) into keypoints, degrees and a rotation."""
        b = raw["kp"].shape[0]
        pitch, yaw, roll = (headpose_to_degrees(raw[k].float()) for k in ("pitch", "yaw", "roll"))
        return cls(
            kp=raw["kp"].float().view(b, NUM_KP, 3),
            exp=raw["exp"].float().view(b, NUM_KP, 3),
            pitch=pitch,
            yaw=yaw,
            roll=roll,
            t=raw["t"].float(),
            scale=raw["scale"].float(),
            R=rotation_matrix(pitch, yaw, roll),
        )

    def __getitem__(self, index: slice | int) -> "MotionInfo":
        index = slice(index, index + 1) if isinstance(index, int) else index
        return MotionInfo(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    def __len__(self) -> int:
        return self.kp.shape[0]

    @staticmethod
    def cat(infos: list["MotionInfo"]) -> "MotionInfo":
        """Concatenate along the batch axis."""
        return MotionInfo(
            **{k: torch.cat([getattr(i, k) for i in infos]) for k in MotionInfo.__dataclass_fields__}
        )


def transform_keypoints(
    kp: torch.Tensor, R: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x = scale * (kp @ R + exp) + [tx, ty, 0]; kp, exp (B, 21, 3), R (B, 3, 3), scale (B, 1), t (B, 3)."""
    x = (kp @ R + exp) * scale[:, :, None]
    return x + F.pad(t[:, None, :2], (0, 1))


def source_keypoints(info: MotionInfo) -> torch.Tensor:
    """x_s of an image: its canonical keypoints in its own pose, expression, scale and translation."""
    return transform_keypoints(info.kp, info.R, info.exp, info.scale, info.t)
