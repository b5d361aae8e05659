"""The licence-clean stack: face boxes seeding LivePortrait's 203-point model, refined, tracked.

The 203-point model here is generated with ``landmark.onnx``'s signature and a known mapping: it
finds the pixels where red exceeds blue by more than 0.2 in its crop (a red disk, or skin), and
puts a face-like 203-point template on their centroid, sized by their spread (a uniform disk of
radius r gets the template scaled by r). Like a real landmark model it answers to the image, not
to the crop, so seeding from a rough box, refining and tracking can all be checked for where the
points land.
"""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from onnx import helper

from common.options import AnimationOptions
from engines.demo import PORTRAIT, portrait, write_demo_inputs
from engines.download import MODEL_FILES, download_bundle
from engines.engine import Engine
from engines.face.crop import crop_box_from_landmarks, crop_transform
from engines.face.detection import (
    HAAR_CASCADE,
    INSIGHTFACE_FILES,
    LANDMARK203_FILE,
    BoxFraming,
    choose_stack,
    load_analyzer,
    official_model_paths,
)
from engines.face.detection.haar import HaarAnalyzer
from engines.face.detection.landmarks import InsightFaceAnalyzer, Landmark203
from engines.face.detection.scrfd import SCRFD
from engines.face.detection.seeded import BoxSeededAnalyzer, is_lost, spread
from engines.face.ratios import eye_open_ratio, lip_open_ratio
from engines.request import AnimateRequest
from engines.source import EngineError, crop_source
from engines.weights import WeightsError, check_bundle, write_synthetic_bundle
from liveportrait.cli import main
from tests.engines.face.test_detection import (
    Q203,
    _const,
    expected_scrfd,
    make_106,
    make_203,
    make_scrfd,
    save_203,
)
from tests.engines.factory import cpu_animator

RED_OVER_BLUE = 0.2


