"""Face detection and landmarks: the Haar fallback on real photos, and the official ONNX stack's
pre/post-processing on tiny generated models with the official input/output signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper

from engines.face.crop import crop_box_from_landmarks
from engines.face.detection import (
    Face,
    FaceAnalyzer,
    LandmarksRequired,
    load_analyzer,
    official_model_paths,
    require_landmarks,
)
from engines.face.detection.haar import HaarAnalyzer
from engines.face.detection.landmarks import (
    InsightFaceAnalyzer,
    Landmark106,
    Landmark203,
    model_normalizes_input,
)
from engines.face.detection.scrfd import SCRFD, letterbox, nms

# --- tiny models -------------------------------------------------------------------------------

# Tiny SCRFD: the score at stride 8 / 16 / 32 is the normalised green / blue / red channel averaged
# over each stride x stride cell (so a coloured square in the image "is" a face at one anchor
# location, and the RGB order and normalisation are exercised); box and keypoint distances are
# constants per stride (in stride units).
STRIDE_CHANNEL = {8: 1, 16: 2, 32: 0}
BOX_DIST = {8: [2.0, 2.0, 2.0, 2.0], 16: [1.0, 1.0, 2.0, 2.0], 32: [1.0, 2.0, 3.0, 4.0]}
KPS_DIST = {s: [0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 1.0, 1.0] for s in (8, 16, 32)}
P106 = np.random.default_rng(106).uniform(-1, 1, (106, 2)).astype(np.float32)
Q203 = np.random.default_rng(203).uniform(0, 1, (203, 2)).astype(np.float32)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def _save(nodes: list, inputs: list, outputs: list, path: Path) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_scrfd(path: Path) -> Path:
    """det_10g signature: input ``input.1`` 1x3xHxW; outputs scores(8,16,32) (N,1), boxes (N,4),
    kps (N,10), N = (H/s)(W/s) * 2 anchors."""
    nodes = [_const("neg1", np.array([-1, 1], np.int64)), _const("zero", np.array(0.0, np.float32))]
    scores, boxes, kps = [], [], []
    for s, c in STRIDE_CHANNEL.items():
        nodes += [
            _const(f"st{s}", np.array([c], np.int64)),
            _const(f"en{s}", np.array([c + 1], np.int64)),
            _const(f"ax{s}", np.array([1], np.int64)),
            helper.make_node("Slice", ["input.1", f"st{s}", f"en{s}", f"ax{s}"], [f"ch{s}"]),
            helper.make_node("AveragePool", [f"ch{s}"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Reshape", [f"pool{s}", "neg1"], [f"col{s}"]),
            helper.make_node("Concat", [f"col{s}", f"col{s}"], [f"pair{s}"], axis=1),
            helper.make_node("Reshape", [f"pair{s}", "neg1"], [f"score{s}"]),
            helper.make_node("Mul", [f"score{s}", "zero"], [f"z{s}"]),
            _const(f"bd{s}", np.array([BOX_DIST[s]], np.float32)),
            _const(f"kd{s}", np.array([KPS_DIST[s]], np.float32)),
            helper.make_node("Add", [f"z{s}", f"bd{s}"], [f"bbox{s}"]),
            helper.make_node("Add", [f"z{s}", f"kd{s}"], [f"kps{s}"]),
        ]
        scores.append(helper.make_tensor_value_info(f"score{s}", TensorProto.FLOAT, [f"n{s}", 1]))
        boxes.append(helper.make_tensor_value_info(f"bbox{s}", TensorProto.FLOAT, [f"n{s}", 4]))
        kps.append(helper.make_tensor_value_info(f"kps{s}", TensorProto.FLOAT, [f"n{s}", 10]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    return _save(nodes, [inp], scores + boxes + kps, path)


def make_106(path: Path) -> Path:
    """2d106det signature: ``data`` 1x3x192x192 -> ``fc1`` (1, 212) = P106 (input normalised in-graph)."""
    nodes = [
        _const("m", np.array(0.0, np.float32)),
        helper.make_node("Sub", ["data", "m"], ["sub"], name="Sub_0"),
        _const("k", np.array(0.0, np.float32)),
        helper.make_node("Mul", ["sub", "k"], ["mul"], name="Mul_1"),
        helper.make_node("ReduceMean", ["mul"], ["mean"], keepdims=0),
        _const("pts", P106.reshape(1, 212)),
        helper.make_node("Add", ["pts", "mean"], ["fc1"]),
    ]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])
    return _save(nodes, [inp], [out], path)


def make_203(path: Path) -> Path:
    """landmark.onnx signature: ``input`` 1x3x224x224 -> three outputs, the third (1, 406) = Q203."""
    nodes = [
        _const("a", np.zeros((1, 2), np.float32)),
        _const("b", np.zeros((1, 1), np.float32)),
        _const("c", Q203.reshape(1, 406)),
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Add", ["a", "mean"], ["out0"]),
        helper.make_node("Add", ["b", "mean"], ["out1"]),
        helper.make_node("Identity", ["c"], ["out2"]),
    ]
    return save_203(nodes, path, 224)


def save_203(nodes: list, path: Path, size: int) -> Path:
    """A model with landmark.onnx's signature: (1, 3, size, size) in; out0 (1, 2), out1 (1, 1) and the
    203 points out2 (1, 406)."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    outs = [
        helper.make_tensor_value_info("out0", TensorProto.FLOAT, [1, 2]),
        helper.make_tensor_value_info("out1", TensorProto.FLOAT, [1, 1]),
        helper.make_tensor_value_info("out2", TensorProto.FLOAT, [1, 406]),
    ]
    return _save(nodes, [inp], outs, path)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights directory holding the three tiny models in the official layout."""
    root = tmp_path_factory.mktemp("weights")
    paths = official_model_paths(root)
    make_scrfd(paths["detector"])
    make_106(paths["landmark106"])
    make_203(paths["landmark203"])
    return root


def square(image: np.ndarray, x: int, y: int, side: int, rgb: tuple[int, int, int]) -> None:
    image[y : y + side, x : x + side] = rgb


# --- Haar ----------------------------------------------------------------------------------------

ASTRONAUT_FACE = np.array([180, 60, 270, 165])  # by eye: hairline to chin, cheek to cheek


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area)


def test_haar_finds_the_astronaut() -> None:
    faces = HaarAnalyzer().detect(skimage.data.astronaut())
    assert len(faces) == 1
    (face,) = faces
    assert face.box.shape == (4,) and face.kps5 is None and face.lmk106 is None and face.lmk203 is None
    x1, y1, x2, y2 = face.box
    assert x1 < 222 < x2 and y1 < 115 < y2  # nose tip
    assert iou(face.box, ASTRONAUT_FACE) > 0.6


@pytest.mark.parametrize(
    "image",
    [np.full((240, 320, 3), 128, np.uint8), skimage.data.coffee(), skimage.data.chelsea()],
    ids=["grey", "coffee", "cat"],
)
def test_haar_finds_nothing_without_a_face(image: np.ndarray) -> None:
    assert HaarAnalyzer().detect(image) == []


def test_haar_tracking_follows_the_previous_box_and_holds_it_without_a_face() -> None:
    haar = HaarAnalyzer()
    first = haar.landmarks(skimage.data.astronaut())
    assert first is not None
    assert haar.landmarks(np.full((64, 64, 3), 128, np.uint8)) is None
    assert haar.landmarks(np.full((512, 512, 3), 128, np.uint8), prev=first) is first
    again = haar.landmarks(skimage.data.astronaut(), prev=first)
    assert again is not None and np.allclose(again.box, first.box)


def test_haar_tracking_searches_only_sizes_near_the_previous_face() -> None:
    """A face followed from a box of about its size is found; from a box of a third of its side or of
    three times it, it is out of the sizes searched: the tracker holds `prev` (lost, for its caller)."""
    haar = HaarAnalyzer()
    image = skimage.data.astronaut()
    first = haar.landmarks(image)
    assert first is not None
    centre = (first.box[:2] + first.box[2:]) / 2
    for factor, found in ((1.2, True), (1 / 3, False), (3.0, False)):
        half = (first.box[2:] - first.box[:2]) * factor / 2
        prev = Face(box=np.concatenate([centre - half, centre + half]).astype(np.float32), score=1.0)
        face = haar.landmarks(image, prev=prev)
        assert face is not None and (face is not prev) == found, factor
        assert face is prev or iou(face.box, first.box) > 0.7


def test_landmark_options_refuse_with_the_haar_detector() -> None:
    haar = HaarAnalyzer()
    assert not haar.has_landmarks and isinstance(haar, FaceAnalyzer)
    with pytest.raises(LandmarksRequired, match="eye retargeting") as err:
        require_landmarks(haar, "eye retargeting")
    assert "landmark.onnx" in str(err.value) and "2d106det.onnx" in str(err.value)
    assert err.value.option == "eye retargeting"


def test_haar_rejects_non_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        HaarAnalyzer().detect(np.zeros((32, 32), np.uint8))


# --- SCRFD ---------------------------------------------------------------------------------------


def test_letterbox_keeps_aspect_top_left() -> None:
    tall = np.full((600, 300, 3), 200, np.uint8)
    canvas, scale = letterbox(tall, 512, 512)
    assert canvas.shape == (512, 512, 3) and scale == pytest.approx(512 / 600)
    assert (canvas[:, :256] == 200).all() and (canvas[:, 256:] == 0).all()
    wide = np.full((480, 640, 3), 200, np.uint8)
    canvas, scale = letterbox(wide, 512, 512)
    assert scale == pytest.approx(0.8)
    assert (canvas[:384] == 200).all() and (canvas[384:] == 0).all()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 100, 100], [10, 0, 110, 100], [200, 200, 250, 250], [0, 0, 100, 100]], float)
    scores = np.array([0.5, 0.9, 0.7, 0.4])
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 2, 0]


def expected_scrfd(cell_x: int, cell_y: int, stride: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Box and keypoints (image pixels) the tiny SCRFD gives for a face at canvas cell (x, y)."""
    cx, cy = cell_x * stride, cell_y * stride
    left, top, right, bottom = np.array(BOX_DIST[stride]) * stride
    box = np.array([cx - left, cy - top, cx + right, cy + bottom]) / scale
    kps = (np.array([cx, cy]) + np.array(KPS_DIST[stride]).reshape(5, 2) * stride) / scale
    return box, kps


