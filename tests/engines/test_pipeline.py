"""End to end through the local pipeline: `liveportrait animate` with synthetic weights (`pytest -k e2e`).

Each rendered frame costs W + G (~1.25 TFLOP) on the CPU, so these tests use few frames.
"""

from pathlib import Path

import av
import numpy as np
import pytest

from engines.demo import head_motion_frames, portrait, write_demo_inputs
from engines.media import read_image, write_image, write_test_video
from engines.motion_template import load_template
from engines.pipeline import Animator, EngineError
from liveportrait.cli import main
from liveportrait.options import AnimationOptions


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.weights import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="module")
def animator(weights: Path) -> Animator:
    return Animator(weights, "cpu", frame_batch=4)


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
        assert float(video.average_rate) == pytest.approx(15.0)
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
    result = animator.animate(source, driving, tmp_path / "out.mp4", AnimationOptions(output_kind="crop"))
    assert result.output.suffix == ".png" and result.content_type == "image/png"
    assert read_image(result.output).shape == (512, 512, 3)


def test_motion_template_round_trip_drives_the_same_frames(tmp_path, weights, animator):
    source, driving = write_demo_inputs(tmp_path, n_frames=2)
    template = tmp_path / "motion.npz"
    assert main(["motion", "extract", str(driving), "-o", str(template), "--weights", str(weights)]) == 0
    assert load_template(template).exp.shape == (2, 21, 3)
    options = AnimationOptions(output_kind="crop", audio="none")
    from_video = animator.animate(source, driving, tmp_path / "a.mp4", options)
    from_template = animator.animate(source, template, tmp_path / "b.mp4", options)
    assert from_video.frames == from_template.frames == 2
    with av.open(str(from_video.output)) as a, av.open(str(from_template.output)) as b:
        fa = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
        fb = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))


def test_side_by_side_and_video_source(tmp_path, animator):
    frames = list(head_motion_frames(portrait(), 2, size=256))
    source = tmp_path / "source.mp4"
    write_test_video(source, frames[::-1], fps=10.0, with_audio=False)
    driving = tmp_path / "driving.mp4"
    write_test_video(driving, frames, fps=10.0, with_audio=True)
    result = animator.animate(
        source, driving, tmp_path / "out.mp4", AnimationOptions(output_kind="side_by_side")
    )
    assert (result.frames, result.width, result.height) == (2, 3 * 512, 512)


def test_no_face_is_a_clear_error(tmp_path, animator):
    source = tmp_path / "grey.png"
    write_image(source, np.full((256, 256, 3), 128, np.uint8))
    _, driving = write_demo_inputs(tmp_path, n_frames=1)
    with pytest.raises(EngineError) as err:
        animator.animate(source, driving, tmp_path / "out.mp4", AnimationOptions())
    assert err.value.code == "no_face"


def test_landmark_options_refuse_without_landmark_models(tmp_path, animator):
    source, driving = write_demo_inputs(tmp_path, n_frames=1)
    with pytest.raises(EngineError) as err:
        animator.animate(source, driving, tmp_path / "out.mp4", AnimationOptions(flag_eye_retargeting=True))
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
    assert code == 1
    assert "--trust-pickle" in capsys.readouterr().err
