"""The animation options: one typed object shared by the CLI, the engines and the job contract.

Defaults are those of the official LivePortrait inference configuration. The gateway validates a
job's options with this same model, so a job can never carry an option the engines do not know.
"""

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

DrivingOption = Literal["expression-friendly", "pose-friendly"]
AnimationRegion = Literal["all", "exp", "pose", "lip", "eyes"]
OutputKind = Literal["pasteback", "crop", "side_by_side"]
AudioSource = Literal["driving", "source", "none"]

MAX_FACES = 16
"""The most faces of one source a job animates (`faces: all` takes the largest ones)."""


FACE_INDICES_TEXT = r"^[0-9]+(,[0-9]+)*$"
"""Face indices as text (a flag, a form): "0,2"."""


def parse_faces(value: object) -> object:
    """`faces` as written on a command line or in a form: "largest", "all" or indices "0,2"."""
    if not isinstance(value, str) or value in ("largest", "all"):
        return value
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError("faces is largest, all, or indices from 0, left to right, e.g. 0,2") from None


def sorted_distinct(indices: tuple[int, ...]) -> tuple[int, ...]:
    """Face indices sorted, each once (faces are pasted back left to right)."""
    return tuple(sorted(set(indices)))


FaceIndex = Annotated[int, Field(ge=0, lt=MAX_FACES)]
FaceSelection = (
    Literal["largest", "all"]
    | Annotated[
        tuple[FaceIndex, ...], Field(min_length=1, max_length=MAX_FACES), AfterValidator(sorted_distinct)
    ]
)
"""Which faces of the source to animate: the largest (the official behaviour), all of them, or
indices of the faces ordered left to right by their box centre."""

FACES_SCHEMA = {
    "anyOf": [
        {"enum": ["largest", "all"], "type": "string"},
        {"type": "string", "pattern": FACE_INDICES_TEXT},
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": MAX_FACES - 1},
            "minItems": 1,
            "maxItems": MAX_FACES,
        },
    ]
}
"""The JSON schema of `faces`: its text form "0,2" included."""


class AnimationOptions(BaseModel):
    """Every official inference option, with its official default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # motion transfer
    flag_relative_motion: bool = Field(
        True, description="Transfer motion relative to the first driving frame."
    )
    driving_option: DrivingOption = Field(
        "expression-friendly",
        description="expression-friendly rescales relative motion by the source/driving keypoint-hull ratio.",
    )
    animation_region: AnimationRegion = Field("all", description="Which part of the motion to transfer.")
    driving_multiplier: float = Field(1.0, ge=0.0, le=4.0, description="Scales the final keypoint motion.")
    flag_stitching: bool = Field(True, description="Run the stitching MLP on every driving frame.")
    flag_eye_retargeting: bool = Field(False, description="Drive the eye openness from the driving ratios.")
    flag_lip_retargeting: bool = Field(False, description="Drive the lip openness from the driving ratios.")
    flag_normalize_lip: bool = Field(False, description="Close the source lips before animation.")
    lip_normalize_threshold: float = Field(0.03, ge=0.0, le=1.0)
    flag_source_video_eye_retargeting: bool = Field(
        False, description="Video source: hold each frame's eye openness at the first frame's."
    )
    source_video_eye_retargeting_threshold: float = Field(0.18, ge=0.0, le=1.0)
    flag_video_editing_head_rotation: bool = Field(
        True, description="Video source: take the smoothed relative head rotation (off: each source frame's)."
    )
    driving_smooth_observation_variance: float = Field(
        3e-7, gt=0.0, le=1.0, description="Kalman observation variance for video-source smoothing."
    )

    # source crop
    flag_do_crop: bool = Field(True, description="Crop the source face before animation.")
    flag_pasteback: bool = Field(True, description="Paste the animated crop back into the source frame.")
    flag_do_rot: bool = Field(True, description="Rotate the source crop to level the face.")
    det_thresh: float = Field(0.15, gt=0.0, lt=1.0, description="Face detector score threshold.")
    faces: Annotated[FaceSelection, BeforeValidator(parse_faces), WithJsonSchema(FACES_SCHEMA)] = Field(
        "largest",
        description="Which faces of an image source to animate: largest, all, or indices counted "
        "from 0, left to right (e.g. 0,2). A video source keeps its largest face.",
    )
    min_face_size: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Ignore faces smaller than this fraction of the source's shorter side (a face's "
        "size: the square root of its box area).",
    )
    scale: float = Field(2.3, gt=0.5, le=5.0, description="Source crop size relative to the face box.")
    vx_ratio: float = Field(0.0, ge=-1.0, le=1.0, description="Source crop horizontal shift.")
    vy_ratio: float = Field(-0.125, ge=-1.0, le=1.0, description="Source crop vertical shift.")
    source_max_dim: int = Field(1280, ge=64, le=4096, description="Longest source side before cropping.")
    source_division: int = Field(2, ge=1, le=64, description="Source sides are rounded down to a multiple.")

    # driving crop
    flag_crop_driving_video: bool = Field(False, description="Auto-crop the driving video around its face.")
    scale_crop_driving_video: float = Field(2.2, gt=0.5, le=5.0)
    vx_ratio_crop_driving_video: float = Field(0.0, ge=-1.0, le=1.0)
    vy_ratio_crop_driving_video: float = Field(-0.1, ge=-1.0, le=1.0)

    # output
    output_kind: OutputKind = Field(
        "pasteback", description="Full frame, 512 crop, or driving | source | result."
    )
    output_fps: float | None = Field(
        None, gt=0.0, le=120.0, description="Output fps; default the driving fps (25 for a driving image)."
    )
    crf: int = Field(18, ge=0, le=51, description="libx264 constant rate factor.")
    audio: AudioSource = Field("driving", description="Which input's audio track to copy.")

    @model_validator(mode="after")
    def _faces_need_the_crop(self) -> "AnimationOptions":
        if self.faces != "largest" and not self.flag_do_crop:
            raise ValueError("faces other than largest needs the source crop (flag_do_crop)")
        return self
