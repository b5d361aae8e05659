"""The five LivePortrait networks: F, M, W, G and the stitching / retargeting MLPs S."""

from typing import TypeVar

from torch import nn

from .appearance_feature_extractor import AppearanceFeatureExtractor
from .motion_extractor import MotionExtractor
from .spade_generator import SPADEDecoder
from .stitching_retargeting import StitchingRetargetingNetwork, eye_network, lip_network, stitching_network
from .warping_network import WarpingNetwork

__all__ = [
    "AppearanceFeatureExtractor",
    "MotionExtractor",
    "SPADEDecoder",
    "StitchingRetargetingNetwork",
    "WarpingNetwork",
    "expect_module",
    "eye_network",
    "lip_network",
    "stitching_network",
]

M = TypeVar("M", bound=nn.Module)


def expect_module(module: nn.Module, cls: type[M]) -> M:
    """`module` as a `cls` (TypeError if it is not one).

    For the rewrites that take a network apart: the items of an nn.ModuleList / nn.Sequential, and
    the networks of a LivePortraitModel (which InferenceModel replaces), are plain nn.Modules to a
    type checker.
    """
    if not isinstance(module, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(module).__name__}")
    return module
