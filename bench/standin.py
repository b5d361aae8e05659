"""A stand-in of the LivePortrait model with the same shapes: what the live benchmark and the live tests
run when they measure or check everything but the networks.

STAND-IN MODEL: no network runs. F gives each source its mean colour as a feature volume of F's shape;
M gives fixed keypoints (a non-degenerate hull, as motion transfer needs) and an expression that
follows each driving image's mean brightness; the S MLPs give zeros of their shapes; W adds the
motion, mean |x_d - x_s|, to the source's colour, and G paints it over a 512 x 512 image. So every
rendered frame is flat: its own source's mean colour where the driving keypoints are the source's
(the motion reference, with no expression offsets), brighter as they move away. A test can tell
whose frame it got and whether it moved. Its cost is a few tensor fills per frame.
"""

from typing import cast

import torch

from engines.engine import Engine, Model
from engines.model import ModelMethods
from engines.motion.keypoints import NUM_KP

STAND_IN = "STAND-IN MODEL: F, M, W, G and S are replaced by cheap functions of the same shapes"
_MLP_OUTPUTS = {"stitching": 3 * NUM_KP + 2, "lip": 3 * NUM_KP, "eye": 3 * NUM_KP}
_BINS = 66


class StandInModel(ModelMethods):
    """ModelMethods with every network replaced (see the module's docstring)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self._device = device or torch.device("cpu")
        generator = torch.Generator().manual_seed(0)
        self._kp = (torch.rand(1, 3 * NUM_KP, generator=generator) - 0.5).to(self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    def extract_appearance(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, 32, 16, 64, 64): the mean colour in channels 0-2, zeros elsewhere."""
        f_s = torch.zeros(source.shape[0], 32, 16, 64, 64, device=source.device)
        f_s[:, :3] = source.mean(dim=(2, 3))[:, :, None, None, None]
        return f_s

    def extract_motion_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 256, 256) -> M's raw heads: fixed keypoints, an expression of the mean brightness, level
        pose."""
        b = images.shape[0]
        brightness = images.mean(dim=(1, 2, 3))[:, None]
        return {
            "kp": self._kp.expand(b, -1),
            "exp": 0.5 * brightness.expand(b, 3 * NUM_KP),
            "pitch": torch.zeros(b, _BINS, device=images.device),
            "yaw": torch.zeros(b, _BINS, device=images.device),
            "roll": torch.zeros(b, _BINS, device=images.device),
            "t": torch.zeros(b, 3, device=images.device),
            "scale": torch.ones(b, 1, device=images.device),
        }

    def run_mlp(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Zeros of the MLP's output shape (B, 65 | 63 | 63)."""
        return torch.zeros(x.shape[0], _MLP_OUTPUTS[name], device=x.device)

    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 32, 16, 64, 64) -> out (B, 256, 64, 64): the source's colour plus the motion, mean |x_d - x_s|,
        in channels 0-2."""
        out = torch.zeros(x_d.shape[0], 256, 64, 64, device=f_s.device)
        motion = (x_d - x_s).abs().mean(dim=(1, 2))[:, None, None, None]
        out[:, :3] = f_s[:, :3, 0] + motion
        return {"out": out}

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) -> (B, 3, 512, 512): the colour of channels 0-2, flat."""
        return feature[:, :3, :1, :1].expand(-1, -1, 512, 512).contiguous()


def stand_in_engine() -> Engine:
    """An engine on the CPU with the stand-in model and the licence-clean Haar face detector (no weights)."""
    from engines.face.detection import load_analyzer

    device = torch.device("cpu")
    return Engine(
        model=cast("Model", StandInModel(device)),  # the live path calls only ModelMethods
        analyzer=load_analyzer(None, "haar-box"),
        device=device,
        backend="torch",
        precision="fp32",
    )
