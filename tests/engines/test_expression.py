"""The expression editor against the official panel's golden outputs (`pytest -k edit_golden`), and its math.

The golden file is tests/data/golden_edit_seed0.npz or the file named by LIVEPORTRAIT_GOLDEN_EDIT;
weights are generated with the seed stored in it. Tolerances are the oracle README's: 1e-4 relative
L2 on keypoints, 1 grey level (and 1e-3 relative L2) on frames.
"""

import cv2
import numpy as np
import pytest
import torch

from common.expression import ALIASES, ExpressionControls
from common.options import AnimationOptions
from engines.editor import Editor
from engines.engine import Engine
from engines.face.ratios import eye_open_ratio, lip_open_ratio
from engines.model import image_to_tensor, to_uint8_frames
from engines.motion.expression import REST, ExpressionEdit, expression_edit, ramp, source_ratio
from engines.motion.keypoints import source_keypoints
from engines.motion.transfer import SourceMotion
from engines.source import PreparedSource, SourceCrop
from engines.weights import write_synthetic_bundle
from tests.engines.factory import cpu_engine
from tests.golden import load_golden

from .golden_utils import assert_close, assert_frames_close


@pytest.fixture(scope="module")
def golden_edit() -> dict[str, np.ndarray]:
    """The editor's golden file (``LIVEPORTRAIT_GOLDEN_EDIT`` overrides the path)."""
    return load_golden("LIVEPORTRAIT_GOLDEN_EDIT", "golden_edit_seed0.npz")


@pytest.fixture(scope="module")
def edit_engine(golden_edit, tmp_path_factory) -> Engine:
    """The plain float32 modules on the CPU, with weights of the golden file's seed."""
    weights = write_synthetic_bundle(tmp_path_factory.mktemp("weights"), int(golden_edit["weights_seed"]))
    torch.manual_seed(0)
    return cpu_engine(weights)


@pytest.fixture(scope="module")
def golden_source(golden_edit, edit_engine) -> PreparedSource:
    """The golden 256 crop prepared without detection: M, F, and the ratios of its landmarks."""
    rgb = golden_edit["source_rgb"]
    net_in = image_to_tensor(torch.from_numpy(rgb)[None])
    info = edit_engine.model.extract_motion(net_in)
    lmk = golden_edit["source_lmk203"][None].astype(np.float32)
    eye, lip = eye_open_ratio(lmk)[0], lip_open_ratio(lmk)[0]
    motion = SourceMotion(
        info,
        source_keypoints(info),
        torch.from_numpy(eye[None]),
        torch.from_numpy(lip[None].astype(np.float32)),
    )
    crop = SourceCrop(rgb, cv2.resize(rgb, (512, 512)), np.eye(3), eye, lip)
    return PreparedSource(crop, motion, edit_engine.model.extract_appearance(net_in))


def golden_cases(golden: dict[str, np.ndarray]) -> list[tuple[ExpressionControls, bool]]:
    """Each case's controls (the panel's slider values) and whether it stitches."""
    names = [str(n) for n in golden["param_names"]]
    cases = []
    for row in golden["params"]:
        values = dict(zip(names, (float(v) for v in row), strict=True))
        stitching = values.pop("stitching") == 1.0
        cases.append((ExpressionControls(**values), stitching))
    return cases


def test_edit_golden_source(golden_edit, golden_source):
    assert_close(golden_source.x_s.numpy(), golden_edit["x_s"], "x_s")
    assert source_ratio(golden_source.motion.eye_ratio) == float(golden_edit["source_eye_ratio"])
    assert source_ratio(golden_source.motion.lip_ratio) == float(golden_edit["source_lip_ratio"])


def test_edit_golden_keypoints_and_frames(golden_edit, edit_engine, golden_source):
    editor = Editor(edit_engine)
    for i, (controls, stitching) in enumerate(golden_cases(golden_edit)):
        before, x_d = editor.keypoints(golden_source, [expression_edit(controls)], stitching)
        assert_close(before.numpy(), golden_edit["x_d_before_retargeting"][i : i + 1], f"case {i} before")
        assert_close(x_d.numpy(), golden_edit["x_d"][i : i + 1], f"case {i} x_d")
        options = AnimationOptions(flag_stitching=stitching)
        frame = to_uint8_frames(editor.render(golden_source, [expression_edit(controls)], options))
        assert_frames_close(frame[0].numpy(), golden_edit["frames"][i], f"case {i} frame")


def test_every_control_at_rest_is_no_edit():
    rest = expression_edit(ExpressionControls())
    assert not rest.exp.any() and not rest.pose.any() and rest.mov_z == 1.0
    assert rest.eye_ratio is None and rest.lip_ratio is None


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_alias_is_its_official_control(alias):
    official = ALIASES[alias]
    value = 7.0 if official != "lip_variation_two" else 3.0
    by_alias = expression_edit(ExpressionControls(**{alias: value}))
    by_name = expression_edit(ExpressionControls(**{official: value}))
    np.testing.assert_array_equal(by_alias.exp, by_name.exp)
    tilt = -0.05 * value if alias == "aaa" else 0.0  # ComfyUI's aaa also lowers the pitch
    np.testing.assert_allclose(by_alias.pose, by_name.pose + np.array([tilt, 0.0, 0.0]))


def test_blink_closes_the_eyes_as_comfyui_does():
    exp = expression_edit(ExpressionControls(blink=2.0)).exp
    expected = np.zeros((21, 3))
    for k, dy in ((11, -0.002), (13, 0.0006), (15, -0.002), (16, 0.0006), (1, -0.0005), (2, 0.0005)):
        expected[k, 1] = dy
    np.testing.assert_allclose(exp, expected)


def test_a_ramp_is_linear_and_ends_on_each_state():
    a = expression_edit(ExpressionControls(smile=1.0, eye_ratio=0.2))
    b = expression_edit(ExpressionControls(smile=0.2, wink=10.0, yaw=8.0, eye_ratio=0.6))
    rest = REST.resolve(0.3, None)
    frames = list(ramp([(a, 2, 1), (b, 4, 0)], rest))
    assert len(frames) == 7
    for end, state in ((1, a), (2, a), (6, b)):  # the last frame of a ramp is its state, exactly
        np.testing.assert_array_equal(frames[end].exp, state.exp)
        np.testing.assert_array_equal(frames[end].pose, state.pose)
        assert frames[end].eye_ratio == state.eye_ratio
    mid: ExpressionEdit = frames[4]  # 2 of 4 frames from a to b
    np.testing.assert_allclose(mid.exp, (a.exp + b.exp) / 2)
    np.testing.assert_allclose(mid.pose, (a.pose + b.pose) / 2)
    assert mid.eye_ratio == pytest.approx(0.4)
    np.testing.assert_allclose(frames[0].exp, a.exp / 2)
    assert frames[0].eye_ratio == pytest.approx(0.25)
