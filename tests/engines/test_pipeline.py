"""End to end through the local pipeline: `liveportrait animate` with synthetic weights (`pytest -k e2e`).

Each rendered frame costs W + G (~1.25 TFLOP) on the CPU, so these tests use few frames.
"""

import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from common.errors import Canceled
from common.options import AnimationOptions
from common.progress import ProgressEvent
from engines import driving as driving_module
from engines import pipeline
from engines.demo import head_motion_frames, portrait, write_demo_inputs
from engines.media import VideoWriter, read_image, write_image, write_test_video
from engines.motion.template import load_template
from engines.pipeline import Animator
from engines.request import AnimateRequest
from engines.source import EngineError
from liveportrait.cli import main
from tests.engines.factory import cpu_animator


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="module")
def animator(weights: Path) -> Animator:
    return cpu_animator(weights, frame_batch=4)


def test_e2e_cli_animate_gives_h264_with_audio_at_the_driving_fps(tmp_path, weights):
    source, driving = write_demo_inputs(tmp_path, n_frames=8, fps=15.0)
    out = tmp_path / "out.mp4"
    code = main(
        ["animate", str(source), str(driving), "-o", str(out), "--weights", str(weights), "--device", "cpu"]
    )
    assert code == 0
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert video.average_rate is not None and float(video.average_rate) == pytest.approx(15.0)
        assert len(container.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8
    source_rgb = read_image(source)
    assert frames[0].shape == source_rgb.shape  # pasted back into the full source frame
    # outside the paste-back mask the source is untouched (up to H.264 loss)
    corner = (slice(450, 512), slice(0, 60))
    assert np.abs(frames[3][corner].astype(int) - source_rgb[corner].astype(int)).mean() < 4


def test_driving_image_gives_a_png(tmp_path, animator):
    driving = tmp_path / "driving.png"
    write_image(driving, next(head_motion_frames(portrait(), 4)))
    source = tmp_path / "source.jpg"
    write_image(source, portrait())
    result = animator.animate(
        AnimateRequest(source, driving, tmp_path / "out.mp4", AnimationOptions(output_kind="crop"))
    )
    assert result.output.suffix == ".png" and result.content_type == "image/png"
    assert read_image(result.output).shape == (512, 512, 3)


def test_motion_template_round_trip_drives_the_same_frames(tmp_path, weights, animator):
    source, driving = write_demo_inputs(tmp_path, n_frames=2)
    template = tmp_path / "motion.npz"
    assert main(["motion", "extract", str(driving), "-o", str(template), "--weights", str(weights)]) == 0
    assert load_template(template).exp.shape == (2, 21, 3)
    options = AnimationOptions(output_kind="crop", audio="none")
    from_video = animator.animate(AnimateRequest(source, driving, tmp_path / "a.mp4", options))
    from_template = animator.animate(AnimateRequest(source, template, tmp_path / "b.mp4", options))
    assert from_video.frames == from_template.frames == 2
    with av.open(str(from_video.output)) as a, av.open(str(from_template.output)) as b:
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))


def video_source_and_driving(out_dir: Path, n: int, size: int) -> tuple[Path, Path]:
    """A head-motion clip of n frames (size px, 10 fps) as the driving video (with audio), and the
    same clip reversed as a source video."""
    frames = list(head_motion_frames(portrait(), n, size=size))
    source, driving = out_dir / "source.mp4", out_dir / "driving.mp4"
    write_test_video(source, frames[::-1], fps=10.0, with_audio=False)
    write_test_video(driving, frames, fps=10.0, with_audio=True)
    return source, driving


def test_side_by_side_and_video_source(tmp_path, animator):
    source, driving = video_source_and_driving(tmp_path, 2, 256)
    result = animator.animate(
        AnimateRequest(source, driving, tmp_path / "out.mp4", AnimationOptions(output_kind="side_by_side"))
    )
    assert (result.frames, result.width, result.height) == (2, 3 * 512, 512)


