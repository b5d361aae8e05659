"""The expression controls and keyframes: names, ranges, aliases and the shapes of an edit job."""

import math

import pytest
from pydantic import ValidationError

from common.expression import (
    ALIASES,
    KEYFRAMES,
    MAX_KEYFRAMES,
    RANGES,
    ExpressionControls,
    check_edit_shape,
    keyframe_frames,
    needs_landmarks,
)


def test_every_range_is_enforced_at_both_ends():
    for name, (low, high) in RANGES.items():
        ExpressionControls(**{name: low})
        ExpressionControls(**{name: high})
        for outside in (low - 1e-3, high + 1e-3):
            with pytest.raises(ValidationError) as err:
                ExpressionControls(**{name: outside})
            assert err.value.errors()[0]["loc"] == (name,)


def test_an_alias_has_its_official_controls_range():
    for alias, official in ALIASES.items():
        low, high = RANGES[official]
        assert ExpressionControls(**{alias: high}).value(official) == high
        with pytest.raises(ValidationError):
            ExpressionControls(**{alias: low - 1.0})


def test_unknown_controls_non_finite_values_and_two_names_of_one_control_are_refused():
    with pytest.raises(ValidationError) as err:
        ExpressionControls.model_validate({"grimace": 1.0})
    assert err.value.errors()[0]["type"] == "extra_forbidden"
    for value in (math.nan, math.inf):
        with pytest.raises(ValidationError):
            ExpressionControls(smile=value)
    with pytest.raises(ValidationError, match="lip_variation_three or its alias aaa"):
        ExpressionControls(aaa=10.0, lip_variation_three=5.0)


def test_the_rest_state_is_the_default_and_ratios_ask_for_landmarks():
    rest = ExpressionControls()
    assert rest.mov_z == 1.0 and rest.value("smile") == 0.0 and not rest.needs_landmarks
    assert ExpressionControls(lip_ratio=0.4).needs_landmarks
    keyframes = KEYFRAMES.validate_python([{"expression": {"eye_ratio": 0.2}, "change": 3}])
    assert needs_landmarks(None, keyframes) and not needs_landmarks(rest, None)


def test_keyframes_count_their_frames_and_need_some():
    keyframes = KEYFRAMES.validate_json('[{"expression": {"smile": 1}, "change": 4, "keep": 2}, {"keep": 3}]')
    assert keyframe_frames(keyframes) == 9
    for bad in ("[]", '[{"change": 0, "keep": 0}]', '[{"change": -1}]', '[{"expression": {"wink": 40}}]'):
        with pytest.raises(ValidationError):
            KEYFRAMES.validate_json(bad)
    with pytest.raises(ValidationError):
        KEYFRAMES.validate_python([{"keep": 1}] * (MAX_KEYFRAMES + 1))


def test_the_shapes_of_an_edit_job():
    smile = ExpressionControls(smile=0.5)
    keyframes = KEYFRAMES.validate_python([{"keep": 1}])
    check_edit_shape(True, None, None)  # an animation
    check_edit_shape(True, smile, None)  # offsets on an animation
    check_edit_shape(False, smile, None)  # a still
    check_edit_shape(False, None, keyframes)  # a keyframe video
    for has_driving, expression, frames in (
        (True, None, keyframes),
        (False, None, None),
        (False, smile, keyframes),
    ):
        with pytest.raises(ValueError):
            check_edit_shape(has_driving, expression, frames)


def test_controls_survive_a_full_dump_as_the_queue_carries_them():
    controls = ExpressionControls(smile=0.8, eee=5.0, aaa=30.0, pupil_y=-4.0, eye_ratio=0.3)
    again = ExpressionControls.model_validate_json(controls.model_dump_json())
    assert again == controls and again.value("lip_variation_two") == 5.0
    keyframes = KEYFRAMES.validate_python([{"expression": controls, "change": 2}])
    assert KEYFRAMES.validate_json(KEYFRAMES.dump_json(keyframes)) == keyframes
