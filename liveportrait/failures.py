"""How the `liveportrait` command reports a failure: one line, its code, what to do, an exit status.

Every failure prints `error [code]: what happened; what to do` on stderr and exits with the status
of its class (the traceback only with `liveportrait --verbose`):

| status | class | e.g. |
| --- | --- | --- |
| 1 | failed: the job or the command did not succeed | a job canceled or `worker_lost`; `internal_error` |
| 2 | usage: the command line is wrong | an unknown flag, an option out of range |
| 3 | input refused: fix the input and try again | 413, 415, 422; `corrupt_media`, `bad_template` |
| 4 | not found | 404, 410; a local file that does not exist |
| 5 | auth: the API key is missing, wrong or not allowed | 401, 403 |
| 6 | service unavailable: try again later | 429, 503, the gateway unreachable or timing out |
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, get_args

from common.errors import EngineErrorCode, LivePortraitError, MediaErrorCode

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_UNAVAILABLE = 6

_INPUT_CODES = (
    frozenset(get_args(MediaErrorCode))
    | frozenset(get_args(EngineErrorCode))
    | {
        "url_refused",
        "invalid_request",
    }
)
"""Job and request codes that mean: this input (or request) is refused, change it."""

_ADVICE_BY_EXIT = {
    EXIT_FAILED: "see the message; rerun with --verbose for details",
    EXIT_USAGE: "see `liveportrait COMMAND --help`",
    EXIT_INPUT: "fix the input or the options and submit again",
    EXIT_NOT_FOUND: "check the job id or the path (jobs and results expire)",
    EXIT_AUTH: "pass --api-key KEY or set LIVEPORTRAIT_API_KEY to a key the gateway accepts",
    EXIT_UNAVAILABLE: "the service is busy or down: try again later (or check --url)",
}


@dataclass(frozen=True)
class Failure:
    """A failure as the command reports it."""

    code: str
    message: str
    exit_status: int
    advice: str

    def line(self) -> str:
        """The one line printed on stderr."""
        return f"error [{self.code}]: {self.message}; {self.advice}"


def _status_exit(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status in (404, 410):
        return EXIT_NOT_FOUND
    if status in (429, 502, 503, 504):
        return EXIT_UNAVAILABLE
    if status in (400, 413, 415, 422):
        return EXIT_INPUT
    return EXIT_FAILED


def code_exit(code: str) -> int:
    """The exit status of a failed job's (or a local command's) error code."""
    if code in _INPUT_CODES:
        return EXIT_INPUT
    if code in ("input_missing",):
        return EXIT_NOT_FOUND
    if code in ("storage_unavailable", "service_unavailable", "rate_limited"):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def _failure(code: str, message: str, exit_status: int, advice: str | None = None) -> Failure:
    return Failure(code, " ".join(message.split()), exit_status, advice or _ADVICE_BY_EXIT[exit_status])


def describe(exc: BaseException, *, url: str | None = None) -> Failure | None:
    """The failure `exc` stands for; None for an exception nobody expected (a bug: internal_error)."""
    from pydantic import ValidationError

    client = sys.modules.get("service.client")  # loaded by the client commands only (httpx with it)
    if client is not None and isinstance(exc, client.ApiError):
        exit_status = _status_exit(exc.status_code)
        code = exc.code or f"http_{exc.status_code}"
        if exc.code and exit_status == EXIT_FAILED:
            exit_status = code_exit(exc.code)
        advice = f"retry in {exc.retry_after} s" if exc.retry_after else None
        return _failure(code, f"{exc.detail} (HTTP {exc.status_code})", exit_status, advice)
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TimeoutException):
        message = f"the gateway at {url} did not answer in time"
        return _failure("service_unavailable", message, EXIT_UNAVAILABLE)
    if httpx is not None and isinstance(exc, httpx.TransportError):
        message = f"cannot reach the gateway at {url} ({type(exc).__name__})"
        return _failure("service_unavailable", message, EXIT_UNAVAILABLE, "start it or check --url")
    if isinstance(exc, ValidationError):
        return _failure("invalid_options", _validation_summary(exc), EXIT_USAGE)
    if isinstance(exc, FileNotFoundError):
        return _failure("input_missing", f"no such file: {exc.filename}", EXIT_NOT_FOUND, "check the path")
    if isinstance(exc, LivePortraitError):
        return _failure(exc.code, exc.message, code_exit(exc.code))
    return None


def job_failure(job_id: str, status: str, error: Any) -> Failure:
    """A job that ended without a result: `status` failed (with its `error` {code, message}) or canceled."""
    if error is None:
        return _failure(status, f"job {job_id} {status}", EXIT_FAILED, "submit it again if you still want it")
    return _failure(error.code, f"job {job_id} {status}: {error.message}", code_exit(error.code))


def _validation_summary(exc: Any) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "invalid options: " + "; ".join(parts)
