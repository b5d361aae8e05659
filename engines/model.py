"""The LivePortrait model: F, M, W, G and S loaded from an official bundle, with batched inference."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.motion.keypoints import NUM_KP, MotionInfo
from engines.networks import (
    AppearanceFeatureExtractor,
    MotionExtractor,
    SPADEDecoder,
    WarpingNetwork,
    eye_network,
    lip_network,
    stitching_network,
)
from engines.weights import load_state_dicts


class ModelMethods:
    """The inference interface shared by LivePortraitModel and the compiled backends
    (engines.acceleration.backends.GraphModel): the primitives each one implements (F, M, W, G and
    the S MLPs on raw inputs) and the keypoint-level methods computed from them, defined here once.
    """

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def extract_appearance(self, source: torch.Tensor) -> torch.Tensor:
        """F: (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64)."""
        raise NotImplementedError

    def extract_motion_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """M: (B, 3, 256, 256) -> its raw heads (kp, exp, pitch/yaw/roll bin logits, t, scale)."""
        raise NotImplementedError

    def run_mlp(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One of the S MLPs ("stitching", "lip", "eye") on raw inputs (B, 126 | 65 | 66)."""
        raise NotImplementedError

    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W: f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64), occlusion, deformation."""
        raise NotImplementedError

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """G: (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]."""
        raise NotImplementedError

    def extract_motion(self, images: torch.Tensor) -> MotionInfo:
        """M: (B, 3, 256, 256) -> refined motion info (keypoints, degrees, rotation)."""
        return MotionInfo.from_raw(self.extract_motion_raw(images))

    @torch.no_grad()
    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """Stitching: x_d (B, 21, 3) corrected so that the crop blends into the source frame."""
        b = x_s.shape[0]
        delta = self.run_mlp("stitching", torch.cat([x_s.reshape(b, -1), x_d.reshape(b, -1)], dim=1))
        x_d = x_d + delta[:, : 3 * NUM_KP].view(b, NUM_KP, 3)
        return torch.cat([x_d[..., :2] + delta[:, None, 3 * NUM_KP : 3 * NUM_KP + 2], x_d[..., 2:]], dim=-1)

    @torch.no_grad()
    def retarget_eye(self, x_s: torch.Tensor, eye_ratios: torch.Tensor) -> torch.Tensor:
        """Eye retargeting: x_s (B, 21, 3), [c_s,left, c_s,right, c_d,eye] (B, 3) -> delta (B, 21, 3)."""
        b = x_s.shape[0]
        return self.run_mlp("eye", torch.cat([x_s.reshape(b, -1), eye_ratios], dim=1)).view(b, NUM_KP, 3)

    @torch.no_grad()
    def retarget_lip(self, x_s: torch.Tensor, lip_ratios: torch.Tensor) -> torch.Tensor:
        """Lip retargeting: x_s (B, 21, 3), [c_s,lip, c_d,lip] (B, 2) -> delta (B, 21, 3)."""
        b = x_s.shape[0]
        return self.run_mlp("lip", torch.cat([x_s.reshape(b, -1), lip_ratios], dim=1)).view(b, NUM_KP, 3)

    @torch.no_grad()
    def render(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """W then G for B driving keypoint sets; f_s and x_s broadcast from batch 1."""
        b = x_d.shape[0]
        if f_s.shape[0] != b:
            f_s = f_s.expand(b, *f_s.shape[1:])
        if x_s.shape[0] != b:
            x_s = x_s.expand(b, *x_s.shape[1:])
        return self.decode(self.warp(f_s, x_s, x_d)["out"])


class LivePortraitModel(ModelMethods, nn.Module):
    """All five networks, in eval mode. Images enter as float RGB in [0, 1], NCHW, 256x256."""

    def __init__(self) -> None:
        super().__init__()
        # F, W and G are plain modules to their users: InferenceModel replaces them by rewrites
        # (engines.networks.expect_module narrows them where the original networks are needed)
        self.appearance_feature_extractor: nn.Module = AppearanceFeatureExtractor()
        self.motion_extractor = MotionExtractor()
        self.warping_module: nn.Module = WarpingNetwork()
        self.spade_generator: nn.Module = SPADEDecoder()
        self.stitching = stitching_network()
        self.lip = lip_network()
        self.eye = eye_network()
        self.eval()

    @classmethod
    def from_weights(cls, weights_dir: Path, device: str | torch.device = "cpu") -> "LivePortraitModel":
        """Load an official-layout bundle strictly (every key, every shape)."""
        model = cls()
        for name, state in load_state_dicts(weights_dir).items():
            getattr(model, name).load_state_dict(state, strict=True)
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def extract_appearance(self, source: torch.Tensor) -> torch.Tensor:
        """F: (B, 3, 256, 256) -> f_s (B, 32, 16, 64, 64)."""
        return self.appearance_feature_extractor(source)

    @torch.no_grad()
    def extract_motion_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """M: (B, 3, 256, 256) -> its raw heads (kp, exp, pitch/yaw/roll bin logits, t, scale)."""
        return self.motion_extractor(images)

    @torch.no_grad()
    def run_mlp(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One of the S MLPs ("stitching", "lip", "eye") on raw inputs (B, 126 | 65 | 66)."""
        return getattr(self, name)(x)

    @torch.no_grad()
    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """W: f_s (B, 32, 16, 64, 64), x_s, x_d (B, 21, 3) -> out (B, 256, 64, 64), occlusion, deformation."""
        return self.warping_module(f_s, x_s, x_d)

    @torch.no_grad()
    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """G: (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]."""
        return self.spade_generator(feature)


def to_uint8_frames(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, clipped and truncated as the official code does."""
    return (images.clamp(0, 1) * 255).permute(0, 2, 3, 1).to(torch.uint8)


def image_to_tensor(rgb: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    return rgb.permute(0, 3, 1, 2).float().div(255.0)


def frames_to_device(frames: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 tensor on `device` from B equal-sized (H, W, 3) uint8 frames."""
    return torch.from_numpy(np.stack(frames)).to(device)
