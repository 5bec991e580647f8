"""Settings of the service, from `NST_*` environment variables, read when a process asks."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One class for the API and the worker; each reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="NST_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="broker, job state, events and snapshots")
    job_ttl_seconds: int = Field(
        86_400, ge=60, description="a job, its snapshots and its result expire this long after it ends (objects too)"
    )
    blob_store: str = Field(
        ".nst/blobs",
        description="where uploads, results and checkpoints live: a directory (a path or file:///path) or "
        "s3://bucket/prefix (with the AWS_* variables; AWS_ENDPOINT_URL for MinIO and other S3-compatible servers)",
    )
    blob_min_free_bytes: int = Field(
        1_000_000_000, ge=0, description="a directory store keeps this much of its disk free: past it, 507"
    )
    result_redirect_seconds: int | None = Field(
        None,
        ge=1,
        le=604_800,
        description="with an S3 store, answer GET /jobs/{id}/result with a redirect (307) to a signed URL "
        "valid this long, instead of the bytes (unset: the API serves them)",
    )
    redis_high_water: float = Field(
        0.8,
        gt=0,
        le=1,
        description="share of Redis's maxmemory past which submissions are refused (503) before anything is stored",
    )
    redis_maxmemory: str = Field(
        "1gb", description="maxmemory of the Redis that `nst up` starts (with noeviction): what Redis may hold"
    )
    api_processes: int | None = Field(
        None, ge=1, le=64, description="API processes `nst api` runs (default: one per CPU core)"
    )
    max_concurrent_uploads: int = Field(
        4, ge=1, description="submissions one API process reads and checks at once; the rest wait their turn"
    )
    sweep_interval_seconds: float = Field(
        600.0, gt=0, description="how often a worker removes objects whose job is gone (expired, deleted, crashed)"
    )
    sweep_grace_seconds: float = Field(
        3600.0, ge=0, description="objects younger than this are never swept (a submission may be storing them)"
    )
    max_upload_bytes: int = Field(20_000_000, ge=1, description="per uploaded file")
    max_styles: int = Field(8, ge=1, le=16, description="style images per job")
    max_input_pixels: int = Field(40_000_000, ge=1, description="width x height of an uploaded image")
    max_decode_pixels: int | None = Field(
        None,
        ge=1,
        description="pixels one API process decodes at once to check uploads (default: NST_MAX_INPUT_PIXELS); "
        "a decode waits for its share, and past NST_DECODE_WAIT_SECONDS the submission is answered 503",
    )
    decode_wait_seconds: float = Field(
        10.0, ge=0, description="how long a submission waits for its pixels in the decode budget before a 503"
    )
    max_iterations: int = Field(20_000, ge=1, description="per job")
    max_side: int = Field(4096, ge=16, description="largest working height or width")
    max_queued_jobs: int = Field(1000, ge=1, description="jobs waiting; past it, 429")
    max_sweep_cells: int = Field(
        24, ge=1, description="jobs one sweep (POST /sweeps) may make: the product of its grid's axes; past it, 422"
    )
    max_header_bytes: int = Field(
        65_536, ge=4096, description="a request's headers larger than this are refused (431) and the connection closed"
    )
    header_timeout_seconds: float = Field(
        20.0, gt=0, description="a connection must send a request's whole headers within this (408 and closed if not)"
    )
    job_timeout_seconds: int = Field(6 * 3600, ge=10, description="a running job past this fails")
    cors_origins: str = Field(
        "", description="comma-separated origins whose pages may call the API from a browser (CORS), changes included"
    )
    allowed_hosts: str = Field(
        "",
        description="comma-separated host names the API answers to besides IP addresses and localhost "
        "(`nst.example.com`, `*.example.com`, or `*` for any): a request for any other Host is refused (421)",
    )
    device: str | None = Field(None, description="worker device: cpu, cuda, cuda:N (default: CUDA if available)")
    worker_heartbeat_seconds: float = Field(5.0, gt=0, description="how often a worker says it is alive")
    lease_seconds: int = Field(30, ge=2, description="a running job whose worker is silent this long is requeued")
    max_attempts: int = Field(3, ge=1, description="runs of one job (worker crashes) before it fails")
    sse_heartbeat_seconds: float = Field(15.0, gt=0, description="a comment line on an idle event stream this often")
    checkpoint_every: int = Field(200, ge=1, description="iterations between checkpoints a crashed job resumes from")
    snapshot_max_side: int = Field(
        1024, ge=16, description="snapshots are the content's size scaled down to fit this long side (never up)"
    )
    api_keys_file: Path | None = Field(
        None,
        description="the API keys file (`nst keys add NAME`); when set, every /jobs route needs "
        "`Authorization: Bearer KEY` and a job is visible only to the key that made it",
    )
    max_active_jobs_per_key: int | None = Field(
        100,
        ge=1,
        description="queued plus running jobs per API key (without keys: of everyone together); past it, 429 "
        "(set empty: no limit)",
    )
    max_submissions_per_minute: int = Field(
        60, ge=1, description="jobs accepted per API key (without keys: of everyone together) per minute; past it, 429"
    )
    max_stored_bytes_per_key: int = Field(
        1_000_000_000,
        ge=1,
        description="bytes one API key's jobs (without keys: everyone's) may hold: uploads until the job "
        "ends, snapshots and results until they expire; past it, 429",
    )
    memory_budget_bytes: int | None = Field(
        None,
        ge=1,
        description="memory a worker's job may take (default: 85% of the GPU's free memory, or on the CPU of "
        "the memory available to the process, its cgroup's limit if it has one)",
    )
    calibrate: bool = Field(
        True,
        description="measure the worker's device at start (memory, speed, bf16, compiling; core.calibration) and "
        "serve with what it finds; 0: the written memory constants and the defaults",
    )
    calibration_speed_size: str = Field(
        "384x512", description="HEIGHTxWIDTH at which a worker times an iteration at start (the default working size)"
    )
    calibration_memory_sides: str = Field(
        "auto",
        description="square working sides at which a worker measures its peak memory at start: two or more, "
        "comma-separated, or auto (192,256,320 on the CPU, 256,512,768 on CUDA)",
    )
    # Continuous batching (core.batch, worker/batch_runner.py).
    max_batch: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = Field(
        "auto",
        description="images one optimisation may hold (1: never batch); auto: what the worker measured at start "
        "(NST_CALIBRATE), else 8 on CUDA and 4 on the CPU below 96x96 pixels; always within the memory budget",
    )
    # Webhooks (jobs/webhooks.py).
    webhook_secret: SecretStr | None = Field(
        None,
        description="signs webhook deliveries (Standard Webhooks): whsec_ and at least 16 base64 bytes; without it, "
        "a job that asks for a webhook is refused",
    )
    webhook_allow_private: bool = Field(
        False, description="let webhooks go to loopback, private and link-local addresses (tests, a trusted network)"
    )
    webhook_snapshot_interval_seconds: float = Field(5.0, gt=0, description="at most one snapshot webhook this often")
    webhook_retry_base_seconds: float = Field(
        4.0, gt=0, description="a failed delivery's first retry waits this long, each next one twice as long"
    )

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        """A malformed secret stops the process at start, not each delivery."""
        if value is not None and value.get_secret_value():
            check_secret(value.get_secret_value())
            return value
        return None

    @field_validator(
        "api_keys_file",
        "max_active_jobs_per_key",
        "max_decode_pixels",
        "result_redirect_seconds",
        "api_processes",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`NST_API_KEYS_FILE=` (as a compose file or a shell leaves it) means no file, not the path ""."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def decode_pixel_budget(self) -> int:
        return self.max_decode_pixels or self.max_input_pixels

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]

    @property
    def visibility_timeout(self) -> int:
        """Above the longest allowed job, or Redis redelivers a running job to a second worker."""
        return self.job_timeout_seconds + 3600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


MIN_SECRET_BYTES = 16


def check_secret(secret: str) -> None:
    """ValueError unless `secret` is `whsec_` (optional) and at least 16 bytes of base64."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("NST_WEBHOOK_SECRET must be whsec_ followed by base64") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"NST_WEBHOOK_SECRET must hold at least {MIN_SECRET_BYTES} bytes (base64)")
