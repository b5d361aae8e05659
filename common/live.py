"""Live sessions on the wire: the options, the limits, the WebSocket messages and the close codes.

One definition for the gateway (which answers POST /v1/live/sessions and relays), the worker (which
runs the sessions), the Python client and the page. The protocol is docs/api.md's "Live sessions":
binary JPEG frames both ways; text messages are JSON objects with a `type`.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.errors import ErrorCode, LivePortraitError
from common.expression import ExpressionControls
from common.options import AnimationOptions, OutputKind


class Smoothing(BaseModel):
    """The One-Euro filter of the driving motion: cutoff min_cutoff + beta * speed (Hz)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_cutoff: float = Field(1.0, gt=0.0, le=100.0, description="Cutoff (Hz) when still: lower is smoother.")
    beta: float = Field(
        0.7, ge=0.0, le=1000.0, description="Cutoff added per unit of speed: higher lags less."
    )


class LiveOptions(BaseModel):
    """What a live session renders and sends back."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    output_kind: OutputKind = Field(
        "crop",
        description="The 512 crop, the source frame with the face pasted back, or driving | source | result.",
    )
    size: int | None = Field(
        None, ge=64, le=2048, description="Longest side of the frames sent back; null: as rendered."
    )
    quality: int = Field(80, ge=1, le=100, description="JPEG quality of the frames sent back.")
    smoothing: Smoothing | None = Field(
        default_factory=Smoothing, description="One-Euro smoothing of the driving motion; null: off."
    )
    animation: AnimationOptions = Field(
        default_factory=AnimationOptions,
        description="Motion and source-crop options (the file options do not apply).",
    )

    def updated(self, change: dict[str, Any]) -> "LiveOptions":
        """These options with the fields of `change`; `animation` fields merge into the current ones.
        Raises pydantic's ValidationError."""
        values = self.model_dump()
        animation = change.get("animation")
        if isinstance(animation, dict):
            change = {**change, "animation": {**values["animation"], **animation}}
        return LiveOptions.model_validate({**values, **change})

    def composing(self) -> AnimationOptions:
        """The animation options as the compose step reads them (their output_kind is this one)."""
        return self.animation.model_copy(update={"output_kind": self.output_kind})


class LiveLimits(BaseModel):
    """The limits of a session, as the settings set them."""

    max_frame_bytes: int
    max_frame_pixels: int
    idle_timeout_s: float
    max_session_s: float
    send_queue_frames: int


class SessionGrant(BaseModel):
    """The answer to POST /v1/live/sessions."""

    session_id: str
    websocket_url: str
    token_expires_at: datetime
    options: LiveOptions
    limits: LiveLimits


# --- close codes ------------------------------------------------------------------------------------

CloseReason = Literal[
    "normal", "idle_timeout", "session_expired", "source_refused", "worker_lost", "internal_error"
]

CLOSE_CODES: dict[CloseReason, int] = {
    "normal": 1000,
    "idle_timeout": 4001,
    "session_expired": 4002,
    "source_refused": 4003,
    "worker_lost": 4004,
    "internal_error": 1011,
}
"""The WebSocket close code of each way a session ends."""


# --- client -> server ---------------------------------------------------------------------------------


class Reset(BaseModel):
    """Take the next driving frame as the motion reference."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["reset"]


class OptionsChange(BaseModel):
    """Change LiveOptions fields from the next frame."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["options"]
    options: dict[str, Any]


class ExpressionChange(BaseModel):
    """Expression controls added to the driving motion from the next frame (they replace the last ones)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["expression"]
    expression: dict[str, Any] = Field(default_factory=dict)


ClientMessage = Annotated[Reset | OptionsChange | ExpressionChange, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[Reset | OptionsChange | ExpressionChange] = TypeAdapter(ClientMessage)


class LiveError(LivePortraitError):
    """A refused frame or message of a live session (the session goes on)."""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def parse_client_message(text: str) -> Reset | OptionsChange | ExpressionChange:
    """A text message of the client; LiveError bad_message when it is no such message."""
    try:
        return _CLIENT_MESSAGE.validate_json(text)
    except ValidationError as exc:
        raise LiveError("bad_message", f"not a live message ({_first_error(exc)})") from exc


def changed_options(options: LiveOptions, message: OptionsChange) -> LiveOptions:
    """The options after an `options` message; LiveError invalid_options when the change does not validate."""
    try:
        return options.updated(message.options)
    except ValidationError as exc:
        raise LiveError("invalid_options", _first_error(exc)) from exc


def expression_controls(message: ExpressionChange) -> ExpressionControls | None:
    """The controls of an `expression` message (None when every control is at rest); LiveError
    invalid_options when they do not validate."""
    try:
        controls = ExpressionControls.model_validate(message.expression)
    except ValidationError as exc:
        raise LiveError("invalid_options", _first_error(exc)) from exc
    return None if controls == ExpressionControls() else controls


# --- server -> client ---------------------------------------------------------------------------------


class Ready(BaseModel):
    type: Literal["ready"] = "ready"
    session_id: str
    options: LiveOptions
    limits: LiveLimits
    source: dict[str, int]


class Stats(BaseModel):
    type: Literal["stats"] = "stats"
    seq: int
    batch: int
    latency_ms: dict[str, float]


DropReason = Literal["superseded", "slow_client"]


class Dropped(BaseModel):
    type: Literal["dropped"] = "dropped"
    seq: int
    reason: DropReason


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    seq: int | None = None


class Closing(BaseModel):
    type: Literal["closing"] = "closing"
    code: int
    reason: CloseReason
    message: str

    @classmethod
    def of(cls, reason: CloseReason, message: str) -> "Closing":
        return cls(code=CLOSE_CODES[reason], reason=reason, message=message)


ServerMessage = Annotated[Ready | Stats | Dropped | ErrorMessage | Closing, Field(discriminator="type")]
SERVER_MESSAGE: TypeAdapter[Ready | Stats | Dropped | ErrorMessage | Closing] = TypeAdapter(ServerMessage)
"""Parses the server's text messages (`SERVER_MESSAGE.validate_json(text)`), for clients."""
