"""Several faces of one source (the `faces` option): detection, selection, render, compose, edits.

The picture is the bundled portrait and its mirror image side by side (engines.demo.group_portrait):
two real faces, which the Haar cascade finds. Face 0 is the left one; the mirrored one on the right
is a little larger, so `largest` is face 1. W + G run on synthetic weights on the CPU, where each
crop costs seconds: the rendered checks share a few stills; video checks use a stand-in render.
"""

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from common.expression import ExpressionControls, Keyframe
from common.options import AnimationOptions
from engines.demo import group_portrait, head_motion_frames, portrait
from engines.editor import Editor
from engines.face.pasteback import warp_mask
from engines.media import read_image, write_image, write_test_video
from engines.pipeline import Animator
from engines.request import AnimateRequest
from engines.source import EngineError, crop_faces
from engines.weights import write_synthetic_bundle
from liveportrait.cli import main
from tests.engines.factory import cpu_animator
from tests.engines.test_pipeline import stand_in_render

CHANGED = 5.0
"""Mean absolute difference (0-255) above which a face region counts as animated."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_bundle(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "two.png"
    write_image(path, group_portrait(2, 256))
    return path


@pytest.fixture(scope="module")
def driving_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driving") / "driving.png"
    write_image(path, list(head_motion_frames(portrait(), 4))[1])
    return path


@pytest.fixture(scope="module")
def animator(weights: Path) -> Animator:
    """The real (synthetic) networks; frame batch 2, so that both faces render in one W+G batch."""
    return cpu_animator(weights, detector="haar-box", frame_batch=2)


@pytest.fixture
def stand_in(weights: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Animator]:
    """Animators whose W + G is the stand-in of test_pipeline (stripes following x_d): for checks of
    frames, batches and compose that need no real render."""

    def build(**config: object) -> Animator:
        animator = cpu_animator(weights, detector="haar-box", **{"frame_batch": 4, **config})
        monkeypatch.setattr(animator.engine.model, "render", stand_in_render)
        return animator

    return build


def face_regions(animator: Animator, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) bool masks where the left and the right face's crops are pasted back."""
    left, right = crop_faces(animator.engine, read_image(source), AnimationOptions(faces="all"))
    return tuple(warp_mask(c.M_c2o, c.frame.shape[:2])[..., 0] > 0 for c in (left, right))  # type: ignore[return-value]


def change(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute difference of two frames inside a region."""
    return float(np.abs(a[region].astype(int) - b[region].astype(int)).mean())


@pytest.fixture(scope="module")
def stills(
    animator: Animator, two_faces: Path, driving_image: Path, tmp_path_factory
) -> dict[str, np.ndarray]:
    """The source, and the PNG a driving image makes of it with faces largest, all and 0."""
    folder = tmp_path_factory.mktemp("stills")
    out = {"source": read_image(two_faces)}
    for faces in ("largest", "all", "0"):
        request = AnimateRequest(
            two_faces, driving_image, folder / f"{faces}.mp4", AnimationOptions(faces=faces)
        )
        out[faces] = read_image(animator.animate(request).output)
    return out


def test_haar_finds_both_faces_indexed_left_to_right(animator: Animator, two_faces: Path) -> None:
    frame = read_image(two_faces)
    assert len(animator.engine.analyzer.faces(frame)) == 2
    left, right = crop_faces(animator.engine, frame, AnimationOptions(faces="all"))
    centre = np.array([256.0, 256.0, 1.0])
    assert (left.M_c2o @ centre)[0] < 256 < (right.M_c2o @ centre)[0]
    assert left.frame is right.frame
    [largest] = crop_faces(animator.engine, frame, AnimationOptions())
    [one] = crop_faces(animator.engine, frame, AnimationOptions(faces=[1]))
    [zero] = crop_faces(animator.engine, frame, AnimationOptions(faces="0"))
    np.testing.assert_array_equal(one.M_c2o, largest.M_c2o)
    np.testing.assert_array_equal(one.M_c2o, right.M_c2o)
    np.testing.assert_array_equal(zero.M_c2o, left.M_c2o)


def test_all_animates_both_faces_and_keeps_the_rest_of_the_source(animator, two_faces, stills) -> None:
    left, right = face_regions(animator, two_faces)
    assert not (left & right).any()
    source, out = stills["source"], stills["all"]
    assert out.shape == source.shape
    assert change(out, source, left) > CHANGED and change(out, source, right) > CHANGED
    np.testing.assert_array_equal(out[~(left | right)], source[~(left | right)])


@pytest.mark.parametrize(("faces", "animated"), [("largest", "right"), ("0", "left")])
def test_one_face_animates_only_that_face(animator, two_faces, stills, faces: str, animated: str) -> None:
    regions = dict(zip(("left", "right"), face_regions(animator, two_faces), strict=True))
    source, out = stills["source"], stills[faces]
    assert change(out, source, regions[animated]) > CHANGED
    np.testing.assert_array_equal(out[~regions[animated]], source[~regions[animated]])


def test_each_face_of_the_batch_renders_as_it_does_alone(animator, two_faces, stills) -> None:
    """The two faces in one W+G batch give each face's render alone (up to batch rounding)."""
    left, right = face_regions(animator, two_faces)
    together = stills["all"].astype(int)
    assert np.abs(together[left] - stills["0"][left].astype(int)).max() <= 2
    assert np.abs(together[right] - stills["largest"][right].astype(int)).max() <= 2


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        assert rate is not None
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)], float(rate)


