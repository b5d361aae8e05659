"""engines.acceleration.inference against the golden outputs and against the layers it rewrites.

The optimised float32 model must meet the same golden tolerance as the eager one (1e-4 relative L2,
uint8 frames within 1 grey level); one frame of W+G is rendered. The layer rewrites are checked on
small random layers.
"""

import copy
import threading
from collections.abc import Iterator

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.engine_config import REDUCED_PRECISION_REL_L2, EngineConfig
from common.options import AnimationOptions
from engines.acceleration.inference import (
    FastSPADEBlock,
    FixedBatchRender,
    InferenceModel,
    NearestUpConv,
    TapSplitConv2d,
    WinogradConv2d,
    flush_denormals,
    fold_batch_norm,
    optimize_for_inference,
    pad_rows,
    padded_batch,
    resolve_precision,
    use_float32_arithmetic,
    use_winograd,
)
from engines.demo import write_demo_inputs
from engines.engine import load_engine
from engines.model import LivePortraitModel, image_to_tensor, to_uint8_frames
from engines.motion.keypoints import source_keypoints
from engines.networks.spade_generator import SPADEResnetBlock
from engines.request import AnimateRequest
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
    assert bn.running_mean is not None and bn.running_var is not None
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
    assert bn.running_mean is not None and bn.running_var is not None
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
                module.get_parameter("weight_orig").normal_(0, 0.3)
                module.get_buffer("weight_u").normal_()
                module.get_buffer("weight_v").normal_()
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
        assert [type(m).__name__ for m in fast.children()] == ["WinogradConv2d", "Conv2d", "Conv2d"]
        assert_close(fast(x).numpy(), expected.numpy(), "winograd", 1e-5)


def test_flush_denormals():
    x = torch.tensor([1e-39, -1e-40, 1.2e-38, 0.0, -3.0, 1e-45])
    assert flush_denormals(x.clone()).tolist() == pytest.approx([0.0, 0.0, 1.2e-38, 0.0, -3.0, 0.0])


def test_bf16_frames_within_the_documented_bound(golden, golden_model, source):
    """The bound that the precision setting documents (common.engine_config.REDUCED_PRECISION_REL_L2),
    measured on the three golden frames (the float32 golden outputs) through the pipeline's render."""
    bf16 = optimize_for_inference(golden_model, precision="bf16")
    x_s = source_keypoints(bf16.extract_motion(source))
    frames = bf16.render(bf16.extract_appearance(source), x_s, torch.from_numpy(golden["default__x_d"]))
    assert frames.dtype == torch.float32
    for i in range(frames.shape[0]):
        assert_close_sampled(frames[i : i + 1].numpy(), golden, f"G{i}_out", REDUCED_PRECISION_REL_L2["bf16"])