def test_scrfd_decodes_boxes_keypoints_and_suppresses_duplicates(weights_dir: Path) -> None:
    det = SCRFD(official_model_paths(weights_dir)["detector"])
    image = np.zeros((480, 640, 3), np.uint8)  # letterboxed at scale 0.8: canvas cell c <-> c / 0.8
    square(image, 200, 120, 40, (255, 0, 0))  # stride-32 cell (5, 3)
    square(image, 240, 120, 40, (200, 0, 0))  # next cell: weaker, overlaps (IoU 0.6) -> suppressed
    square(image, 500, 380, 20, (0, 0, 255))  # stride-16 cell (25, 19)
    square(image, 100, 400, 10, (0, 255, 0))  # stride-8 cell (10, 40)
    square(image, 520, 40, 40, (140, 0, 0))  # score 0.1 < threshold 0.15 -> not a face
    faces = det.detect(image)
    assert [f.box.shape for f in faces] == [(4,)] * 3
    for face, (x, y, stride) in zip(faces, [(5, 3, 32), (25, 19, 16), (10, 40, 8)], strict=True):
        assert face.kps5 is not None and face.kps5.shape == (5, 2)
        box, kps = expected_scrfd(x, y, stride, 0.8)
        np.testing.assert_allclose(face.box, box, atol=1e-3)
        np.testing.assert_allclose(face.kps5, kps, atol=1e-3)
        assert face.score > 0.9
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