def ring(n: int, center: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """``n`` points on an ellipse, the first on its +x end, going towards +y (down)."""
    angle = 2 * np.pi * np.arange(n) / n
    return np.stack([center[0] + axes[0] * np.cos(angle), center[1] + axes[1] * np.sin(angle)], axis=1)


# A face in units of its radius (y down), with the points that the crop and the ratios read where
# LivePortrait's layout has them: eye rings 0-23 and 24-47 (corners 0/12 and 24/36, lids 6/18 and
# 30/42), outer lip ring 48-83 (corners 48/66), inner lip ring 84-107 (lids 90/102), then a contour.
TEMPLATE = np.concatenate(
    [
        ring(24, (-0.35, -0.25), (0.16, 0.06)),
        ring(24, (0.35, -0.25), (0.16, 0.06)),
        ring(36, (0.0, 0.45), (0.32, 0.10)),
        ring(24, (0.0, 0.45), (0.24, 0.04)),
        ring(95, (0.0, 0.1), (1.0, 1.05)),
    ]
).astype(np.float32)
EYE_RATIO = 0.12 / 0.32
LIP_RATIO = 0.08 / 0.64


def make_face_203(path: Path) -> Path:
    """landmark.onnx signature (``input`` 1x3x224x224 RGB in [0, 1], third output (1, 406) in [0, 1]
    crop units): w = relu(R - B - 0.2); points = centroid(w) + sqrt(2 * var(w)) * TEMPLATE."""
    size = 224
    grid_y, grid_x = np.mgrid[:size, :size].astype(np.float32) / size
    nodes = [
        _const("r0", np.array([0], np.int64)),
        _const("r1", np.array([1], np.int64)),
        _const("b0", np.array([2], np.int64)),
        _const("b1", np.array([3], np.int64)),
        _const("axis", np.array([1], np.int64)),
        _const("theta", np.array(RED_OVER_BLUE, np.float32)),
        _const("eps", np.array(1e-9, np.float32)),
        _const("two", np.array(2.0, np.float32)),
        _const("gx", grid_x[None, None]),
        _const("gy", grid_y[None, None]),
        _const("template", TEMPLATE),
        _const("shape11", np.array([1, 1], np.int64)),
        _const("shape406", np.array([1, 406], np.int64)),
        helper.make_node("Slice", ["input", "r0", "r1", "axis"], ["red"]),
        helper.make_node("Slice", ["input", "b0", "b1", "axis"], ["blue"]),
        helper.make_node("Sub", ["red", "blue"], ["diff"]),
        helper.make_node("Sub", ["diff", "theta"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["w"]),
        helper.make_node("ReduceSum", ["w"], ["mass"], keepdims=1),
        helper.make_node("Add", ["mass", "eps"], ["mass_eps"]),
    ]
    for axis, grid in (("x", "gx"), ("y", "gy")):
        nodes += [
            helper.make_node("Mul", ["w", grid], [f"w{axis}"]),
            helper.make_node("ReduceSum", [f"w{axis}"], [f"sum{axis}"], keepdims=1),
            helper.make_node("Div", [f"sum{axis}", "mass_eps"], [f"c{axis}"]),
            helper.make_node("Sub", [grid, f"c{axis}"], [f"d{axis}"]),
            helper.make_node("Mul", [f"d{axis}", f"d{axis}"], [f"sq{axis}"]),
            helper.make_node("Reshape", [f"c{axis}", "shape11"], [f"c{axis}11"]),
        ]
    nodes += [
        helper.make_node("Add", ["sqx", "sqy"], ["sq"]),
        helper.make_node("Mul", ["w", "sq"], ["wsq"]),
        helper.make_node("ReduceSum", ["wsq"], ["sumsq"], keepdims=1),
        helper.make_node("Div", ["sumsq", "mass_eps"], ["var"]),
        helper.make_node("Mul", ["var", "two"], ["var2"]),
        helper.make_node("Sqrt", ["var2"], ["radius"]),
        helper.make_node("Reshape", ["radius", "shape11"], ["radius11"]),
        helper.make_node("Concat", ["cx11", "cy11"], ["center"], axis=1),
        helper.make_node("Mul", ["template", "radius11"], ["scaled"]),
        helper.make_node("Add", ["scaled", "center"], ["points"]),
        helper.make_node("Reshape", ["points", "shape406"], ["out2"]),
        helper.make_node("Concat", ["cx11", "cy11"], ["out0"], axis=1),
        helper.make_node("Identity", ["radius11"], ["out1"]),
    ]
    return save_203(nodes, path, size)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny SCRFD (boxes of red squares, see test_detection) and both generated 203-point models."""
    root = tmp_path_factory.mktemp("models")
    return {
        "scrfd": make_scrfd(root / "scrfd.onnx"),
        "face203": make_face_203(root / "face203.onnx"),
        "const203": make_203(root / "const203.onnx"),
    }


def disk(center: tuple[int, int], radius: int, rgb: tuple[int, int, int], shape=(512, 512)) -> np.ndarray:
    image = np.zeros((*shape, 3), np.uint8)
    cv2.circle(image, center, radius, rgb, thickness=-1)
    return image


def face_at(center: tuple[float, float], radius: float) -> np.ndarray:
    """Where the generated model puts the 203 points of an upright disk face."""
    return np.asarray(center) + radius * TEMPLATE


# --- the generated model and the seed crop -------------------------------------------------------


def test_the_generated_model_answers_to_the_image_not_to_the_crop(models: dict[str, Path]) -> None:
    lmk = Landmark203(models["face203"])
    image = disk((250, 230), 40, (255, 0, 0))
    for box in ([200, 180, 300, 280], [150, 150, 330, 330], [220, 160, 320, 300]):
        pts = lmk.run_box(image, np.array(box, np.float32), BoxFraming(1.5, 0.0))
        np.testing.assert_allclose(pts, face_at((250, 230), 40), atol=1.0)
    ratios = eye_open_ratio(pts[None])[0], lip_open_ratio(pts[None])[0]
    np.testing.assert_allclose(np.concatenate(ratios), [EYE_RATIO, EYE_RATIO, LIP_RATIO], rtol=0.05)


def test_the_seed_crop_is_the_framed_detector_box(models: dict[str, Path]) -> None:
    lmk = Landmark203(models["const203"])  # outputs Q203 whatever it sees: the crop alone maps it
    box = np.array([100, 60, 180, 160], np.float32)
    pts = lmk.run_box(np.zeros((300, 400, 3), np.uint8), box, BoxFraming(scale=1.5, vy_ratio=0.05))
    side = 1.5 * 100  # the longer box side, scaled
    center = np.array([140, 110 + 0.05 * side])  # the box centre, moved down by vy_ratio * side
    np.testing.assert_allclose(pts, center + (Q203 - 0.5) * side, atol=1e-3)


# --- seeding, refinement and tracking ------------------------------------------------------------


def test_an_off_centre_box_is_refined_onto_the_face(models: dict[str, Path]) -> None:
    scrfd = SCRFD(models["scrfd"])
    analyzer = BoxSeededAnalyzer(scrfd, Landmark203(models["face203"]), BoxFraming(1.5, 0.0))
    image = disk((240, 240), 40, (255, 0, 0))  # fills the tiny SCRFD's stride-32 cell (7, 7)
    face = analyzer.landmarks(image)
    assert face is not None and face.lmk203 is not None
    box, _ = expected_scrfd(7, 7, 32, 1.0)  # 128 x 192, centred 16 px right and below the disk
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    np.testing.assert_allclose(face.lmk203, face_at((240, 240), 40), atol=1.0)
    seeded = analyzer.lmk203.run_box(image, face.box, analyzer.framing)
    np.testing.assert_allclose(face.lmk203, analyzer.lmk203.run(image, seeded), atol=1e-4)
    assert analyzer.detect(image)[0].lmk203 is not None


def test_refinement_runs_the_model_again_on_its_own_points(models: dict[str, Path]) -> None:
    image = portrait()
    lmk = Landmark203(models["const203"])
    framing = BoxFraming(1.5, 0.05)
    (box,) = [f.box for f in HaarAnalyzer().detect(image)]
    seeded = lmk.run_box(image, box, framing)

    def refined(passes: int) -> np.ndarray:
        face = BoxSeededAnalyzer(HaarAnalyzer(), lmk, framing, refine_passes=passes).landmarks(image)
        assert face is not None and face.lmk203 is not None
        return face.lmk203

    once = refined(1)
    np.testing.assert_allclose(refined(0), seeded, atol=1e-4)
    np.testing.assert_allclose(once, lmk.run(image, seeded), atol=1e-4)
    np.testing.assert_allclose(refined(2), lmk.run(image, lmk.run(image, seeded)), atol=1e-4)
    assert np.abs(once - seeded).max() > 5  # the refined crop is not the seed crop


def test_tracking_follows_the_face_and_detects_again_when_it_is_lost(models: dict[str, Path]) -> None:
    scrfd = SCRFD(models["scrfd"])
    analyzer = BoxSeededAnalyzer(scrfd, Landmark203(models["face203"]), BoxFraming(1.5, 0.0))
    face = analyzer.landmarks(disk((240, 240), 40, (255, 0, 0)))
    assert face is not None
    for step in range(1, 4):  # a dim disk the detector cannot see moves 8 px right, 4 px down a frame
        center = (240 + 8 * step, 240 + 4 * step)
        frame = disk(center, 40, (140, 0, 0))
        assert scrfd.detect(frame) == []
        face = analyzer.landmarks(frame, prev=face)
        assert face is not None and face.lmk203 is not None
        np.testing.assert_allclose(face.lmk203, face_at(center, 40), atol=1.0)
        np.testing.assert_allclose(face.box, [*face.lmk203.min(axis=0), *face.lmk203.max(axis=0)])

    blank = np.zeros((512, 512, 3), np.uint8)  # the face is gone and nothing is found: keep the last
    assert analyzer.landmarks(blank, prev=face) is face
    elsewhere = disk((400, 112), 40, (255, 0, 0))  # stride-32 cell (12, 3), out of the tracked crop
    found = analyzer.landmarks(elsewhere, prev=face)
    assert found is not None and found is not face and found.lmk203 is not None
    np.testing.assert_allclose(found.lmk203, face_at((400, 112), 40), atol=1.0)
    np.testing.assert_allclose(found.box, expected_scrfd(12, 3, 32, 1.0)[0], atol=1e-3)
    assert analyzer.landmarks(blank) is None


def test_lost_means_off_frame_degenerate_or_a_jump_in_size() -> None:
    face = face_at((100, 100), 30)
    assert not is_lost(face, (200, 200))
    assert not is_lost(face, (200, 200), prev=face_at((104, 98), 40))
    assert is_lost(face + np.array([150, 0]), (200, 200))  # most points right of the frame
    assert is_lost(np.full((203, 2), 100.0), (200, 200))  # collapsed to a point
    assert is_lost(face, (200, 200), prev=face_at((100, 100), 70))  # spread halved in one frame
    assert is_lost(face_at((100, 100), 70), (200, 200), prev=face)
    nan = face.copy()
    nan[5] = np.nan
    assert is_lost(nan, (200, 200))
    assert spread(face) == pytest.approx(30 * spread(TEMPLATE), rel=1e-5)


# --- the source crop and ratios come from the 203 points ------------------------------------------


def test_source_crop_and_ratios_come_from_the_203_points(models: dict[str, Path]) -> None:
    analyzer = BoxSeededAnalyzer(HaarAnalyzer(), Landmark203(models["face203"]), BoxFraming(1.5, 0.05))
    cpu = torch.device("cpu")
    engine = Engine(None, analyzer, cpu, "torch", "fp32")  # type: ignore[arg-type]  # no networks needed
    options = AnimationOptions()
    crop, face = crop_source(engine, portrait(), options)
    assert face is not None and face.lmk203 is not None and face.lmk106 is None
    box = crop_box_from_landmarks(face.lmk203, options.scale, options.vx_ratio, options.vy_ratio, True)
    np.testing.assert_allclose(crop.M_c2o, np.linalg.inv(crop_transform(box)), atol=1e-6)
    assert crop.eye_ratio is not None and crop.lip_ratio is not None
    np.testing.assert_allclose(crop.eye_ratio, [EYE_RATIO, EYE_RATIO], rtol=1e-3)
    np.testing.assert_allclose(crop.lip_ratio, [LIP_RATIO], rtol=1e-3)
    x1, y1, x2, y2 = HaarAnalyzer().detect(portrait())[0].box  # the points stay on the astronaut's face
    cx, cy = face.lmk203.mean(axis=0)
    assert x1 < cx < x2 and y1 < cy < y2


# --- choosing the stack --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landmark_only(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    """A synthetic bundle with LivePortrait's landmark.onnx (generated) and no InsightFace files."""
    root = write_synthetic_bundle(tmp_path_factory.mktemp("licence-clean"), seed=0)
    make_face_203(root / LANDMARK203_FILE)
    return root


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory, landmark_only: Path) -> Path:
    """The same checkpoints (linked) with all three official face models (generated)."""
    root = tmp_path_factory.mktemp("full")
    for folder in ("base_models", "retargeting_models"):
        (root / "liveportrait").mkdir(exist_ok=True)
        (root / "liveportrait" / folder).symlink_to(landmark_only / "liveportrait" / folder)
    paths = official_model_paths(root)
    make_scrfd(paths["detector"])
    make_106(paths["landmark106"])
    make_face_203(paths["landmark203"])
    return root


def test_auto_takes_licence_clean_when_only_landmark_onnx_is_there(
    landmark_only: Path, full_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="engines.face.detection"):
        analyzer = load_analyzer(landmark_only)
    assert isinstance(analyzer, BoxSeededAnalyzer) and analyzer.has_landmarks
    assert isinstance(analyzer.boxes, HaarAnalyzer)
    assert "licence-clean" in caplog.text and "LivePortrait, MIT" in caplog.text
    assert "commercial use allowed" in caplog.text
    assert isinstance(load_analyzer(full_bundle), InsightFaceAnalyzer)
    assert isinstance(load_analyzer(full_bundle, "licence-clean"), BoxSeededAnalyzer)
    assert isinstance(load_analyzer(full_bundle, "haar-box"), HaarAnalyzer)
    assert isinstance(load_analyzer(tmp_path), HaarAnalyzer)  # nothing but OpenCV: boxes only
    with pytest.raises(FileNotFoundError, match=r"landmark\.onnx"):
        load_analyzer(tmp_path, "licence-clean")
    with pytest.raises(FileNotFoundError, match=r"2d106det\.onnx"):
        load_analyzer(landmark_only, "insightface")
    with pytest.raises(ValueError, match="haar-box"):
        choose_stack(landmark_only, "haar")  # type: ignore[arg-type]
    assert choose_stack(None).models == (HAAR_CASCADE,)
    assert not choose_stack(full_bundle).commercial_use


def test_weights_check_names_the_stack_and_its_licences(
    landmark_only: Path, full_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = check_bundle(landmark_only)
    assert "liveportrait/landmark.onnx: present (LivePortrait, MIT)" in lines
    assert any(line.startswith("insightface/models/buffalo_l/det_10g.onnx: absent") for line in lines)
    assert "detector auto -> face stack licence-clean" in lines[-1] and "commercial use allowed" in lines[-1]
    assert "face stack insightface" in check_bundle(full_bundle)[-1]
    assert "NON-COMMERCIAL" in check_bundle(full_bundle)[-1]
    with pytest.raises(WeightsError, match="insightface"):
        check_bundle(landmark_only, "insightface")
    assert main(["weights", "check", str(full_bundle), "--detector", "haar-box"]) == 0
    out = capsys.readouterr().out
    assert "non-commercial research only" in out and "detector haar-box -> face stack haar-box" in out


def test_the_default_download_is_licence_clean(tmp_path: Path) -> None:
    hub = tmp_path / "hub" / "KwaiVGI" / "LivePortrait" / "resolve" / "main"
    for name in (*MODEL_FILES, *INSIGHTFACE_FILES.values()):
        (hub / name).parent.mkdir(parents=True, exist_ok=True)
        (hub / name).write_bytes(name.encode())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "hub"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        download_bundle(tmp_path / "weights", hub=base)
        assert (tmp_path / "weights" / LANDMARK203_FILE).is_file()
        assert not (tmp_path / "weights" / "insightface").exists()
        assert choose_stack(tmp_path / "weights").name == "licence-clean"
        download_bundle(tmp_path / "weights", hub=base, include_insightface=True)
        assert choose_stack(tmp_path / "weights").name == "insightface"
    finally:
        server.shutdown()
        server.server_close()


# --- jobs ----------------------------------------------------------------------------------------

RETARGETING = {"flag_eye_retargeting": True, "flag_lip_retargeting": True, "flag_normalize_lip": True}


def test_a_job_runs_eye_and_lip_retargeting_with_landmark_onnx_alone(
    landmark_only: Path, tmp_path: Path
) -> None:
    """The astronaut photo, Haar boxes, the generated 203-point model, synthetic F/M/W/G/S: 2 frames."""
    animator = cpu_animator(landmark_only)
    assert isinstance(animator.engine.analyzer, BoxSeededAnalyzer)
    _, driving = write_demo_inputs(tmp_path, n_frames=2)
    options = AnimationOptions(output_kind="crop", audio="none", **RETARGETING)
    template = animator.extract_motion(driving, options)
    assert template.c_eyes is not None and template.c_lip is not None  # driving ratios from 203 points
    np.testing.assert_allclose(template.c_eyes, EYE_RATIO, rtol=1e-3)
    result = animator.animate(AnimateRequest(PORTRAIT, driving, tmp_path / "out.mp4", options))
    assert (result.frames, result.width, result.height) == (2, 512, 512)


def test_a_job_with_the_haar_box_stack_still_refuses_landmark_options(
    landmark_only: Path, tmp_path: Path
) -> None:
    animator = cpu_animator(landmark_only, detector="haar-box")
    assert isinstance(animator.engine.analyzer, HaarAnalyzer)
    _, driving = write_demo_inputs(tmp_path, n_frames=1)
    for flag in RETARGETING:
        with pytest.raises(EngineError) as err:
            animator.animate(
                AnimateRequest(PORTRAIT, driving, tmp_path / "out.mp4", AnimationOptions(**{flag: True}))
            )
        assert err.value.code == "landmarks_required" and flag in err.value.message
