"""The engine against the official modules' golden outputs (float32, CPU): `pytest -k golden`.

The golden file is tests/data/golden_seed0.npz or the file named by LIVEPORTRAIT_GOLDEN; weights are
generated with the seed stored in it. Tolerances are the oracle README's: 1e-4 relative L2 on float
tensors, 1 grey level (and 1e-3 relative L2) on uint8 frames.
"""

from typing import Any

import pytest
import torch

from common.options import AnimationOptions
from engines.acceleration.backends.onnxruntime_backend import OnnxRuntimeModel
from engines.model import LivePortraitModel, image_to_tensor, to_uint8_frames
from engines.motion.keypoints import MotionInfo, source_keypoints
from engines.motion.transfer import DrivingMotion, MotionTransfer, SourceMotion, smooth_video_motion

from .golden_utils import assert_close, assert_close_sampled, assert_frames_close, golden_export_dir

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "pose_friendly": {"driving_option": "pose-friendly"},
    "region_exp_nostitch": {"animation_region": "exp", "flag_stitching": False},
    "region_pose": {"driving_option": "pose-friendly", "animation_region": "pose"},
    "region_lip": {"driving_option": "pose-friendly", "animation_region": "lip", "flag_stitching": False},
    "region_eyes": {"driving_option": "pose-friendly", "animation_region": "eyes"},
    "absolute": {"driving_option": "pose-friendly", "flag_relative_motion": False},
    "absolute_exp": {
        "driving_option": "pose-friendly",
        "flag_relative_motion": False,
        "animation_region": "exp",
        "flag_stitching": False,
    },
    "multiplier": {"driving_multiplier": 1.7},
    "retarget_eye_lip": {
        "driving_option": "pose-friendly",
        "flag_eye_retargeting": True,
        "flag_lip_retargeting": True,
    },
    "normalize_lip": {"driving_option": "pose-friendly", "flag_normalize_lip": True},
}
MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def engine(
    request, golden_model: LivePortraitModel, tmp_path_factory
) -> LivePortraitModel | OnnxRuntimeModel:
    """Every golden test runs on the torch model and on its float32 ONNX export in onnxruntime (CPU)."""
    if request.param == "torch":
        return golden_model
    return OnnxRuntimeModel.from_export_dir(golden_export_dir(golden_model, tmp_path_factory, "fp32"))


@pytest.fixture(scope="module")
def source(golden, engine) -> torch.Tensor:
    return image_to_tensor(torch.from_numpy(golden["source_rgb"])[None])


@pytest.fixture(scope="module")
def driving(golden, engine) -> torch.Tensor:
    return image_to_tensor(torch.from_numpy(golden["driving_rgb"]))


@pytest.fixture(scope="module")
def f_s(engine, source) -> torch.Tensor:
    return engine.extract_appearance(source)


@pytest.fixture(scope="module")
def source_motion(golden, engine, source) -> SourceMotion:
    info = engine.extract_motion(source)
    return SourceMotion(
        info,
        source_keypoints(info),
        torch.from_numpy(golden["c_s_eyes"]),
        torch.from_numpy(golden["c_s_lip"]),
    )


@pytest.fixture(scope="module")
def driving_info(engine, driving) -> MotionInfo:
    return engine.extract_motion(driving)


@pytest.fixture(scope="module")
def warped(golden, engine, f_s, source_motion) -> list[dict[str, torch.Tensor]]:
    x_d = torch.from_numpy(golden["default__x_d"])
    return [engine.warp(f_s, source_motion.x_s, x_d[i : i + 1]) for i in range(x_d.shape[0])]


@pytest.fixture(scope="module")
def decoded(engine, warped) -> list[torch.Tensor]:
    return [engine.decode(w["out"]) for w in warped]


def test_golden_appearance_feature_extractor(golden, f_s):
    assert_close_sampled(f_s.numpy(), golden, "F_out")


def test_golden_motion_extractor(golden, engine, source, driving):
    raw = engine.extract_motion_raw(source)
    for key in MOTION_KEYS:
        assert_close(raw[key].numpy(), golden[f"M_source_{key}"], f"M_source_{key}")
    for i in range(driving.shape[0]):
        raw = engine.extract_motion_raw(driving[i : i + 1])
        for key in MOTION_KEYS:
            assert_close(raw[key].numpy(), golden[f"M_driving{i}_{key}"], f"M_driving{i}_{key}")


def test_golden_source_keypoints(golden, source_motion):
    assert_close(source_motion.x_s.numpy(), golden["x_s"], "x_s")


