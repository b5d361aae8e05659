"""Every tensor of the per-frame path stays on the model's device.

The model's tensors, the source and the driving motion live on the `meta` device here: an operation
that mixes in a CPU tensor (a ratio built on the host, a constant made without a device, the neutral
lip loaded from disk) raises, as it would fail (or silently sync) on a GPU. Values are not computed
on `meta`, only shapes and devices. The expression-friendly multiplier and the video-source
smoothing are computed on the host once per job by design (SciPy's convex hull, the RTS smoother),
so these paths use pose-friendly motion and a smoothed motion made on `meta` directly.
"""

from dataclasses import fields

import numpy as np
import pytest
import torch

from common.options import AnimationOptions
from engines.driving import template_motion
from engines.model import ModelMethods
from engines.motion.keypoints import MotionInfo
from engines.motion.transfer import DrivingMotion, MotionTransfer, SmoothedMotion, SourceMotion
from engines.networks import eye_network, lip_network, stitching_network
from engines.source import stack_ratios
from tests.engines.motion.test_transfer import driving_motion, source_motion
from tests.templates import random_template

META = torch.device("meta")
N = 4


class MetaModel(ModelMethods):
    """The S MLPs (stitching, lip, eye) with their weights on the meta device."""

    def __init__(self) -> None:
        with META:
            self.nets = {"stitching": stitching_network(), "lip": lip_network(), "eye": eye_network()}

    @property
    def device(self) -> torch.device:
        return META

    def run_mlp(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[name](x)


def on_meta_info(info: MotionInfo) -> MotionInfo:
    return MotionInfo(**{f.name: getattr(info, f.name).to(META) for f in fields(info)})


def on_meta_source(src: SourceMotion) -> SourceMotion:
    assert src.eye_ratio is not None and src.lip_ratio is not None
    return SourceMotion(
        on_meta_info(src.info), src.x_s.to(META), src.eye_ratio.to(META), src.lip_ratio.to(META)
    )


def on_meta_driving(drv: DrivingMotion) -> DrivingMotion:
    assert drv.eye_ratio is not None and drv.lip_ratio is not None
    return DrivingMotion(on_meta_info(drv.info), drv.eye_ratio.to(META), drv.lip_ratio.to(META))


def pose_friendly(**flags: object) -> AnimationOptions:
    return AnimationOptions(driving_option="pose-friendly", **flags)


@pytest.mark.parametrize(
    "options",
    [
        pose_friendly(flag_eye_retargeting=True, flag_lip_retargeting=True),
        pose_friendly(flag_eye_retargeting=True, flag_relative_motion=False),
        pose_friendly(flag_normalize_lip=True),
        pose_friendly(flag_stitching=False, animation_region="lip"),
    ],
    ids=["eye-lip-retargeting", "eye-retargeting-absolute", "lip-normalisation", "lip-region"],
)
def test_image_source_stays_on_the_model_device(options: AnimationOptions) -> None:
    src, drv = on_meta_source(source_motion()), on_meta_driving(driving_motion())
    transfer = MotionTransfer(MetaModel(), options, src, drv.info[0:1])
    x_d = transfer(src, drv)
    assert x_d.device == META and x_d.shape == (N, 21, 3)


def test_driving_image_reference_is_the_neutral_lip_on_the_model_device() -> None:
    src, drv = on_meta_source(source_motion()), on_meta_driving(driving_motion(n=1))
    transfer = MotionTransfer(MetaModel(), pose_friendly(), src, drv.info, driving_is_video=False)
    assert transfer.reference_exp.device == META
    assert transfer(src, drv).device == META


def test_video_source_eye_retargeting_stays_on_the_model_device() -> None:
    """The held eye openness (source_video_eye_retargeting) is computed on the device, with no sync."""
    src, drv = on_meta_source(source_motion(frames=N)), on_meta_driving(driving_motion())
    smoothed = SmoothedMotion(exp=torch.zeros(N, 21, 3, device=META), R=torch.zeros(N, 3, 3, device=META))
    options = pose_friendly(flag_source_video_eye_retargeting=True, flag_normalize_lip=True)
    transfer = MotionTransfer(MetaModel(), options, src[0:1], drv.info[0:1], source_is_video=True)
    assert transfer.eye_hold_target is not None and transfer.eye_hold_target.device == META
    x_d = transfer(src, drv, smoothed)
    assert x_d.device == META and x_d.shape == (N, 21, 3)


def test_source_ratios_and_template_motion_on_the_model_device() -> None:
    ratios = stack_ratios([np.array([0.3, 0.2], dtype=np.float32)] * 3, META)
    assert ratios is not None and ratios.device == META and ratios.shape == (3, 2)
    assert stack_ratios([np.zeros(2, dtype=np.float32), None], META) is None
    drv = template_motion(random_template(N), META)
    assert drv.eye_ratio is not None and drv.lip_ratio is not None
    tensors = [getattr(drv.info, f.name) for f in fields(drv.info)] + [drv.eye_ratio, drv.lip_ratio]
    assert all(t.device == META for t in tensors)
