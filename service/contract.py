"""The job contract: what a client sends, what the queue carries and what the gateway answers.

The options of a job are `common.options.AnimationOptions`, the same object the engines take.
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ErrorCode
from common.options import AnimationOptions

ID_PATTERN = r"^[0-9a-f]{32}$"
"""Job ids and upload ids: 32 lower-case hex digits (a uuid4 without dashes)."""

Priority = Literal["high", "default", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "default", "low")
"""Queue priorities, highest first; a worker drains them in this order."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

PAYLOAD_VERSION = 1


class InputRef(BaseModel):
    """One input of a JSON job request: a URL (http, https or s3) or the id of a finished upload."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=4096, description="http(s):// or s3:// URL.")
    upload_id: str | None = Field(None, pattern=ID_PATTERN, description="Id returned by POST /v1/uploads.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "InputRef":
        if (self.url is None) == (self.upload_id is None):
            raise ValueError("give exactly one of 'url' or 'upload_id'")
        return self


class OutputSpec(BaseModel):
    """How the result is delivered."""

    model_config = ConfigDict(extra="forbid")

    filename: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="File name offered when the result is downloaded (Content-Disposition).",
    )


class JobRequest(BaseModel):
    """The JSON body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    source: InputRef
    driving: InputRef
    options: AnimationOptions = Field(default_factory=AnimationOptions)
    priority: Priority = "default"
    output: OutputSpec = Field(default_factory=OutputSpec)


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
    source: InputLocation
    driving: InputLocation
    options: AnimationOptions = Field(default_factory=AnimationOptions)
    output: OutputSpec = Field(default_factory=OutputSpec)
    traceparent: str | None = Field(
        None,
        pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        description="W3C trace context of the gateway request that created the job.",
    )


class Progress(BaseModel):
    """Frames rendered so far; `eta_s` is extrapolated from the pace of the frames done."""

    frames_done: int = 0
    frames_total: int | None = None
    fraction: float = 0.0
    eta_s: float | None = None


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
