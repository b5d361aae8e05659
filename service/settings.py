"""The service's one Settings class: every knob is an environment variable prefixed `LIVEPORTRAIT_`."""

import base64
import binascii
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.content_credentials import CredentialsConfig, SigningAlgorithm, credentials_default
from common.engine_config import Backend, Detector, Device, EngineConfig, PrecisionName, engine_default
from common.live import LiveLimits

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _engine(name: str) -> Any:
    """The engine default of a setting that configures the engines (one place: EngineConfig)."""
    return engine_default(name)


def _describe(name: str) -> str | None:
    return EngineConfig.model_fields[name].description


def _described_credential(name: str) -> str | None:
    return CredentialsConfig.model_fields[name].description


class Settings(BaseSettings):
    """Configuration of the gateway, the worker and the client, read from the environment."""

    model_config = SettingsConfigDict(env_prefix="LIVEPORTRAIT_", env_file=None, extra="ignore")

    # queue
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_prefix: str = Field("liveportrait", description="RQ queues are {prefix}-high, -default, -low.")
    job_timeout_s: int = Field(3600, ge=10)
    result_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    failure_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    job_retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: list[int] = Field(default_factory=lambda: [10, 60])
    idempotency_ttl_s: int = Field(24 * 3600, ge=60, description="How long an Idempotency-Key is remembered.")
    motion_cache_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="How long a motion job's template is kept (by video content) for later jobs; 0: none.",
    )

    # storage
    storage_backend: Literal["local", "s3"] = "local"
    local_storage_dir: Path = Path(".liveportrait/store")
    s3_endpoint_url: str | None = None
    s3_bucket: str = "liveportrait"
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint used in presigned URLs handed to clients (default: s3_endpoint_url)."
    )
    s3_multipart_threshold_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_multipart_chunk_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_max_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Attempts per S3 request (botocore standard retries, exponential backoff).",
    )
    storage_retry_window_s: float = Field(
        120.0,
        ge=0,
        description="How long a worker retries an unreachable store for a job's inputs and result before "
        "failing the job with storage_unavailable.",
    )
    s3_input_buckets: list[str] = Field(
        default_factory=list, description="Buckets that s3:// input URLs may read from (none by default)."
    )
    presign_expiry_s: int = Field(3600, ge=60, le=7 * 24 * 3600)

    # gateway
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: str | None = None
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 hex digests of accepted API keys (JSON list or comma-separated); empty: open.",
    )
    max_request_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_input_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="Largest accepted input file (upload, URL or multipart part)."
    )
    signing_secret: SecretStr | None = Field(
        None, description="HMAC key of gateway upload URLs (local store); random per process when unset."
    )
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="Requests per minute per API key (per client address without keys), over all gateways "
        "(a sliding window in Redis); 0: no limit.",
    )
    allow_private_urls: bool = Field(False, description="Allow URL inputs on private/loopback addresses.")
    url_fetch_timeout_s: float = Field(30.0, gt=0, description="Timeout of each read of a URL input.")

    # input limits, checked before decoding
    max_source_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_driving_pixels: int = Field(1920 * 1080, ge=64 * 64)
    max_driving_frames: int = Field(9000, ge=1)
    max_driving_seconds: float = Field(600.0, gt=0)

    # worker / engines
    weights_dir: Path | None = None
    device: Device = _engine("device")
    backend: Backend = Field(_engine("backend"), description=_describe("backend"))
    optimize: bool = Field(_engine("optimize"), description=_describe("optimize"))
    precision: PrecisionName = Field(_engine("precision"), description=_describe("precision"))
    pipelined: bool = Field(_engine("pipelined"), description=_describe("pipelined"))
    detector: Detector = Field(_engine("detector"), description=_describe("detector"))
    engine_cache_dir: Path = Field(_engine("engine_cache_dir"), description=_describe("engine_cache_dir"))
    frame_batch: int | None = Field(_engine("frame_batch"), ge=1, le=64, description=_describe("frame_batch"))
    source_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory a worker keeps recently prepared sources in (F's features on the model's device, "
        "the crop and the frame), so the next expression edit of the same portrait runs only W and G; "
        "0: off.",
    )
    work_dir: Path | None = None
    worker_name: str | None = None
    worker_heartbeat_s: int = Field(
        5,
        ge=1,
        le=300,
        description="Heartbeat period of a busy worker; a job whose heartbeat is two periods late shows "
        "`stalled` (service.queue.stalled_after_s).",
    )
    scheduler_interval_s: int = Field(1, ge=1, le=60, description="How often delayed retries are enqueued.")
    job_abandoned_after_s: int | None = Field(
        None,
        ge=2,
        description="A running job whose worker sent no heartbeat for this long is abandoned and re-queued "
        "(default 4 * worker_heartbeat_s + 15; keep it several heartbeats long).",
    )
    reaper_interval_s: int = Field(
        10, ge=1, le=3600, description="How often the workers look for abandoned jobs (one of them does)."
    )

    # live sessions (docs/api.md "Live sessions")
    live_slots: int = Field(
        4,
        ge=0,
        le=256,
        description="Live sessions a worker runs at once, beside its jobs; 0: no live server.",
    )
    live_host: str = Field("127.0.0.1", description="Address the worker's live WebSocket server binds.")
    live_port: int = Field(
        8765, ge=0, le=65535, description="Port of the worker's live server (0: any free one)."
    )
    live_advertise_address: str | None = Field(
        None,
        description="host:port the gateways reach this worker's live server at (default: the bound address; "
        "the host name when bound to 0.0.0.0).",
    )
    live_heartbeat_s: float = Field(
        2.0, gt=0, le=60, description="Period of a worker's live advertisement; three missed take it out."
    )
    live_token_ttl_s: int = Field(
        30, ge=1, le=600, description="Life of the single-use token of a websocket_url."
    )
    live_idle_timeout_s: float = Field(
        30.0, gt=0, description="A session without a driving frame this long ends."
    )
    live_max_session_s: float = Field(1800.0, gt=0, description="Longest live session.")
    live_max_frame_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="Largest driving frame (JPEG bytes)."
    )
    live_max_frame_pixels: int = Field(1920 * 1080, ge=64 * 64, description="Most pixels of a driving frame.")
    live_send_queue_frames: int = Field(
        2, ge=1, le=64, description="Animated frames queued per session before the oldest is dropped."
    )
    live_batch_window_ms: float = Field(
        4.0,
        ge=0,
        le=100,
        description="How long the model waits for other sessions' frames to render them in one batch.",
    )
    live_max_batch: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Most frames of concurrent sessions in one batch (default: the engine's frame batch, "
        "1 on a CPU, 16 on a GPU).",
    )
    live_retry_after_s: int = Field(
        5, ge=1, le=3600, description="Retry-After of a 503 when no slot is free."
    )

    # job events: the event stream and webhooks (service.webhooks, docs/api.md)
    events_keepalive_s: float = Field(
        15.0, gt=0, le=300, description="Seconds between keep-alive comments of an idle event stream."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signing secret of webhook deliveries, `whsec_` + base64 of 24 to 64 random bytes; jobs "
        "with a webhook are refused while it is unset.",
    )
    webhook_dispatcher: bool = Field(
        True, description="Run a webhook dispatcher in each gateway (off: run `liveportrait webhooks`)."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of one delivery attempt.")
    webhook_retry_base_s: float = Field(
        5.0, gt=0, description="Delay before the first retry; doubled after each failed attempt, with jitter."
    )
    webhook_retry_max_delay_s: float = Field(3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_retry_window_s: int = Field(
        24 * 3600, ge=60, description="How long a delivery is retried before it is given up."
    )
    webhook_progress_interval_s: float = Field(
        0.5, ge=0, description="Least time between two job.progress deliveries of a job."
    )

    # content credentials: the C2PA manifest signed into every output (docs/credentials.md)
    c2pa_cert_chain: Path | None = Field(
        credentials_default("cert_chain"), description=_described_credential("cert_chain")
    )
    c2pa_private_key: Path | None = Field(
        credentials_default("private_key"), description=_described_credential("private_key")
    )
    c2pa_algorithm: SigningAlgorithm = Field(
        credentials_default("algorithm"), description=_described_credential("algorithm")
    )
    c2pa_tsa_url: str | None = Field(
        credentials_default("tsa_url"), description=_described_credential("tsa_url")
    )
    c2pa_dev_dir: Path | None = Field(
        credentials_default("dev_dir"), description=_described_credential("dev_dir")
    )

    # logging
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """A Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 bytes."""
        if value is None:
            return None
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook_secret must be whsec_ followed by base64") from exc
        if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise ValueError("webhook_secret must be whsec_ followed by the base64 of 24 to 64 bytes")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string; digests are normalised to lower case."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [k for k in text.split(",") if k.strip()]
        if isinstance(value, list):
            value = [k.strip().lower() if isinstance(k, str) else k for k in value]
            for key in value:
                if not isinstance(key, str) or not _SHA256_HEX.match(key):
                    raise ValueError("api_keys must be sha256 hex digests (64 hex characters)")
        return value

    def engine_config(self) -> EngineConfig:
        """The engines' load config (LIVEPORTRAIT_WEIGHTS_DIR is required to run them)."""
        if self.weights_dir is None:
            raise ValueError(
                "no weights: set LIVEPORTRAIT_WEIGHTS_DIR to the weights bundle "
                "(`liveportrait weights download DIR` fetches the official one)"
            )
        return EngineConfig(
            weights_dir=self.weights_dir,
            device=self.device,
            backend=self.backend,
            optimize=self.optimize,
            precision=self.precision,
            pipelined=self.pipelined,
            frame_batch=self.frame_batch,
            detector=self.detector,
            engine_cache_dir=self.engine_cache_dir,
        )

    def live_limits(self) -> LiveLimits:
        """The limits of every live session (what POST /v1/live/sessions and `ready` announce)."""
        return LiveLimits(
            max_frame_bytes=self.live_max_frame_bytes,
            max_frame_pixels=self.live_max_frame_pixels,
            idle_timeout_s=self.live_idle_timeout_s,
            max_session_s=self.live_max_session_s,
            send_queue_frames=self.live_send_queue_frames,
        )

    def credentials_config(self) -> CredentialsConfig:
        """How the worker and the CLI sign their outputs (engines.media.credentials.load_signer)."""
        return CredentialsConfig(
            cert_chain=self.c2pa_cert_chain,
            private_key=self.c2pa_private_key,
            algorithm=self.c2pa_algorithm,
            tsa_url=self.c2pa_tsa_url,
            dev_dir=self.c2pa_dev_dir,
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
