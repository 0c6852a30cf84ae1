"""The function's configuration (its environment) and the boto3 clients made from it.

Settings come from the environment template.yaml sets (or the local gateway's); a missing or
malformed one is a deployment mistake, answered 500 with a message naming the variable.

Every AWS call is bounded in time, so a request is answered (504 with a message) before Lambda
kills it: S3 calls get short timeouts and a few retries; the endpoint call gets one attempt whose
read timeout is what is left of the function's time (``context.get_remaining_time_in_millis()``)
minus a margin to answer, capped under API Gateway's 30 s.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from trainer.wire import ENDPOINT_PAYLOAD_LIMIT, MAX_PIXELS, PhotoLimits, WireError

# S3 (small reads and writes in the same region): fail fast, retry a few times with backoff.
S3_CLIENT_CONFIG = Config(
    connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 3}
)
# Kept back from the function's remaining time for writing the result and answering.
ANSWER_MARGIN_S = 1.5
# Less than this left for the endpoint call: answer 504 at once instead of starting it.
MIN_ENDPOINT_CALL_S = 1.0


class ConfigError(ValueError):
    """The function's environment is incomplete or malformed (a deployment mistake, answered 500)."""


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket/key`` address, split once so prefix checks compare parts, not strings."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: object, what: str) -> S3Location:
        """Parse ``uri``; ``what`` names the field or variable in the error message."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ValueError(f"{what} must look like s3://bucket/key, got {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or "/" in bucket or " " in bucket:
            raise ValueError(f"{what} has no valid bucket name: {uri!r} (expected s3://bucket/key)")
        return cls(bucket, key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_prefix(self) -> S3Location:
        """The same location as a folder, so ``s3://b/in`` does not also admit ``s3://b/inbox/``."""
        key = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Location(self.bucket, key)

    def relative_to(self, prefix: S3Location) -> str | None:
        """This object's key below ``prefix`` (a folder), or None when it lies outside it."""
        if self.bucket != prefix.bucket or not self.key.startswith(prefix.key):
            return None
        return self.key[len(prefix.key) :]


@dataclass(frozen=True)
class HandlerConfig:
    """The function's settings, read from its environment (set by template.yaml or the gateway)."""

    endpoint_name: str
    input_prefix: S3Location | None = None
    output_prefix: S3Location | None = None
    max_image_bytes: int = ENDPOINT_PAYLOAD_LIMIT
    max_pixels: int = MAX_PIXELS  # CARVANA_MAX_PIXELS, as the endpoint reads it
    log_level: str = "INFO"
    region: str = "us-east-1"
    # Read here rather than left to boto3 so that cached clients follow the configuration.
    runtime_endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    endpoint_timeout_s: float = 25.0  # under API Gateway's 29-30 s integration timeout
    upload_expiry_s: int = 300  # how long a presigned upload (POST /uploads) stays valid

    @property
    def limits(self) -> PhotoLimits:
        """The photo limits the Lambda screens with, from the bytes' headers (trainer.wire)."""
        return PhotoLimits(self.max_image_bytes, self.max_pixels)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HandlerConfig:
        """Build the config from ``env`` (default ``os.environ``); ConfigError names the variable."""
        env = os.environ if env is None else env
        endpoint_name = env.get("ENDPOINT_NAME", "").strip()
        if not endpoint_name:
            raise ConfigError("ENDPOINT_NAME is not set: the name of the SageMaker endpoint to invoke")
        try:
            input_prefix, output_prefix = (
                S3Location.parse(env[name], name).as_prefix() if env.get(name) else None
                for name in ("INPUT_S3_PREFIX", "OUTPUT_S3_PREFIX")
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error
        raw_max = env.get("MAX_IMAGE_BYTES", "") or str(ENDPOINT_PAYLOAD_LIMIT)
        if not raw_max.isdigit() or int(raw_max) <= 0:
            raise ConfigError(f"MAX_IMAGE_BYTES must be a positive integer (bytes), got {raw_max!r}")
        try:
            max_pixels = PhotoLimits.from_env(env).max_pixels
        except ValueError as error:
            raise ConfigError(str(error)) from error
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        shared_url = env.get("AWS_ENDPOINT_URL") or None
        return cls(
            endpoint_name=endpoint_name,
            input_prefix=input_prefix,
            output_prefix=output_prefix,
            max_image_bytes=min(int(raw_max), ENDPOINT_PAYLOAD_LIMIT),
            max_pixels=max_pixels,
            log_level=log_level,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            runtime_endpoint_url=env.get("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME") or shared_url,
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or shared_url,
        )


@functools.lru_cache(maxsize=4)
def s3_client(config: HandlerConfig) -> Any:
    """The S3 client for ``config`` (short timeouts, bounded retries); cached per warm container,
    because creating a client costs tens of milliseconds."""
    return boto3.client(
        "s3", region_name=config.region, endpoint_url=config.s3_endpoint_url, config=S3_CLIENT_CONFIG
    )


def endpoint_budget(context: Any, config: HandlerConfig) -> int:
    """Whole seconds the endpoint call may take: the function's remaining time less the margin to
    answer, at most ``endpoint_timeout_s``; WireError 504 when too little is left to try."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    budget = config.endpoint_timeout_s
    if callable(remaining):
        left_s = remaining() / 1000
        budget = min(budget, left_s - ANSWER_MARGIN_S)
        if budget < MIN_ENDPOINT_CALL_S:
            raise WireError(
                f"only {left_s * 1000:.0f} ms of the function's time are left: not enough to call "
                f"endpoint {config.endpoint_name} (it needs {MIN_ENDPOINT_CALL_S + ANSWER_MARGIN_S:g} s); "
                "try again",
                504,
            )
    return max(1, int(budget))


@functools.lru_cache(maxsize=32)
def runtime_client(config: HandlerConfig, read_timeout_s: int) -> Any:
    """A sagemaker-runtime client whose read timeout is ``read_timeout_s`` (see endpoint_budget).

    One client per whole second of budget, cached: botocore fixes timeouts per client. One attempt:
    a retried inference would double the model's work and overrun the caller's deadline.
    """
    botocore_config = Config(
        connect_timeout=min(3, read_timeout_s),
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    return boto3.client(
        "sagemaker-runtime",
        region_name=config.region,
        endpoint_url=config.runtime_endpoint_url,
        config=botocore_config,
    )
