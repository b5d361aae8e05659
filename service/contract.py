"""The job contract: what a client sends, what the queue carries and what the gateway answers.

The options of a job are `common.options.AnimationOptions`, the same object the engines take.
"""

from datetime import datetime
from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ErrorCode
from common.expression import ExpressionControls, Keyframe, Keyframes, check_edit_shape
from common.options import AnimationOptions
from common.progress import Phase

ID_PATTERN = r"^[0-9a-f]{32}$"
"""Job ids and upload ids: 32 lower-case hex digits (a uuid4 without dashes)."""

Priority = Literal["high", "default", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")
"""Queue priorities, highest first; a worker drains them in this order."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

JobEventType = Literal[
    "queued",
    "started",
    "progress",
    "stalled",
    "requeued",
    "cancel_requested",
    "succeeded",
    "failed",
    "canceled",
]
"""What changed a job: each transition is one event (service.queue) of one of these types."""
WebhookEventType = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]
WEBHOOK_EVENT_TYPES: tuple[WebhookEventType, ...] = get_args(WebhookEventType)
"""The events a webhook can subscribe to: `job.{type}` of the job events of these types."""

PAYLOAD_VERSION: Final = 1

OutputKind = Literal["animation", "motion"]
"""What a job makes: the animated portrait, or (`motion`) the motion template of its driving video."""


def check_job_shape(
    kind: OutputKind,
    has_source: bool,
    has_driving: bool,
    expression: ExpressionControls | None,
    keyframes: list[Keyframe] | None,
) -> None:
    """A job's inputs for what it makes: an animation or an edit has a `source` (and one of the editor's
    shapes, `check_edit_shape`); a motion job has a driving input alone. ValueError otherwise."""
    if kind == "motion":
        if has_source or not has_driving or expression is not None or keyframes is not None:
            raise ValueError(
                "a motion job (output kind 'motion') takes a 'driving' video alone: "
                "no 'source', 'expression' or 'keyframes'"
            )
        return
    if not has_source:
        raise ValueError("'source' is required (only a motion job, output kind 'motion', goes without)")
    check_edit_shape(has_driving, expression, keyframes)


class InputRef(BaseModel):
    """One input of a JSON job request: a URL (http, https or s3) or the id of a finished upload."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["url"], "properties": {"url": {"type": "string"}}},
                {"required": ["upload_id"], "properties": {"upload_id": {"type": "string"}}},
            ]
        },
    )

    url: str | None = Field(None, min_length=1, max_length=4096, description="http(s):// or s3:// URL.")
    upload_id: str | None = Field(None, pattern=ID_PATTERN, description="Id returned by POST /v1/uploads.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "InputRef":
        if (self.url is None) == (self.upload_id is None):
            raise ValueError("give exactly one of 'url' or 'upload_id'")
        return self


class OutputSpec(BaseModel):
    """What the job makes, and how the result is delivered."""

    model_config = ConfigDict(extra="forbid")

    kind: OutputKind = Field(
        "animation",
        description="animation: the animated portrait (or edited still). motion: the driving video's "
        "motion template (.npz, `application/x-liveportrait-motion`), to drive later jobs as their "
        "`driving` input without reading the video again; such a job has no `source`.",
    )

    filename: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="File name offered when the result is downloaded (Content-Disposition).",
    )


