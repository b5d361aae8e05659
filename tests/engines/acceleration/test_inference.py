"""engines.acceleration.inference against the golden outputs and against the layers it rewrites.

The optimised float32 model must meet the same golden tolerance as the eager one (1e-4 relative L2,
uint8 frames within 1 grey level); one frame of W+G is rendered. The layer rewrites are checked on
small random layers.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.options import AnimationOptions
from engines.acceleration.inference import (
    FastSPADEBlock,
    InferenceModel,
    NearestUpConv,
    TapSplitConv2d,
    WinogradConv2d,
    flush_denormals,
    fold_batch_norm,
    optimize_for_inference,
    resolve_precision,
    use_winograd,
)
from engines.demo import write_demo_inputs
from engines.model import LivePortraitModel, image_to_tensor, to_uint8_frames
from engines.motion.keypoints import source_keypoints
from engines.networks.spade_generator import SPADEResnetBlock
from tests.engines.factory import cpu_animator
from tests.engines.golden_utils import assert_close, assert_close_sampled, assert_frames_close

NO_CUDA = "no CUDA device on this machine"
MOTION_KEYS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


@pytest.fixture(scope="module")
def fast(golden_model: LivePortraitModel) -> InferenceModel:
    return optimize_for_inference(golden_model)


@pytest.fixture(scope="module")
def source(golden) -> torch.Tensor:
    return image_to_tensor(torch.from_numpy(golden["source_rgb"])[None])


@pytest.fixture(scope="module")
def f_s(fast, source) -> torch.Tensor:
    return fast.extract_appearance(source)


@pytest.fixture(scope="module")
def x_s(fast, source) -> torch.Tensor:
    return source_keypoints(fast.extract_motion(source))


@pytest.fixture(scope="module")
def rendered(golden, fast, f_s, x_s) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One frame through `render` (the pipeline's call), with W's outputs captured on the way."""
    captured = {}
    hook = fast.warping_module.register_forward_hook(lambda m, i, out: captured.update(out))
    try:
        frame = fast.render(f_s, x_s, torch.from_numpy(golden["default__x_d"][0:1]))
    finally:
        hook.remove()
    return captured, frame


def test_optimised_model_leaves_the_original_alone(golden, golden_model, fast, source):
    assert isinstance(fast, InferenceModel) and not isinstance(golden_model, InferenceModel)
    original = {p.data_ptr() for p in golden_model.parameters()}
    assert not any(p.data_ptr() in original for p in fast.parameters())
    assert_close_sampled(golden_model.extract_appearance(source).numpy(), golden, "F_out")


def test_optimised_appearance_feature_extractor(golden, f_s):
    assert f_s.is_contiguous()
    assert_close_sampled(f_s.numpy(), golden, "F_out")


def test_optimised_motion_extractor(golden, fast, source):
    raw = fast.extract_motion_raw(source)
    for key in MOTION_KEYS:
        assert_close(raw[key].numpy(), golden[f"M_source_{key}"], f"M_source_{key}")
    driving = image_to_tensor(torch.from_numpy(golden["driving_rgb"]))
    raw = fast.extract_motion_raw(driving[1:2])
    for key in MOTION_KEYS:
        assert_close(raw[key].numpy(), golden[f"M_driving1_{key}"], f"M_driving1_{key}")


def test_optimised_source_keypoints(golden, x_s):
    assert_close(x_s.numpy(), golden["x_s"], "x_s")


def test_optimised_warping_module(golden, rendered):
    warped, _ = rendered
    assert_close(warped["occlusion_map"].numpy(), golden["W0_occlusion_map"], "W0_occlusion_map")
    assert_close_sampled(warped["deformation"].numpy(), golden, "W0_deformation")
    assert_close_sampled(warped["out"].numpy(), golden, "W0_out")


def test_optimised_spade_decoder_and_frame(golden, rendered):
    _, frame = rendered
    assert frame.dtype == torch.float32
    assert_close_sampled(frame.numpy(), golden, "G0_out")
    assert_frames_close(to_uint8_frames(frame)[0].numpy(), golden["frame0_uint8"], "frame0_uint8")


def test_optimised_stitching_mlp(golden, fast):
    out = fast.run_mlp("stitching", torch.from_numpy(golden["S_stitching_in"]))
    assert_close(out.numpy(), golden["S_stitching_out"], "S_stitching_out")


def test_batch_norm_folding_is_exact():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
    bn.eval()
    x = torch.randn(2, 5, 9, 7)
    with torch.no_grad():
        expected = bn(conv(x))
        folded = fold_batch_norm(conv, bn)(x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_folding_3d_without_conv_bias():
    torch.manual_seed(1)
    conv, bn = nn.Conv3d(4, 3, 3, padding=1, bias=False), nn.BatchNorm3d(3).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 4, 3, 5, 6)
        torch.testing.assert_close(fold_batch_norm(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nearest_up_conv_2d_equals_upsample_then_conv(scale):
    torch.manual_seed(scale)
    conv, x = nn.Conv2d(5, 7, 3, padding=1), torch.randn(2, 5, 6, 9)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=float(scale)))
        torch.testing.assert_close(NearestUpConv(conv, scale)(x), expected, rtol=1e-5, atol=1e-5)