def test_animator_runs_the_optimised_model(tmp_path, golden_weights):
    animator = cpu_animator(golden_weights, frame_batch=2, optimize=True)
    assert isinstance(animator.engine.model, InferenceModel)
    source, driving = write_demo_inputs(tmp_path, n_frames=1)
    options = AnimationOptions(output_kind="crop", audio="none")
    result = animator.animate(AnimateRequest(source, driving, tmp_path / "out.mp4", options))
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
        optimize_for_inference(golden_model, precision="int8")  # type: ignore[arg-type]  # refused at run time


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_fp16_render_within_the_documented_bound(golden, golden_model):
    use_float32_arithmetic("cuda")  # as load_engine does: M stays float32, not TF32
    fp16 = optimize_for_inference(golden_model, "cuda", "fp16")
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    x_s = source_keypoints(fp16.extract_motion(source))
    frame = fp16.render(fp16.extract_appearance(source), x_s, torch.from_numpy(golden["default__x_d"]).cuda())
    for i in range(frame.shape[0]):
        assert_close_sampled(
            frame[i : i + 1].cpu().numpy(), golden, f"G{i}_out", REDUCED_PRECISION_REL_L2["fp16"]
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_fp32_render_within_the_golden_tolerance(golden, golden_model):
    """float32 on CUDA is float32 (TF32 off): the golden tolerance holds as on the CPU."""
    use_float32_arithmetic("cuda")
    fp32 = optimize_for_inference(golden_model, "cuda", "fp32")
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    x_s = source_keypoints(fp32.extract_motion(source))
    frame = fp32.render(fp32.extract_appearance(source), x_s, torch.from_numpy(golden["default__x_d"]).cuda())
    for i in range(frame.shape[0]):
        assert_close_sampled(frame[i : i + 1].cpu().numpy(), golden, f"G{i}_out")


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
    # a smaller last batch replays the captured graph, padded: no capture mid-job
    last = graphed.render(f_s, x_s, x_d[:2])
    assert_close(last.cpu().numpy(), expected[:2].cpu().numpy(), "graphed, padded", 1e-3)
    assert graphed._fixed is not None and len(graphed._fixed.prepared) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_cuda_graph_capture_while_another_thread_copies_off_the_gpu(golden, golden_model):
    """The encoder thread keeps copying frames to the host while a graph is captured (thread_local)."""
    graphed = optimize_for_inference(golden_model, "cuda", "fp16", cuda_graphs=True)
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).cuda()
    f_s, x_s = graphed.extract_appearance(source), source_keypoints(graphed.extract_motion(source))
    x_d = torch.from_numpy(golden["default__x_d"]).cuda()
    stop, copies = threading.Event(), []
    frames = torch.rand(4, 512, 512, 3, device="cuda")

    def encoder() -> None:
        while not stop.is_set():
            copies.append(frames.cpu())

    thread = threading.Thread(target=encoder)
    thread.start()
    try:
        out = graphed.render(f_s, x_s, x_d)
    finally:
        stop.set()
        thread.join()
    assert out.shape == (3, 3, 512, 512) and copies


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_on_a_second_device(golden, golden_model):
    """Capture streams and the memory pool belong to the model's device, not the current one."""
    graphed = optimize_for_inference(golden_model, "cuda:1", "fp16", cuda_graphs=True)
    source = image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]).to("cuda:1")
    f_s, x_s = graphed.extract_appearance(source), source_keypoints(graphed.extract_motion(source))
    out = graphed.render(f_s, x_s, torch.from_numpy(golden["default__x_d"]).to("cuda:1"))
    assert out.device == torch.device("cuda:1") and torch.cuda.current_device() == 0


# --- fixed batch sizes (CUDA graphs, torch.compile): the logic runs on any device ------------------