class WebhookSpec(BaseModel):
    """Where to send the job's events (Standard Webhooks: signed POSTs; see docs/api.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL, checked like URL inputs.")
    events: list[WebhookEventType] = Field(
        default_factory=lambda: list(WEBHOOK_EVENT_TYPES),
        min_length=1,
        description="The event types to send (default: all).",
    )


EXPRESSION_DOC = (
    "Expression controls (docs/api.md): without a driving input, the edited still; with one, offsets "
    "added to every driven frame."
)
KEYFRAMES_DOC = "Without a driving input: a video of sum(change + keep) frames ramping between expressions."


class JobRequest(BaseModel):
    """The JSON body of POST /v1/jobs: an animation (source and driving: a video, an image or a motion
    template), an expression edit (source and `expression` or `keyframes`; with a driving input,
    `expression` offsets the animation), or a motion template (`output.kind` motion: driving alone)."""

    model_config = ConfigDict(extra="forbid")

    source: InputRef | None = Field(
        None, description="The portrait: an image or a video (none in a motion job)."
    )
    driving: InputRef | None = Field(None, description="A video, an image or a motion template (.npz).")
    options: AnimationOptions = Field(default_factory=AnimationOptions)
    expression: ExpressionControls | None = Field(None, description=EXPRESSION_DOC)
    keyframes: Keyframes | None = Field(None, description=KEYFRAMES_DOC)
    priority: Priority = "default"
    output: OutputSpec = Field(default_factory=OutputSpec)
    webhook: WebhookSpec | None = None

    @model_validator(mode="after")
    def _shape(self) -> "JobRequest":
        has_source, has_driving = self.source is not None, self.driving is not None
        check_job_shape(self.output.kind, has_source, has_driving, self.expression, self.keyframes)
        return self


class InputLocation(BaseModel):
    """Where the worker reads one input: a key of the service's store, or a URL it checks again."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    url: str | None = None
    content_type: str | None = Field(None, description="Media type sniffed at the gateway, when known.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "InputLocation":
        if (self.key is None) == (self.url is None):
            raise ValueError("give exactly one of 'key' or 'url'")
        return self


class JobPayload(BaseModel):
    """The one argument of a queued job, carried as its JSON dict (never pickled)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = PAYLOAD_VERSION
    job_id: str = Field(pattern=ID_PATTERN)
    source: InputLocation | None = None
    driving: InputLocation | None = None
    options: AnimationOptions = Field(default_factory=AnimationOptions)
    expression: ExpressionControls | None = None
    keyframes: list[Keyframe] | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)
    traceparent: str | None = Field(
        None,
        pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        description="W3C trace context of the gateway request that created the job.",
    )

    @model_validator(mode="after")
    def _shape(self) -> "JobPayload":
        has_source, has_driving = self.source is not None, self.driving is not None
        check_job_shape(self.output.kind, has_source, has_driving, self.expression, self.keyframes)
        return self


class Progress(BaseModel):
    """Where a running job is: its phase and the frames done in it, the frames rendered, and the share
    of the whole job done (each phase weighted by its measured cost) with the seconds left."""

    phase: Phase | None = Field(None, description="preparing, extracting_motion, rendering or finalizing.")
    phase_done: int = Field(0, description="Frames done in this phase (motion read, or rendered).")
    phase_total: int | None = Field(None, description="Frames of this phase, once known.")
    frames_done: int = Field(0, description="Frames rendered.")
    frames_total: int | None = Field(None, description="Frames the job renders, once known.")
    fraction: float = Field(0.0, description="Share of the whole job done, 0 to 1.")
    eta_s: float | None = Field(None, description="Seconds left, estimated when the worker last reported.")


class JobError(BaseModel):
    """Why a job failed: a stable machine-readable code and a human-readable message."""

    code: ErrorCode
    message: str


class JobResult(BaseModel):
    """The finished animation."""

    url: str = Field(description="GET it (with your API key) to download, or to be redirected to storage.")
    content_type: str
    frames: int
    fps: float
    size_bytes: int | None = None
    content_credentials: bool = Field(
        False,
        description="Whether the file carries signed C2PA content credentials labelling it as AI-generated "
        "(`liveportrait verify FILE` reads them).",
    )


class WebhookStatus(BaseModel):
    """A job's webhook and how its deliveries went."""

    url: str
    events: list[WebhookEventType]
    delivered: int = Field(0, description="Deliveries the receiver accepted (2xx).")
    pending: int = Field(0, description="Deliveries waiting to be sent or retried.")
    failed: int = Field(0, description="Deliveries given up: refused (4xx) or out of retries.")
    disabled: bool = Field(False, description="The receiver answered 410 Gone: nothing more is sent.")
    last_attempt_at: datetime | None = None
    last_status: int | None = Field(None, description="HTTP status of the last attempt (none: no answer).")
    last_error: str | None = Field(None, description="What went wrong in the last failed attempt.")


class Job(BaseModel):
    """The state of a job as GET /v1/jobs/{id} reports it."""

    id: str
    status: JobStatus
    priority: Priority
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    error: JobError | None = None
    result: JobResult | None = None
    cancel_requested: bool = False
    attempts: int = 0
    stalled: bool = Field(
        False,
        description="Running, but its worker's heartbeat stopped: the attempt is likely lost and the job "
        "goes back to queued (or fails worker_lost) once the worker is taken for dead.",
    )
    last_error: JobError | None = Field(None, description="Why the previous attempt was lost, if one was.")
    webhook: WebhookStatus | None = None
    trace_id: str | None = Field(
        None, description="W3C trace id of the submitting request (its `traceparent`, or one we started)."
    )


class JobPage(BaseModel):
    """One page of GET /v1/jobs: the caller's jobs, newest first."""

    jobs: list[Job]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; null on the last page."
    )


class UploadRequest(BaseModel):
    """The optional JSON body of POST /v1/uploads."""

    model_config = ConfigDict(extra="forbid")

    size_bytes: int | None = Field(None, ge=1, description="Size of the file to upload, checked up front.")


class Upload(BaseModel):
    """Where to send one input file: POST `fields` plus the file (as form field `file`) to `url`."""

    upload_id: str
    url: str
    fields: dict[str, str]
    method: Literal["POST"] = "POST"
    file_field: Literal["file"] = "file"
    max_bytes: int
    expires_at: datetime