def test_nearest_up_conv_3d_keeps_the_depth():
    torch.manual_seed(0)
    conv, x = nn.Conv3d(4, 6, 3, padding=1), torch.randn(2, 4, 3, 5, 4)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0)))
        torch.testing.assert_close(NearestUpConv(conv, 2)(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fin, fout, scale", [(8, 8, 1), (8, 4, 2), (6, 3, 4)])
def test_fast_spade_block_equals_the_original(fin, fout, scale):
    torch.manual_seed(fin + scale)
    block = SPADEResnetBlock(fin, fout, label_nc=5)
    for module in block.modules():
        if hasattr(module, "weight_orig"):
            with torch.no_grad():
                module.weight_orig.normal_(0, 0.3)
                module.weight_u.normal_()
                module.weight_v.normal_()
    feature = torch.randn(2, 5, 4, 6)
    x = torch.randn(2, fin, 4 * scale, 6 * scale)
    with torch.no_grad():
        expected = block(x, feature)
        torch.testing.assert_close(FastSPADEBlock(block, scale)(x, feature), expected, rtol=1e-4, atol=1e-5)


def test_tap_split_conv_equals_the_conv():
    torch.manual_seed(0)
    conv, x = nn.Conv2d(40, 2, 7, padding=3), torch.randn(2, 40, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(TapSplitConv2d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


def test_winograd_conv_replaces_only_eligible_convs_and_stays_close():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 8, 3, padding=1), nn.Conv2d(8, 64, 1))
    x = torch.randn(3, 64, 12, 10)
    with torch.no_grad():
        expected = net(x)
        fast = use_winograd(copy.deepcopy(net))
        assert [type(m).__name__ for m in fast] == ["WinogradConv2d", "Conv2d", "Conv2d"]
        assert_close(fast(x).numpy(), expected.numpy(), "winograd", 1e-5)


def test_flush_denormals():
    x = torch.tensor([1e-39, -1e-40, 1.2e-38, 0.0, -3.0, 1e-45])
    assert flush_denormals(x.clone()).tolist() == pytest.approx([0.0, 0.0, 1.2e-38, 0.0, -3.0, 0.0])


def test_bf16_decoder_stays_close(golden, golden_model, rendered):
    warped, _ = rendered
    bf16 = optimize_for_inference(golden_model, precision="bf16")
    out = bf16.decode(warped["out"])
    assert out.dtype == torch.float32
    assert_close_sampled(out.numpy(), golden, "G0_out", tol=5e-2)


def test_animator_runs_the_optimised_model(tmp_path, golden_weights):
    animator = cpu_animator(golden_weights, frame_batch=2, optimize=True)
    assert isinstance(animator.engine.model, InferenceModel)
    source, driving = write_demo_inputs(tmp_path, n_frames=1)
    options = AnimationOptions(output_kind="crop", audio="none")
    result = animator.animate(source, driving, tmp_path / "out.mp4", options)
    assert (result.frames, result.width, result.height) == (1, 512, 512)


def test_reduced_precision_needs_optimize(golden_weights):
    with pytest.raises(ValueError, match="optimize"):
        cpu_animator(golden_weights, precision="bf16")


def test_inference_model_from_weights(golden_weights):
    model = InferenceModel.from_weights(golden_weights)
    assert isinstance(model, InferenceModel) and model.precision == "fp32"
    assert any(isinstance(m, WinogradConv2d) for m in model.spade_generator.modules())


def test_unknown_precision_is_refused(golden_model):
    with pytest.raises(ValueError, match="precision"):
        optimize_for_inference(golden_model, precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_fp16_render_within_1e_2(golden, golden_model):
    fp16 = optimize_for_inference(golden_model, "cuda", "fp16")
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    x_s = source_keypoints(fp16.extract_motion(source))
    frame = fp16.render(fp16.extract_appearance(source), x_s, torch.from_numpy(golden["default__x_d"]).cuda())
    for i in range(frame.shape[0]):
        assert_close_sampled(frame[i : i + 1].cpu().numpy(), golden, f"G{i}_out", tol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_graphs_replay_equals_eager_render(golden, golden_model):
    plain = optimize_for_inference(golden_model, "cuda", "fp16")
    graphed = optimize_for_inference(golden_model, "cuda", "fp16", cuda_graphs=True)
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    f_s, x_s = plain.extract_appearance(source), source_keypoints(plain.extract_motion(source))
    x_d = torch.from_numpy(golden["default__x_d"]).cuda()
    expected = plain.render(f_s, x_s, x_d)
    for _ in range(2):  # capture, then replay
        assert_close(graphed.render(f_s, x_s, x_d).cpu().numpy(), expected.cpu().numpy(), "graphed", 1e-3)


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")