def test_no_face_is_a_clear_error(tmp_path, animator):
    source = tmp_path / "grey.png"
    write_image(source, np.full((256, 256, 3), 128, np.uint8))
    _, driving = write_demo_inputs(tmp_path, n_frames=1)
    with pytest.raises(EngineError) as err:
        animator.animate(AnimateRequest(source, driving, tmp_path / "out.mp4", AnimationOptions()))
    assert err.value.code == "no_face"


def test_landmark_options_refuse_without_landmark_models(tmp_path, animator):
    source, driving = write_demo_inputs(tmp_path, n_frames=1)
    with pytest.raises(EngineError) as err:
        animator.animate(
            AnimateRequest(source, driving, tmp_path / "out.mp4", AnimationOptions(flag_eye_retargeting=True))
        )
    assert err.value.code == "landmarks_required"
    assert "flag_eye_retargeting" in err.value.message


def test_cli_refuses_a_pickle_template_without_trust(tmp_path, weights, capsys):
    import pickle

    source, _ = write_demo_inputs(tmp_path, n_frames=1)
    template = tmp_path / "motion.pkl"
    template.write_bytes(pickle.dumps({"n_frames": 1, "output_fps": 25, "motion": []}))
    code = main(
        ["animate", str(source), str(template), "-o", str(tmp_path / "o.mp4"), "--weights", str(weights)]
    )
    assert code == 3  # liveportrait.failures.EXIT_INPUT: the input is refused
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and err.splitlines()[-1].startswith("error [bad_template]: ")


# --- the pipelined job: stages overlapped in threads, composition on the model's device ---------
#
# These tests check the plumbing around W+G, so W+G is replaced by a cheap stand-in that draws a
# textured (B, 3, 512, 512) image from each frame's driving keypoints; everything else is real.


