"""S, the stitching and retargeting MLPs (paper section 3.2)."""

import torch
from torch import nn

STITCHING_HIDDEN = (128, 128, 64)
LIP_HIDDEN = (128, 128, 64)
EYE_HIDDEN = (256, 256, 128, 128, 64)


class StitchingRetargetingNetwork(nn.Module):
    """A ReLU MLP: (B, input_size) -> (B, output_size).

    stitching: [x_s, x_d] (126) -> 63 keypoint deltas + (tx, ty) (65);
    lip: [x_s, c_s,lip, c_d,lip] (65) -> 63; eye: [x_s, c_s,eyes (2), c_d,eye] (66) -> 63.
    """

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for fin, fout in zip((input_size, *hidden_sizes[:-1]), hidden_sizes, strict=True):
            layers += [nn.Linear(fin, fout), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(hidden_sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def stitching_network() -> StitchingRetargetingNetwork:
    """The stitching MLP (126 -> 65)."""
    return StitchingRetargetingNetwork(126, STITCHING_HIDDEN, 65)


def lip_network() -> StitchingRetargetingNetwork:
    """The lip retargeting MLP (65 -> 63)."""
    return StitchingRetargetingNetwork(65, LIP_HIDDEN, 63)


def eye_network() -> StitchingRetargetingNetwork:
    """The eye retargeting MLP (66 -> 63)."""
    return StitchingRetargetingNetwork(66, EYE_HIDDEN, 63)
