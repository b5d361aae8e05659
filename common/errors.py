"""One error base and one closed set of error codes for the engines, the worker, the gateway and the CLI.

A job that fails reports `{"code": ..., "message": ...}`: `code` is one of `ERROR_CODES`, stable and
machine-readable; `message` is for people. Every exception that ends a job with a known cause
derives from `LivePortraitError`; anything else is an `internal_error`.
"""

from typing import Literal, get_args

MediaErrorCode = Literal[
    "unsupported_media",
    "corrupt_media",
    "too_large",
    "too_long",
    "no_frames",
    "bad_template",
]
"""Inputs judged from their bytes (common.media)."""

EngineErrorCode = Literal[
    "no_face",
    "face_not_found",
    "landmarks_required",
    "unsupported_input",
    "invalid_options",
]
"""The engines' refusals of an input or of its options: changing them helps, retrying does not."""

ErrorCode = Literal[
    MediaErrorCode,
    # inputs, fetched by the worker
    "input_missing",
    "fetch_failed",
    "url_refused",
    EngineErrorCode,
    # the job's life
    "canceled",
    "invalid_payload",
    "timeout",
    "worker_lost",
    "storage_unavailable",
    "signing_failed",
    # live sessions (common.live): a refused frame or message, and why a session ended
    "bad_frame",
    "frame_too_large",
    "bad_message",
    "idle_timeout",
    "session_expired",
    "internal_error",
]

ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))

RequestErrorCode = Literal[
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "not_acceptable",
    "conflict",
    "gone",
    "rate_limited",
    "service_unavailable",
]
"""Refusals of an HTTP request that no job code names (the gateway's error bodies)."""

ProblemCode = Literal[RequestErrorCode, ErrorCode]
"""The `code` of an error body of the gateway: a request refusal, or the job code of the same cause
(an input refused by its content answers its media code, e.g. `bad_template`)."""

PROBLEM_CODES: frozenset[str] = frozenset(get_args(RequestErrorCode)) | ERROR_CODES


class LivePortraitError(Exception):
    """A failure with a known cause: `code` (one of ERROR_CODES) and a `message` for people."""

    code: ErrorCode = "internal_error"

    def __init__(self, code: ErrorCode | None = None, message: str = "") -> None:
        code = code or type(self).code
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class Canceled(LivePortraitError):
    """Raised between frame batches when the caller asks the job to stop."""

    code: ErrorCode = "canceled"

    def __init__(self, message: str = "the job was canceled") -> None:
        super().__init__("canceled", message)
