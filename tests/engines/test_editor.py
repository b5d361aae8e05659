"""The expression editor's three uses on a real engine (synthetic weights, CPU): a still, keyframes, offsets.

Each rendered frame costs W + G (seconds on this CPU), so every test renders at most two frames.
The F and M calls and the keypoints reaching W are recorded by wrapping the engine's own methods
(the real computation still runs).
"""

from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from common.expression import ExpressionControls, Keyframe
from common.options import AnimationOptions
from engines.demo import head_motion_frames, portrait
from engines.editor import Editor
from engines.engine import Engine
from engines.media import Limits, read_image, write_image, write_test_video
from engines.motion.expression import REST, expression_edit
from engines.motion.transfer import DrivingMotion, MotionTransfer, SourceMotion
from engines.pipeline import Animator
from engines.request import AnimateRequest
from engines.source import EngineError
from engines.source_cache import SourceCache
from tests.engines.factory import cpu_engine

from .golden_utils import assert_close

MiB = 2**20


@pytest.fixture(scope="module")
def engine(golden_weights: Path) -> Engine:
    """The plain modules on the CPU, with the face analyzer the synthetic bundle allows (boxes only)."""
    return cpu_engine(golden_weights)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The portrait on an odd-sized canvas (515 x 600), so the edit resizes and cuts it before the crop."""
    canvas = np.full((600, 515, 3), 90, np.uint8)
    canvas[40:552, :512] = portrait()
    return write_image_file(tmp_path_factory.mktemp("source") / "portrait.png", canvas)


def write_image_file(path: Path, rgb: np.ndarray) -> Path:
    write_image(path, rgb)
    return path


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, names: list[str]) -> Counter[str]:
    """Count the calls of `owner`'s methods `names` (they still run)."""
    counts: Counter[str] = Counter()
    for name in names:
        method = getattr(owner, name)

        def counted(*args, __name=name, __method=method, **kwargs):
            counts[__name] += 1
            return __method(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return counts


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_a_still_keeps_the_source_size_and_a_repeat_skips_F_and_M(engine, source, tmp_path, monkeypatch):
    counts = count_calls(monkeypatch, engine.model, ["extract_appearance", "extract_motion"])
    cache = SourceCache(64 * MiB)
    editor = Editor(engine, cache)
    options = AnimationOptions(source_max_dim=400)  # 515 x 600 -> 343 x 400 -> cut to 342 x 400
    first = editor.still(source, tmp_path / "smile.png", ExpressionControls(smile=1.0), options)
    assert counts == {"extract_appearance": 1, "extract_motion": 1}
    second = editor.still(source, tmp_path / "turn.jpg", ExpressionControls(yaw=15.0, eee=10.0), options)
    assert counts == {"extract_appearance": 1, "extract_motion": 1}, "the second edit ran F or M again"
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    assert 8 * MiB < cache.bytes <= 64 * MiB  # f_s alone is 32 x 16 x 64 x 64 float32
    original = read_image(source)
    for result, content_type in ((first, "image/png"), (second, "image/jpeg")):
        assert result.content_type == content_type and result.frames == 1
        edited = read_image(result.output)
        assert edited.shape == original.shape
        assert (result.width, result.height) == (515, 600)
    smile, turn = read_image(first.output).astype(int), read_image(second.output).astype(int)
    assert np.abs(smile - turn).mean() > 1.0, "two different edits gave the same image"
    corner = (slice(560, 600), slice(0, 40))  # outside the pasted face: the source itself
    assert np.abs(smile[corner] - original[corner].astype(int)).max() <= 1


def test_keyframes_make_sum_of_change_and_keep_frames_on_a_linear_ramp(engine, source, tmp_path, monkeypatch):
    editor = Editor(engine, SourceCache(64 * MiB))
    rendered: list[torch.Tensor] = []
    render = engine.render

    def recording(f_s, x_s, x_d):
        rendered.append(x_d.clone())
        return render(f_s, x_s, x_d)

    monkeypatch.setattr(engine, "render", recording)
    options = AnimationOptions(flag_stitching=False, output_fps=10.0)  # x_d is then linear in the edit
    smile = ExpressionControls(smile=1.0, wink=12.0, lip_variation_three=40.0)
    result = editor.animate(source, tmp_path / "ramp.mp4", [Keyframe(expression=smile, change=2)], options)
    assert result.frames == 2 and result.fps == 10.0 and result.content_type == "video/mp4"
    frames = decoded_frames(result.output)
    assert len(frames) == 2 and frames[0].shape == (600, 514, 3)  # 515 wide cut to an even 514
    x_d = torch.cat(rendered)
    prepared = editor.prepare(source, options, Limits())  # from the cache: the job's own source
    _, states = editor.keypoints(prepared, [REST, expression_edit(smile)], stitching=False)
    assert_close(x_d[0].numpy(), ((states[0] + states[1]) / 2).numpy(), "middle of the ramp", 1e-6)
    assert_close(x_d[1].numpy(), states[1].numpy(), "end of the ramp", 1e-6)


def test_offsets_on_a_driven_job_change_its_frames(engine, source, tmp_path):
    driving = tmp_path / "driving.mp4"
    write_test_video(driving, head_motion_frames(portrait(), 1), with_audio=False)
    animator = Animator(engine)
    options = AnimationOptions(source_max_dim=400)
    plain = animator.animate(AnimateRequest(source, driving, tmp_path / "plain.mp4", options))
    offset = animator.animate(
        AnimateRequest(
            source,
            driving,
            tmp_path / "offset.mp4",
            options,
            expression=ExpressionControls(smile=1.2, pitch=10.0),
        )
    )
    assert plain.frames == offset.frames == 1
    a, b = (decoded_frames(r.output)[0].astype(int) for r in (plain, offset))
    assert a.shape == b.shape and np.abs(a - b).mean() > 1.0, "the offsets did not change the frame"


def test_an_edit_at_rest_leaves_motion_transfer_as_it_was(golden, golden_model):
    from engines.model import image_to_tensor
    from engines.motion.expression import EditBatch
    from engines.motion.keypoints import source_keypoints

    src_info = golden_model.extract_motion(image_to_tensor(torch.from_numpy(golden["source_rgb"])[None]))
    src = SourceMotion(src_info, source_keypoints(src_info))
    info = golden_model.extract_motion(image_to_tensor(torch.from_numpy(golden["driving_rgb"])))
    rest = EditBatch.stack([REST], torch.device("cpu"))
    plain = MotionTransfer(golden_model, AnimationOptions(), src, info[0:1])(src, DrivingMotion(info))
    edited = MotionTransfer(golden_model, AnimationOptions(), src, info[0:1], edit=rest)(
        src, DrivingMotion(info)
    )
    assert_close(edited.numpy(), plain.numpy(), "x_d with an edit at rest", 1e-6)


def test_target_ratios_need_landmarks_and_offsets_an_image_source(engine, source, tmp_path):
    assert not engine.analyzer.has_landmarks  # the synthetic bundle has no landmark models
    editor = Editor(engine)
    with pytest.raises(EngineError) as err:
        editor.still(source, tmp_path / "x.png", ExpressionControls(eye_ratio=0.3), AnimationOptions())
    assert err.value.code == "landmarks_required"
    keyframes = [Keyframe(expression=ExpressionControls(lip_ratio=0.5), change=2)]
    with pytest.raises(EngineError) as err:
        editor.animate(source, tmp_path / "x.mp4", keyframes, AnimationOptions())
    assert err.value.code == "landmarks_required"
    video = tmp_path / "source.mp4"
    write_test_video(video, [cv2.resize(portrait(), (128, 128))] * 2, with_audio=False)
    with pytest.raises(EngineError) as err:
        Animator(engine).animate(
            AnimateRequest(
                video, video, tmp_path / "x.mp4", AnimationOptions(), expression=ExpressionControls(smile=1.0)
            )
        )
    assert err.value.code == "unsupported_input"
    with pytest.raises(EngineError) as err:
        Animator(engine).animate(
            AnimateRequest(
                source,
                video,
                tmp_path / "x.mp4",
                AnimationOptions(flag_relative_motion=False),
                expression=ExpressionControls(smile=1.0),
            )
        )
    assert err.value.code == "invalid_options"