def test_scrfd_needs_rgb_order_and_threshold(weights_dir: Path) -> None:
    path = official_model_paths(weights_dir)["detector"]
    image = np.zeros((512, 512, 3), np.uint8)
    square(image, 64, 64, 16, (0, 0, 255))  # blue is stride 16 here; swapped to BGR it would be 32
    (face,) = SCRFD(path).detect(image)
    np.testing.assert_allclose(face.box, expected_scrfd(4, 4, 16, 1.0)[0], atol=1e-3)
    square(image, 64, 64, 32, (150, 0, 0))  # red: score (150 - 127.5) / 128 = 0.176
    assert len(SCRFD(path).detect(image)) == 1
    assert SCRFD(path, score_threshold=0.2).detect(image) == []


# --- landmarks -----------------------------------------------------------------------------------


def test_model_normalisation_convention(weights_dir: Path) -> None:
    paths = official_model_paths(weights_dir)
    assert model_normalizes_input(paths["landmark106"])
    assert not model_normalizes_input(paths["detector"])


def test_106_points_map_back_to_the_image(weights_dir: Path) -> None:
    lmk = Landmark106(official_model_paths(weights_dir)["landmark106"])
    assert (lmk.size, lmk.mean, lmk.std) == (192, 0.0, 1.0)
    image = np.zeros((300, 400, 3), np.uint8)
    pts = lmk.run(image, np.array([100, 50, 180, 150], np.float32))
    # crop side = 1.5 * max(80, 100) = 150 around (140, 100); [-1, 1] spans the crop
    np.testing.assert_allclose(pts, np.array([140, 100]) + P106 * 75, atol=1e-3)


