"""The expression editor's controls and keyframes: one typed object for the CLI, the gateway and the engines.

The controls are those of the official LivePortrait "retargeting image" panel (names and ranges as
there, ../shared/oracle/EXPRESSION_EDITOR.md), plus the names other tools use for some of them
(ComfyUI-AdvancedLivePortrait and the hosted APIs built on it). Every control at rest (0; mov_z 1;
the ratios unset, meaning the source's own) leaves the portrait as it is. What each one does to the
keypoints is engines.motion.expression's business; here are only names, ranges and the job shapes.
"""

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

# fmt: off
RANGES: dict[str, tuple[float, float]] = {
    "pitch": (-15.0, 15.0), "yaw": (-25.0, 25.0), "roll": (-15.0, 15.0),
    "mov_x": (-0.19, 0.19), "mov_y": (-0.19, 0.19), "mov_z": (0.9, 1.2),
    "smile": (-0.3, 1.3), "wink": (0.0, 39.0), "eyebrow": (-30.0, 30.0),
    "eyeball_direction_x": (-30.0, 30.0), "eyeball_direction_y": (-63.0, 63.0),
    "lip_variation_zero": (-0.09, 0.09), "lip_variation_one": (-20.0, 15.0),
    "lip_variation_two": (0.0, 15.0), "lip_variation_three": (-90.0, 120.0),
    "eye_ratio": (0.0, 0.8), "lip_ratio": (0.0, 0.8), "blink": (-20.0, 5.0),
}
"""The official panel's slider ranges; blink's is ComfyUI-AdvancedLivePortrait's (the panel has none)."""
# fmt: on

ALIASES: dict[str, str] = {
    "aaa": "lip_variation_three",
    "eee": "lip_variation_two",
    "woo": "lip_variation_one",
    "pupil_x": "eyeball_direction_x",
    "pupil_y": "eyeball_direction_y",
}
"""Other tools' names of official controls (aaa also tilts the head: engines.motion.expression)."""

MAX_KEYFRAMES = 100
"""Keyframes in one job, at most."""


def _control(name: str, description: str, rest: float = 0.0) -> Any:
    low, high = RANGES[name]
    return Field(rest, ge=low, le=high, description=f"{description} [{low:g}, {high:g}]")


def _ratio(name: str, description: str) -> Any:
    low, high = RANGES[name]
    return Field(
        None, ge=low, le=high, description=f"{description} [{low:g}, {high:g}]; unset: the source's own"
    )


def _alias(official: str) -> Any:
    low, high = RANGES[official]
    return Field(
        None,
        ge=low,
        le=high,
        description=f"another name of {official} [{low:g}, {high:g}]",
        json_schema_extra={"x-alias-of": official},
    )


class ExpressionControls(BaseModel):
    """The controls of one expression edit; every one at rest leaves the portrait unchanged."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    pitch: float = _control("pitch", "Head pitch, degrees added to the source's.")
    yaw: float = _control("yaw", "Head yaw, degrees added to the source's.")
    roll: float = _control("roll", "Head roll, degrees added to the source's.")
    mov_x: float = _control("mov_x", "Horizontal shift of the face.")
    mov_y: float = _control("mov_y", "Vertical shift of the face.")
    mov_z: float = _control("mov_z", "Scale of the face.", rest=1.0)
    smile: float = _control("smile", "Smile.")
    wink: float = _control("wink", "Wink.")
    eyebrow: float = _control("eyebrow", "Eyebrows up (> 0) or frowning (< 0).")
    eyeball_direction_x: float = _control("eyeball_direction_x", "Gaze left/right.")
    eyeball_direction_y: float = _control("eyeball_direction_y", "Gaze up/down.")
    lip_variation_zero: float = _control("lip_variation_zero", "Pouting.")
    lip_variation_one: float = _control("lip_variation_one", "Pursing.")
    lip_variation_two: float = _control("lip_variation_two", "Grin.")
    lip_variation_three: float = _control("lip_variation_three", "Lip open (> 0) / close (< 0).")
    eye_ratio: float | None = _ratio("eye_ratio", "Target eye-open ratio (needs landmarks).")
    lip_ratio: float | None = _ratio("lip_ratio", "Target lip-open ratio (needs landmarks).")
    blink: float = _control("blink", "Eyes closed (> 0) or wide open (< 0), as ComfyUI's blink.")
    aaa: float | None = _alias("lip_variation_three")
    eee: float | None = _alias("lip_variation_two")
    woo: float | None = _alias("lip_variation_one")
    pupil_x: float | None = _alias("eyeball_direction_x")
    pupil_y: float | None = _alias("eyeball_direction_y")

    @model_validator(mode="after")
    def _one_name_each(self) -> "ExpressionControls":
        for alias, official in ALIASES.items():
            if getattr(self, alias) is not None and getattr(self, official) != 0.0:
                raise ValueError(f"give {official} or its alias {alias}, not both")
        return self

    def value(self, name: str) -> float:
        """The value of official control `name`, given under its own name or an alias."""
        for alias, official in ALIASES.items():
            given = getattr(self, alias)
            if official == name and given is not None:
                return float(given)
        return float(getattr(self, name))

    @property
    def needs_landmarks(self) -> bool:
        """Whether a target ratio is set (it needs the source's eye and lip landmarks)."""
        return self.eye_ratio is not None or self.lip_ratio is not None


class Keyframe(BaseModel):
    """One step of an animated edit: ramp linearly from the previous state (the rest state before the
    first step) to `expression` over `change` frames, then hold it for `keep` frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expression: ExpressionControls = Field(default_factory=ExpressionControls)
    change: int = Field(0, ge=0, description="Frames of the linear ramp; its last frame is the new state.")
    keep: int = Field(0, ge=0, description="Frames holding the new state after the ramp.")


def keyframe_frames(keyframes: list[Keyframe]) -> int:
    """The frames of an animated edit: sum(change + keep)."""
    return sum(k.change + k.keep for k in keyframes)


def _some_frames(keyframes: list[Keyframe]) -> list[Keyframe]:
    if keyframe_frames(keyframes) < 1:
        raise ValueError("the keyframes make no frames (every change and keep is 0)")
    return keyframes


Keyframes = Annotated[
    list[Keyframe], Field(min_length=1, max_length=MAX_KEYFRAMES), AfterValidator(_some_frames)
]
"""The keyframes of one animated edit (at least one frame)."""

KEYFRAMES: TypeAdapter[list[Keyframe]] = TypeAdapter(Keyframes)
"""Validates keyframes from JSON (`KEYFRAMES.validate_json(text)`) or Python objects."""


def needs_landmarks(expression: ExpressionControls | None, keyframes: list[Keyframe] | None) -> bool:
    """Whether an edit sets a target eye or lip ratio anywhere."""
    states = ([expression] if expression else []) + [k.expression for k in keyframes or []]
    return any(s.needs_landmarks for s in states)


def check_edit_shape(
    has_driving: bool, expression: ExpressionControls | None, keyframes: list[Keyframe] | None
) -> None:
    """The three uses of the editor: a still (expression, no driving), keyframes (no driving), and
    offsets (expression on a driving input). ValueError for any other combination."""
    if has_driving and keyframes is not None:
        raise ValueError("keyframes make their own video: send them without a driving input")
    if not has_driving and (expression is None) == (keyframes is None):
        raise ValueError("without a driving input, give exactly one of 'expression' or 'keyframes'")
