"""The service's one Settings class: every knob is an environment variable prefixed `LIVEPORTRAIT_`."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    presign_expiry_s: int = Field(3600, ge=60, le=7 * 24 * 3600)

    # gateway
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: str | None = None
    api_keys: list[str] = Field(default_factory=list, description="sha256 hex digests of accepted API keys.")
    max_request_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    allow_private_urls: bool = Field(False, description="Allow URL inputs on private/loopback addresses.")

    # input limits, checked before decoding
    max_source_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_driving_pixels: int = Field(1920 * 1080, ge=64 * 64)
    max_driving_frames: int = Field(9000, ge=1)
    max_driving_seconds: float = Field(600.0, gt=0)

    # worker / engines
    weights_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    engine_cache_dir: Path = Path(".liveportrait/engines")
    frame_batch: int = Field(8, ge=1, le=64)
    work_dir: Path | None = None

    # logging
    log_level: str = "INFO"
    log_json: bool = True


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