def stand_in_render(f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """(B, 3, 512, 512) in [0, 1]: stripes whose phase follows each frame's x_d."""
    ramp = torch.linspace(0, 12.0, 512, device=x_d.device)
    phase = 40.0 * x_d.float().sum(dim=(1, 2)).view(-1, 1, 1, 1)
    stripes = torch.sin(ramp.view(1, 1, 512, 1) + ramp.view(1, 1, 1, 512) * 0.7 + phase)
    colour = torch.tensor([0.2, 0.5, 0.8], device=x_d.device).view(1, 3, 1, 1)
    return (0.5 + 0.45 * stripes * colour).expand(-1, 3, -1, -1).contiguous()


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture
def stand_in_animator(weights: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Animator]:
    def build(**kwargs) -> Animator:
        animator = cpu_animator(weights, frame_batch=2, **kwargs)
        monkeypatch.setattr(animator.engine.model, "render", stand_in_render)
        return animator

    return build


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_demo_inputs(tmp_path_factory.mktemp("inputs"), n_frames=5)


@pytest.mark.parametrize("output_kind", ["pasteback", "side_by_side"])
def test_pipelined_job_equals_the_sequential_one(tmp_path, stand_in_animator, inputs, output_kind):
    source, driving = inputs
    options = AnimationOptions(output_kind=output_kind)
    outputs = {}
    for pipelined in (False, True):
        events: list[ProgressEvent] = []
        animator = stand_in_animator(pipelined=pipelined)
        result = animator.animate(
            AnimateRequest(source, driving, tmp_path / f"{pipelined}.mp4", options, progress=events.append)
        )
        assert result.frames == 5
        # each phase on entry, then frames as M reads them (batch 2) and as W and G render them
        assert [(e.phase, e.done, e.total) for e in events] == [
            ("preparing", 0, None),
            ("extracting_motion", 0, None),
            *(("extracting_motion", done, 5) for done in (2, 4, 5)),
            *(("rendering", done, 5) for done in (0, 2, 4, 5)),
            ("finalizing", 0, None),
        ]
        outputs[pipelined] = read_frames(result.output)
    assert len(outputs[True]) == len(outputs[False]) == 5
    assert all(np.array_equal(a, b) for a, b in zip(outputs[True], outputs[False], strict=True))


def test_video_source_pipelined_equals_sequential(tmp_path, stand_in_animator):
    source, driving = video_source_and_driving(tmp_path, 5, 320)
    events: list[ProgressEvent] = []
    outputs = [
        read_frames(
            stand_in_animator(pipelined=pipelined)
            .animate(
                AnimateRequest(
                    source, driving, tmp_path / f"{pipelined}.mp4", AnimationOptions(), progress=events.append
                )
            )
            .output
        )
        for pipelined in (False, True)
    ]
    assert len(outputs[0]) == 5
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))
    # motion of the 5 driving frames, then of the 5 source frames (counted on), then 5 rendered
    motion = [(e.done, e.total) for e in events[: len(events) // 2] if e.phase == "extracting_motion"]
    assert motion == [(0, None), (2, 5), (4, 5), (5, 5), (7, 10), (9, 10), (10, 10)]
    assert [e.phase for e in events[: len(events) // 2]][-1] == "finalizing"


def test_paste_back_on_the_device_gives_the_host_frames(tmp_path, stand_in_animator, inputs):
    """compose_on_device is the CUDA default; torch runs the same code on the CPU here."""
    source, driving = inputs
    outputs = [
        read_frames(
            stand_in_animator(compose_on_device=on_device)
            .animate(AnimateRequest(source, driving, tmp_path / f"{on_device}.mp4", AnimationOptions()))
            .output
        )
        for on_device in (False, True)
    ]
    assert outputs[0][0].shape == read_image(source).shape
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


def test_driving_auto_crop_on_the_device_gives_the_host_motion(
    tmp_path, stand_in_animator, inputs, monkeypatch
):
    """The auto-crop box needs landmark models (not shipped): a fixed box stands in for it."""
    _, driving = inputs
    box = np.array([[0.9, 0.1, -20.0], [-0.1, 0.9, 30.0], [0.0, 0.0, 1.0]])
    monkeypatch.setattr(driving_module, "driving_crop", lambda *_: box)
    templates = []
    for on_device in (False, True):
        animator = stand_in_animator(compose_on_device=on_device)
        templates.append(animator.extract_motion(driving, AnimationOptions(flag_crop_driving_video=True)))
    for key in ("exp", "R", "scale", "t", "kp"):
        np.testing.assert_array_equal(getattr(templates[0], key), getattr(templates[1], key))


class FailingWriter(VideoWriter):
    """A VideoWriter whose third frame fails, as a full disk would."""

    def write(self, frame: np.ndarray) -> None:
        self.written = getattr(self, "written", 0) + 1
        if self.written == 3:
            raise OSError(28, "No space left on device")
        super().write(frame)


@pytest.mark.parametrize("pipelined", [False, True])
def test_an_encoder_failure_fails_the_job_and_leaves_no_file(
    tmp_path, stand_in_animator, inputs, monkeypatch, pipelined
):
    monkeypatch.setattr(pipeline, "VideoWriter", FailingWriter)
    source, driving = inputs
    out = tmp_path / "out.mp4"
    with pytest.raises(OSError, match="No space left"):
        stand_in_animator(pipelined=pipelined).animate(
            AnimateRequest(source, driving, out, AnimationOptions())
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pipelined", [False, True])
def test_cancel_between_batches_stops_the_pipelined_job(tmp_path, stand_in_animator, inputs, pipelined):
    source, driving = inputs
    animator, rendered = stand_in_animator(pipelined=pipelined), []

    def render(*args: torch.Tensor) -> torch.Tensor:
        rendered.append(len(args[2]))
        return stand_in_render(*args)

    animator.engine.model.render = render
    with pytest.raises(Canceled):
        animator.animate(
            AnimateRequest(
                source,
                driving,
                tmp_path / "out.mp4",
                AnimationOptions(),
                should_cancel=lambda: bool(rendered),
            )
        )
    assert rendered == [2]  # canceled at the check after the first batch
    assert list(tmp_path.iterdir()) == []
    stages = ("encode", "source-crop", "driving-decode")
    assert not [t for t in threading.enumerate() if t.name in stages]
