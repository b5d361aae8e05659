"""The five LivePortrait networks: F, M, W, G and the stitching / retargeting MLPs S."""

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
    "eye_network",
    "lip_network",
    "stitching_network",
]