class RowRender:
    """A render whose rows depend only on their own inputs, counting the batch sizes it runs at."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        self.batches.append(x_d.shape[0])
        return f_s.sum(dim=(1, 2)) + x_s.sum(dim=(1, 2)) + 10 * x_d.sum(dim=(1, 2))


def test_padded_batch_and_pad_rows():
    assert padded_batch([], 5) == 5
    assert padded_batch([16, 8], 5) == 8
    assert padded_batch([16, 8], 9) == 16
    assert padded_batch([4], 5) == 5
    t = torch.arange(6.0).view(3, 2)
    assert pad_rows(t, 3) is t
    assert pad_rows(t, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]


def test_fixed_batch_render_pads_a_smaller_last_batch():
    render = RowRender()
    fixed = FixedBatchRender(render)
    f_s, x_s = torch.rand(1, 2, 3), torch.rand(1, 21, 3)
    x_d = torch.rand(8, 21, 3)
    full = fixed(f_s, x_s, x_d)
    last = fixed(f_s, x_s, x_d[:3])
    assert last.shape == (3,)
    torch.testing.assert_close(last, full[:3])
    torch.testing.assert_close(last, render(f_s.expand(3, -1, -1), x_s.expand(3, -1, -1), x_d[:3]))
    assert render.batches[:2] == [8, 8] and len(fixed.prepared) == 1
    fixed(f_s, x_s, torch.rand(9, 21, 3))  # larger than any prepared size: a new one
    assert render.batches[-1] == 9 and len(fixed.prepared) == 2


def test_fixed_batch_render_per_frame_sources():
    """A video source: f_s and x_s per frame are padded with x_d; a last batch of one row fits too."""
    render = RowRender()
    fixed = FixedBatchRender(render)
    f_s, x_s, x_d = torch.rand(4, 2, 3), torch.rand(4, 21, 3), torch.rand(4, 21, 3)
    fixed(f_s, x_s, x_d)
    one = fixed(f_s[3:], x_s[3:], x_d[3:])
    torch.testing.assert_close(one, render(f_s[3:], x_s[3:], x_d[3:]))
    assert render.batches[:2] == [4, 4] and len(fixed.prepared) == 1
    layout, n = fixed.select(f_s[:1], x_s[:2], x_d[:2])  # x_s per frame, f_s of one row: per-frame fits
    assert n == 4 and layout == next(iter(fixed.prepared))[0]


def test_fixed_batch_render_keeps_shared_and_per_frame_apart():
    render = RowRender()
    fixed = FixedBatchRender(render)
    fixed(torch.rand(1, 2, 3), torch.rand(1, 21, 3), torch.rand(4, 21, 3))  # shared f_s, x_s
    per_frame = (torch.rand(3, 2, 3), torch.rand(3, 21, 3), torch.rand(3, 21, 3))
    assert fixed.select(*per_frame)[1] == 3  # the shared graph cannot take per-frame sources
    other_shape = (torch.rand(1, 2, 4), torch.rand(1, 21, 3), torch.rand(2, 21, 3))
    assert fixed.select(*other_shape)[1] == 2


# --- TF32 and torch.compile ----------------------------------------------------------------------


@pytest.fixture
def tf32_flags() -> Iterator[None]:
    """Restores torch's process-wide TF32 switches after a test that changes them."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_float32_arithmetic_turns_tf32_off_on_cuda_only(tf32_flags):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    use_float32_arithmetic("cpu")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    use_float32_arithmetic(torch.device("cuda", 1))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_load_engine_on_cuda_turns_tf32_off(golden_weights, tf32_flags):
    """A CUDA fp32 config: TF32 is off before the weights reach the device (here, a CPU-only torch
    cannot load them on CUDA at all: the switches are set all the same)."""
    torch.backends.cudnn.allow_tf32 = True
    config = EngineConfig(weights_dir=golden_weights, device="cuda", precision="fp32", detector="haar-box")
    try:
        load_engine(config)
    except (AssertionError, RuntimeError):  # torch's "not compiled with CUDA enabled"
        assert not torch.cuda.is_available()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_compile_option_wires_through_to_w_and_g(golden_weights):
    engine = load_engine(
        EngineConfig(weights_dir=golden_weights, device="cpu", compile="default", detector="haar-box")
    )
    model = engine.model
    assert isinstance(model, InferenceModel) and model._fixed is not None and model._fixed.capture_on is None
    for net in (model.warping_module, model.spade_generator):
        assert net._compiled_call_impl is not None  # nn.Module.compile: calls go through torch.compile
    assert model.motion_extractor._compiled_call_impl is None
    assert not any(isinstance(m, WinogradConv2d) for m in model.spade_generator.modules())


def test_compile_option_refusals(golden_weights):
    with pytest.raises(pydantic.ValidationError, match="CUDA graphs"):
        EngineConfig(weights_dir=golden_weights, cuda_graphs=True, compile="reduce-overhead")
    EngineConfig(weights_dir=golden_weights, cuda_graphs=True, compile="max-autotune-no-cudagraphs")
    with pytest.raises(ValueError, match="optimize"):
        load_engine(EngineConfig(weights_dir=golden_weights, device="cpu", optimize=False, compile="default"))


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")