def test_203_points_map_back_through_the_landmark_crop(weights_dir: Path) -> None:
    lmk = Landmark203(official_model_paths(weights_dir)["landmark203"])
    rng = np.random.default_rng(0)
    seed = rng.uniform([120, 80], [260, 260], (106, 2))
    pts = lmk.run(np.zeros((360, 480, 3), np.uint8), seed)
    box = crop_box_from_landmarks(seed, scale=1.5, vy_ratio=-0.1, rotate=True)
    u_x = np.array([np.cos(box.angle), np.sin(box.angle)])
    u_y = np.array([-u_x[1], u_x[0]])
    expected = box.center + ((Q203 - 0.5) * box.size) @ np.stack([u_x, u_y])
    np.testing.assert_allclose(pts, expected, atol=1e-3)


# --- the official stack and load_analyzer --------------------------------------------------------


def test_insightface_analyzer_follows_the_official_flow(weights_dir: Path) -> None:
    analyzer = load_analyzer(weights_dir)
    assert isinstance(analyzer, InsightFaceAnalyzer) and analyzer.has_landmarks
    require_landmarks(analyzer, "eye retargeting")
    image = np.zeros((480, 640, 3), np.uint8)
    square(image, 200, 120, 40, (255, 0, 0))
    face = analyzer.landmarks(image)
    assert isinstance(face, Face)
    assert face.kps5 is not None and face.lmk106 is not None and face.lmk203 is not None
    box, kps = expected_scrfd(5, 3, 32, 0.8)
    np.testing.assert_allclose(face.box, box, atol=1e-3)
    np.testing.assert_allclose(face.kps5, kps, atol=1e-3)
    side = 1.5 * max(box[2] - box[0], box[3] - box[1])
    center = (box[:2] + box[2:]) / 2
    np.testing.assert_allclose(face.lmk106, center + P106 * side / 2, atol=1e-3)
    np.testing.assert_allclose(face.lmk203, analyzer.lmk203.run(image, face.lmk106), atol=1e-4)

    tracked = analyzer.landmarks(image, prev=face)
    assert tracked is not None and tracked.lmk106 is None and tracked.lmk203 is not None
    np.testing.assert_allclose(tracked.lmk203, analyzer.lmk203.run(image, face.lmk203), atol=1e-4)
    np.testing.assert_allclose(tracked.box[:2], tracked.lmk203.min(axis=0))
    assert analyzer.landmarks(np.zeros((480, 640, 3), np.uint8)) is None


def test_load_analyzer_choice(weights_dir: Path, tmp_path: Path) -> None:
    assert isinstance(load_analyzer(None), HaarAnalyzer)
    assert isinstance(load_analyzer(tmp_path), HaarAnalyzer)
    assert isinstance(load_analyzer(weights_dir, prefer="haar-box"), HaarAnalyzer)
    assert isinstance(load_analyzer(weights_dir, prefer="insightface"), InsightFaceAnalyzer)
    with pytest.raises(FileNotFoundError, match=r"det_10g\.onnx"):
        load_analyzer(tmp_path, prefer="insightface")
    with pytest.raises(ValueError, match="unknown detector"):
        load_analyzer(weights_dir, prefer="dlib")  # type: ignore[arg-type]