@pytest.fixture(scope="module")
def driving_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("driving") / "driving.mp4"
    write_test_video(path, head_motion_frames(portrait(), 3), fps=10.0, with_audio=False)
    return path


def test_frame_count_and_fps_are_those_of_one_face(tmp_path, stand_in, two_faces, driving_video) -> None:
    animator = stand_in()
    videos = {}
    for faces in ("largest", "all"):
        result = animator.animate(
            AnimateRequest(two_faces, driving_video, tmp_path / f"{faces}.mp4", AnimationOptions(faces=faces))
        )
        assert (result.frames, result.fps, result.width, result.height) == (3, 10.0, 512, 256)
        videos[faces] = read_video(result.output)
    assert [(len(frames), fps) for frames, fps in videos.values()] == [(3, 10.0), (3, 10.0)]


def test_paste_back_of_several_faces_on_the_device_gives_the_host_frames(
    tmp_path, stand_in, two_faces, driving_video
) -> None:
    """compose_on_device is the CUDA default; torch runs the same code on the CPU here (frame batch 4:
    two frames of two faces a batch)."""
    options = AnimationOptions(faces="all")
    outputs = [
        read_video(
            stand_in(compose_on_device=on_device)
            .animate(AnimateRequest(two_faces, driving_video, tmp_path / f"{on_device}.mp4", options))
            .output
        )[0]
        for on_device in (False, True)
    ]
    assert len(outputs[0]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


def test_a_video_source_keeps_its_largest_face(tmp_path, stand_in, driving_video) -> None:
    source = tmp_path / "two.mp4"
    write_test_video(source, [group_portrait(2, 256)] * 3, fps=10.0, with_audio=False)
    animator = stand_in()
    outputs = [
        read_video(
            animator.animate(
                AnimateRequest(
                    source, driving_video, tmp_path / f"{faces}.mp4", AnimationOptions(faces=faces)
                )
            ).output
        )[0]
        for faces in ("largest", "all")
    ]
    assert len(outputs[0]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


@pytest.mark.parametrize(("output_kind", "width"), [("crop", 2 * 512), ("side_by_side", 5 * 512)])
def test_crop_outputs_tile_the_faces_left_to_right(
    tmp_path, stand_in, two_faces, driving_image, output_kind: str, width: int
) -> None:
    options = AnimationOptions(faces="all", output_kind=output_kind)
    result = stand_in().animate(AnimateRequest(two_faces, driving_image, tmp_path / "out.mp4", options))
    assert (result.width, result.height) == (width, 512)


def test_a_face_index_beyond_the_faces_found_is_face_not_found(animator, two_faces) -> None:
    with pytest.raises(EngineError) as err:
        crop_faces(animator.engine, read_image(two_faces), AnimationOptions(faces=[0, 2]))
    assert err.value.code == "face_not_found"
    assert "face 2" in err.value.message and "2 faces" in err.value.message


@pytest.mark.parametrize("faces", ["largest", "all", "1"])
def test_faces_below_min_face_size_are_left_out(animator, two_faces, faces: str) -> None:
    frame = read_image(two_faces)
    kept = crop_faces(animator.engine, frame, AnimationOptions(faces=faces, min_face_size=0.15))
    assert len(kept) == (2 if faces == "all" else 1)
    with pytest.raises(EngineError) as err:  # the faces are ~53 pixels: 0.25 x 256 is 64
        crop_faces(animator.engine, frame, AnimationOptions(faces=faces, min_face_size=0.25))
    assert err.value.code == "no_face"


def test_cli_names_a_missing_face(tmp_path, weights, two_faces, driving_image, capsys) -> None:
    args = ["animate", str(two_faces), str(driving_image), "-o", str(tmp_path / "out.png"), "--weights"]
    args += [str(weights), "--device", "cpu", "--detector", "haar-box"]
    assert main([*args, "--faces", "3"]) != 0
    assert "error [face_not_found]" in capsys.readouterr().err
    assert main([*args, "--faces", "left"]) != 0
    assert "faces" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.fixture
def editor(stand_in: Callable[..., Animator]) -> Editor:
    return Editor(stand_in().engine)


@pytest.mark.parametrize(("faces", "animated"), [("all", ("left", "right")), ("0", ("left",))])
def test_an_edit_targets_one_face_or_all(tmp_path, editor, animator, two_faces, faces, animated) -> None:
    regions = dict(zip(("left", "right"), face_regions(animator, two_faces), strict=True))
    source = read_image(two_faces)
    result = editor.still(
        two_faces, tmp_path / "still.png", ExpressionControls(smile=0.8), AnimationOptions(faces=faces)
    )
    out = read_image(result.output)
    edited = np.zeros(source.shape[:2], bool)
    for name in animated:
        assert change(out, source, regions[name]) > CHANGED
        edited |= regions[name]
    np.testing.assert_array_equal(out[~edited], source[~edited])


def test_keyframes_animate_every_face_for_the_keyframes_frames(tmp_path, editor, two_faces) -> None:
    keyframes = [Keyframe(expression=ExpressionControls(smile=0.8), change=2, keep=1)]
    result = editor.animate(two_faces, tmp_path / "keys.mp4", keyframes, AnimationOptions(faces="all"))
    frames, fps = read_video(result.output)
    assert (result.frames, len(frames), fps) == (3, 3, 25.0)