@pytest.mark.parametrize("name", ["stitching", "lip", "eye"])
def test_golden_stitching_retargeting_mlps(golden, engine, name):
    out = engine.run_mlp(name, torch.from_numpy(golden[f"S_{name}_in"]))
    assert_close(out.numpy(), golden[f"S_{name}_out"], f"S_{name}_out")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden_motion_transfer(golden, engine, source_motion, driving_info, variant):
    options = AnimationOptions(**VARIANTS[variant])
    drv = DrivingMotion(
        driving_info, torch.from_numpy(golden["c_d_eyes"]), torch.from_numpy(golden["c_d_lip"])
    )
    transfer = MotionTransfer(engine, options, source_motion, driving_info[0:1])
    assert_close(transfer(source_motion, drv).numpy(), golden[f"{variant}__x_d"], f"{variant}__x_d")
    if f"{variant}__motion_multiplier" in golden:
        assert transfer.multiplier == pytest.approx(float(golden[f"{variant}__motion_multiplier"]), rel=1e-4)


def test_golden_driving_image(golden, engine, source_motion, driving_info):
    transfer = MotionTransfer(
        engine, AnimationOptions(), source_motion, driving_info[0:1], driving_is_video=False
    )
    x_d = transfer(source_motion, DrivingMotion(driving_info[0:1]))
    assert_close(x_d.numpy(), golden["driving_image__x_d"], "driving_image__x_d")


def test_golden_video_source(golden, engine, driving, driving_info):
    source_frames = driving.flip(0)  # the oracle's video source: the driving frames reversed
    info = engine.extract_motion(source_frames)
    src = SourceMotion(info, source_keypoints(info))
    assert_close(src.x_s.numpy(), golden["v2v__x_s"], "v2v__x_s")
    options = AnimationOptions()
    smoothed, exp_obs, r_obs = smooth_video_motion(info, driving_info, options)
    assert_close(exp_obs, golden["v2v__exp_observed"], "v2v__exp_observed")
    assert_close(r_obs, golden["v2v__R_observed"], "v2v__R_observed")
    assert_close(smoothed.exp.numpy(), golden["v2v__exp_smoothed"], "v2v__exp_smoothed")
    assert_close(smoothed.R.numpy(), golden["v2v__R_smoothed"], "v2v__R_smoothed")
    transfer = MotionTransfer(engine, options, src[0:1], driving_info[0:1], source_is_video=True)
    x_d = transfer(src, DrivingMotion(driving_info), smoothed)
    assert_close(x_d.numpy(), golden["v2v__x_d"], "v2v__x_d")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_golden_warping_module(golden, warped, i):
    assert_close(warped[i]["occlusion_map"].numpy(), golden[f"W{i}_occlusion_map"], f"W{i}_occlusion_map")
    assert_close_sampled(warped[i]["deformation"].numpy(), golden, f"W{i}_deformation")
    assert_close_sampled(warped[i]["out"].numpy(), golden, f"W{i}_out")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_golden_spade_decoder_and_frames(golden, decoded, i):
    assert_close_sampled(decoded[i].numpy(), golden, f"G{i}_out")
    assert_frames_close(to_uint8_frames(decoded[i])[0].numpy(), golden[f"frame{i}_uint8"], f"frame{i}_uint8")


def test_golden_batched_render_equals_single_frames(golden, engine, f_s, source_motion, driving, decoded):
    """N driving frames through M, motion transfer, W and G as one batch == N single calls (within the
    float32 tolerance: batched convolutions sum in another order)."""
    info = engine.extract_motion(driving)
    transfer = MotionTransfer(engine, AnimationOptions(), source_motion, info[0:1])
    x_d = transfer(source_motion, DrivingMotion(info))
    frames = engine.render(f_s, source_motion.x_s, x_d)
    assert_close(x_d.numpy(), golden["default__x_d"], "batched x_d")
    for i, single in enumerate(decoded):
        assert_close(frames[i : i + 1].numpy(), single.numpy(), f"batched frame {i}")
        diff = (to_uint8_frames(frames[i : i + 1]).int() - to_uint8_frames(single).int()).abs().max()
        assert int(diff) <= 1
    # single-frame transfer equals the batched transfer
    for i in range(len(info)):
        one = transfer(source_motion, DrivingMotion(info[i : i + 1]))
        assert_close(one.numpy(), x_d[i : i + 1].numpy(), f"single x_d {i}", 1e-6)
