"""AWS Lambda in front of the U-Net SageMaker endpoint: a car photo in, its mask or cut-out out.

Why a Lambda at all: studio tools call one HTTPS URL (API Gateway) with a photo, without AWS
credentials or knowledge of SageMaker. This function turns that request into one
``sagemaker-runtime.invoke_endpoint`` call and the endpoint's answer back into an HTTP response.

Requests it understands (all answered with an API Gateway proxy response dict):

- API Gateway proxy events, REST API (payload 1.0) and HTTP API (payload 2.0), body either the
  photo's bytes (``Content-Type: image/jpeg`` or ``image/png``, usually ``isBase64Encoded``) or
  JSON ``{"s3_uri": "s3://bucket/in/car.jpg"}`` / ``{"image_b64": "..."}``;
- direct invocations (``aws lambda invoke``, Step Functions): ``{"image_b64": ..., "format": ...}``
  or ``{"s3_uri": ..., "format": ...}``.

The result format comes from ``?format=png|json|cutout`` (or ``"format"`` in JSON), else from the
``Accept`` header; the default is the PNG mask. Photos bigger than a synchronous Lambda payload
allows (6 MB, and base64 costs a third of it) go through S3: the function reads them from
``INPUT_S3_PREFIX`` only, writes the result under ``OUTPUT_S3_PREFIX`` and answers with its URI.

It imports boto3 only (present in the Lambda Python runtime): no TensorFlow, NumPy or Pillow,
so the deployment package is this one file. Configuration comes from the environment
(:class:`HandlerConfig`); each request logs one JSON line to stdout, which CloudWatch Logs Insights
parses into fields.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import posixpath
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

MB = 1024 * 1024
# Synchronous Lambda invocations carry at most 6 MB each way, the event's JSON included.
LAMBDA_PAYLOAD_LIMIT = 6 * MB
# Headroom for the proxy event's headers, requestContext and JSON framing around the body.
EVENT_OVERHEAD = 64 * 1024
# The largest photo that fits inline once API Gateway has base64-encoded it into the event.
INLINE_PHOTO_LIMIT = (LAMBDA_PAYLOAD_LIMIT - EVENT_OVERHEAD) // 4 * 3
# SageMaker real-time invoke_endpoint accepts request bodies up to 6 MB (S3 photos included).
ENDPOINT_PAYLOAD_LIMIT = 6 * MB

# The RGBA cut-out's media type, as documented by serving/inference.py (the endpoint).
CUTOUT_MEDIA_TYPE = "image/png; variant=cutout"
# ?format= value -> the Accept header the endpoint answers.
FORMATS: dict[str, str] = {"png": "image/png", "json": "application/json", "cutout": CUTOUT_MEDIA_TYPE}
# Where an S3 input's result goes: suffix of the output key per format.
OUTPUT_SUFFIXES: dict[str, str] = {"png": ".mask.png", "json": ".rle.json", "cutout": ".cutout.png"}
# Content types a photo may be sent with; the bytes themselves decide JPEG or PNG.
PHOTO_CONTENT_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "application/x-image"})
PHOTO_SIGNATURES: dict[bytes, str] = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}

LOGGER_NAME = "carvana.lambda"


class ConfigError(ValueError):
    """The function's environment is incomplete or malformed (a deployment mistake, answered 500)."""


class RequestError(Exception):
    """A request the function refuses; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
    log_level: str = "INFO"
    region: str = "us-east-1"
    # Read here rather than left to boto3 so that cached clients follow the configuration.
    runtime_endpoint_url: str | None = None
    s3_endpoint_url: str | None = None
    endpoint_timeout_s: float = 25.0  # under API Gateway's 29-30 s integration timeout

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
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        shared_url = env.get("AWS_ENDPOINT_URL") or None
        return cls(
            endpoint_name=endpoint_name,
            input_prefix=input_prefix,
            output_prefix=output_prefix,
            max_image_bytes=min(int(raw_max), ENDPOINT_PAYLOAD_LIMIT),
            log_level=log_level,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            runtime_endpoint_url=env.get("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME") or shared_url,
            s3_endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or shared_url,
        )


@dataclass(frozen=True)
class Clients:
    """The boto3 clients of one configuration, created once per warm Lambda container."""

    runtime: Any
    s3: Any


@functools.lru_cache(maxsize=4)
def clients_for(config: HandlerConfig) -> Clients:
    """boto3 clients for ``config``; cached because creating a client costs tens of milliseconds."""
    # One attempt: a retried inference would double the model's work and overrun API Gateway's
    # 30 s; the timeouts end the call in time to answer 504 with a message instead.
    botocore_config = Config(
        connect_timeout=3,
        read_timeout=config.endpoint_timeout_s,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    return Clients(
        runtime=boto3.client(
            "sagemaker-runtime",
            region_name=config.region,
            endpoint_url=config.runtime_endpoint_url,
            config=botocore_config,
        ),
        s3=boto3.client("s3", region_name=config.region, endpoint_url=config.s3_endpoint_url),
    )


class _StdoutJsonLines(logging.Handler):
    """Writes each record's message, one JSON document, as one line on the current stdout.

    Lambda ships stdout lines to CloudWatch unchanged, so the lines stay machine-readable; the
    stream is looked up per record so test runners that swap ``sys.stdout`` still see them.
    """

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(record.getMessage() + "\n")
        sys.stdout.flush()


def request_logger(level: str) -> logging.Logger:
    """The logger for request lines, at ``level``; its own handler keeps lines free of prefixes."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _StdoutJsonLines) for h in logger.handlers):
        logger.addHandler(_StdoutJsonLines())
        logger.propagate = False
    logger.setLevel(level)
    return logger


@dataclass(frozen=True)
class Request:
    """What the function needs from any event shape: the body, its headers and the format asked."""

    source: str  # "http-api-v2", "rest-api-v1" or "direct"
    api_request_id: str | None
    method: str
    content_type: str
    accept: str
    format: str | None  # ?format=, else the JSON body's "format"; wins over Accept
    body: bytes
    fields: dict[str, Any] = field(default_factory=dict)  # a JSON body's or direct invocation's keys


def _lower_keys(headers: dict[str, Any] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items() if v is not None}


def _event_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(400, f"body is marked isBase64Encoded but is not valid base64: {error}") from error


def parse_event(event: object) -> Request:
    """Read an API Gateway proxy event (payload 1.0 or 2.0) or a direct invocation into a Request."""
    if not isinstance(event, dict):
        raise RequestError(400, f"event must be a JSON object, got {type(event).__name__}")
    context = event.get("requestContext") or {}
    if event.get("version") == "2.0" and "http" in context:
        headers = _lower_keys(event.get("headers"))
        query = event.get("queryStringParameters") or {}
        source, method = "http-api-v2", context["http"].get("method", "")
    elif "httpMethod" in event:
        headers = _lower_keys(event.get("headers"))
        query = event.get("queryStringParameters") or {}
        source, method = "rest-api-v1", event["httpMethod"]
    else:
        fmt = event.get("format")
        fields = dict(event)
        return Request("direct", None, "POST", "application/json", "", _opt_str(fmt), b"", fields)
    body = _event_body(event)
    content_type = headers.get("content-type", "")
    is_json = _media_type(content_type).split(";")[0] == "application/json"
    fields = _json_object(body) if is_json and body else {}
    return Request(
        source=source,
        api_request_id=context.get("requestId"),
        method=method.upper(),
        content_type=content_type,
        accept=headers.get("accept", ""),
        format=_opt_str(query.get("format") or fields.get("format")),
        body=body,
        fields=fields,
    )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from error
    if not isinstance(fields, dict):
        raise RequestError(400, f"JSON body must be an object, got {type(fields).__name__}")
    return fields


def _media_type(value: str) -> str:
    """``value`` lower-cased with spaces and the ``q`` weight dropped, parameters otherwise kept."""
    parts = [p.strip().lower() for p in value.split(";")]
    params = [p.replace(" ", "") for p in parts[1:] if p and not p.startswith("q=")]
    return "; ".join([parts[0], *params])


def choose_format(request: Request) -> str:
    """The result format: ``format`` if given, else the first acceptable Accept entry, else png."""
    if request.format is not None:
        if request.format not in FORMATS:
            raise RequestError(400, f"format must be one of {', '.join(FORMATS)}; got {request.format!r}")
        return request.format
    if not request.accept.strip():
        return "png"
    by_media = {_media_type(media): name for name, media in FORMATS.items()}
    by_media |= {"*/*": "png", "image/*": "png", "application/*": "json"}
    ranked = []  # (-q, position, media): highest weight first, then the order given
    for position, entry in enumerate(request.accept.split(",")):
        weights = [p.strip()[2:] for p in entry.split(";") if p.strip().lower().startswith("q=")]
        try:
            weight = float(weights[0]) if weights else 1.0
        except ValueError:
            weight = 1.0
        if weight > 0:  # q=0 means "not this one"
            ranked.append((-weight, position, _media_type(entry)))
    for _, _, media in sorted(ranked):
        if media in by_media:
            return by_media[media]
    raise RequestError(
        406,
        f"Accept {request.accept!r} is not supported: ask for image/png (mask), application/json (RLE) "
        f"or {CUTOUT_MEDIA_TYPE} (cut-out), or add ?format={'|'.join(FORMATS)}",
        headers={"Vary": "Accept"},
    )


def sniff_photo(photo: bytes) -> str:
    """The photo's real type from its first bytes; 400 when it is neither JPEG nor PNG."""
    for signature, media in PHOTO_SIGNATURES.items():
        if photo.startswith(signature):
            return media
    raise RequestError(400, f"body is not a JPEG or PNG image (it starts with {photo[:8]!r})")


def photo_or_location(request: Request, config: HandlerConfig) -> bytes | S3Location:
    """The inline photo (size checked) or the S3 object to read (prefix checked), from any body."""
    media = _media_type(request.content_type).split(";")[0]
    if request.source != "direct":
        if not request.body:
            raise RequestError(
                400, 'request body is empty: send the photo (image/jpeg or image/png) or JSON {"s3_uri": ...}'
            )
        if media in PHOTO_CONTENT_TYPES:
            return _check_size(request.body, _inline_limit(config), config)
        if media != "application/json":
            raise RequestError(
                415,
                f"Content-Type {request.content_type or '(none)'!r} is not supported: send image/jpeg or "
                'image/png bytes, or application/json {"s3_uri": "s3://bucket/key.jpg"}',
            )
    fields = request.fields
    if ("s3_uri" in fields) == ("image_b64" in fields):
        raise RequestError(
            400, 'send exactly one of "s3_uri" (s3://bucket/key.jpg) or "image_b64" (base64 photo)'
        )
    if "s3_uri" in fields:
        return _allowed_location(fields["s3_uri"], config)
    try:
        data = base64.b64decode(fields["image_b64"], validate=True)
    except (binascii.Error, TypeError, ValueError) as error:
        raise RequestError(400, f'"image_b64" is not valid base64: {error}') from error
    if not data:
        raise RequestError(400, '"image_b64" is empty: it must hold the base64 of a JPEG or PNG photo')
    return _check_size(data, _inline_limit(config), config)


def _inline_limit(config: HandlerConfig) -> int:
    return min(config.max_image_bytes, INLINE_PHOTO_LIMIT)


def _check_size(data: bytes, limit: int, config: HandlerConfig) -> bytes:
    _check_length(len(data), limit, config)
    return data


def _check_length(size: int, limit: int, config: HandlerConfig) -> None:
    if size <= limit:
        return
    hint = (
        f'; upload it under {config.input_prefix.uri} and send {{"s3_uri": ...}}'
        if config.input_prefix and limit < config.max_image_bytes
        else ""
    )
    raise RequestError(413, f"photo is {size:,} bytes, over the limit of {limit:,} bytes{hint}")


def _allowed_location(uri: object, config: HandlerConfig) -> S3Location:
    """``uri`` parsed and checked to lie below INPUT_S3_PREFIX (the only place the role may read)."""
    if config.input_prefix is None or config.output_prefix is None:
        raise RequestError(
            400, "S3 input is not enabled here (INPUT_S3_PREFIX and OUTPUT_S3_PREFIX are unset)"
        )
    try:
        location = S3Location.parse(uri, '"s3_uri"')
    except ValueError as error:
        raise RequestError(400, str(error)) from error
    relative = location.relative_to(config.input_prefix)
    if not relative or relative.endswith("/"):
        raise RequestError(
            403, f'"s3_uri" {location.uri} is outside the allowed input prefix {config.input_prefix.uri}'
        )
    return location


def read_s3_photo(location: S3Location, config: HandlerConfig, clients: Clients) -> bytes:
    """The object's bytes; its size is checked before download, so big objects are never read."""
    try:
        obj = clients.s3.get_object(Bucket=location.bucket, Key=location.key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "NoSuchBucket", "404"}:
            raise RequestError(404, f'"s3_uri" {location.uri}: no such object') from error
        raise RequestError(502, f"could not read {location.uri}: {error}") from error
    with obj["Body"] as body:
        _check_length(obj["ContentLength"], config.max_image_bytes, config)
        return body.read()


@dataclass(frozen=True)
class Result:
    """The endpoint's answer: the mask PNG, the RLE JSON or the cut-out PNG."""

    body: bytes
    content_type: str


def invoke_endpoint(photo: bytes, fmt: str, config: HandlerConfig, clients: Clients) -> Result:
    """One invoke_endpoint call; endpoint failures become RequestErrors carrying its message."""
    content_type = sniff_photo(photo)
    try:
        response = clients.runtime.invoke_endpoint(
            EndpointName=config.endpoint_name, Body=photo, ContentType=content_type, Accept=FORMATS[fmt]
        )
        return Result(response["Body"].read(), response.get("ContentType") or FORMATS[fmt])
    except ClientError as error:
        raise endpoint_error(error, config.endpoint_name) from error
    except (ReadTimeoutError, ConnectTimeoutError) as error:
        raise RequestError(504, f"endpoint {config.endpoint_name} did not answer in time: {error}") from error
    except BotoCoreError as error:
        raise RequestError(502, f"could not reach endpoint {config.endpoint_name}: {error}") from error


def _unwrap_message(message: str, limit: int = 1000) -> str:
    """The container's ``{"error": "..."}`` body reduced to its text, at most ``limit`` characters.

    The cap keeps an HTML error page from a proxy in front of the endpoint out of the response.
    """
    try:
        parsed = json.loads(message)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        message = str(parsed["error"])
    return message if len(message) <= limit else message[:limit] + "..."


def endpoint_error(error: ClientError, endpoint_name: str) -> RequestError:
    """Map an invoke_endpoint error: the model refusing the photo keeps its 4xx, the rest is 502.

    SageMaker wraps a container's non-200 answer in ModelError with OriginalStatusCode and
    OriginalMessage; a 4xx there (an undecodable or oversized image) is the caller's mistake, so
    passing it on as 502 would send them looking for an outage.
    """
    response = error.response
    message = _unwrap_message(
        str(response.get("OriginalMessage") or response.get("Error", {}).get("Message") or error)
    )
    original = response.get("OriginalStatusCode")
    if isinstance(original, int) and 400 <= original < 500:
        return RequestError(original, f"endpoint {endpoint_name} rejected the photo: {message}")
    return RequestError(502, f"endpoint {endpoint_name} failed: {message}")


def write_result(
    result: Result, source: S3Location, fmt: str, config: HandlerConfig, clients: Clients
) -> S3Location:
    """Store an S3 input's result under OUTPUT_S3_PREFIX, mirroring its path below INPUT_S3_PREFIX.

    Mirroring keeps names unique across input folders and makes retries overwrite, not duplicate.
    """
    assert config.input_prefix is not None and config.output_prefix is not None  # checked on input
    stem = posixpath.splitext(source.relative_to(config.input_prefix) or source.key)[0]
    target = S3Location(config.output_prefix.bucket, config.output_prefix.key + stem + OUTPUT_SUFFIXES[fmt])
    try:
        clients.s3.put_object(
            Bucket=target.bucket, Key=target.key, Body=result.body, ContentType=result.content_type
        )
    except (ClientError, BotoCoreError) as error:
        raise RequestError(502, f"could not write the result to {target.uri}: {error}") from error
    return target


def json_response(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A proxy response with a JSON body (errors are ``{"error": message}``)."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(payload),
        "isBase64Encoded": False,
    }


def result_response(result: Result, fmt: str) -> dict[str, Any]:
    """A proxy response carrying the endpoint's answer: JSON as text, images base64-encoded."""
    if fmt == "json":
        body, encoded = result.body.decode("utf-8"), False
    else:
        body, encoded = base64.b64encode(result.body).decode("ascii"), True
    if len(body) > LAMBDA_PAYLOAD_LIMIT - EVENT_OVERHEAD:
        raise RequestError(
            413,
            f"the {fmt} result is {len(body):,} bytes once encoded, over Lambda's 6 MB response limit: "
            'send the photo as {"s3_uri": ...} so the result goes to S3, or ask for ?format=json',
        )
    return {
        "statusCode": 200,
        "headers": {"Content-Type": result.content_type},
        "body": body,
        "isBase64Encoded": encoded,
    }


def serve(event: object, config: HandlerConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Answer one event; ``record`` collects the request's log fields as they become known."""
    request = parse_event(event)
    record.update(source=request.source, api_request_id=request.api_request_id)
    if request.method != "POST":
        raise RequestError(405, f"method {request.method} is not allowed: POST the photo", {"Allow": "POST"})
    photo = photo_or_location(request, config)
    fmt = choose_format(request)
    record["format"] = fmt
    clients = clients_for(config)
    location = photo if isinstance(photo, S3Location) else None
    if location is not None:
        record["input_uri"] = location.uri
        photo = read_s3_photo(location, config, clients)
    assert isinstance(photo, bytes)
    record["size_bytes"] = len(photo)
    result = invoke_endpoint(photo, fmt, config, clients)
    if location is None:
        return result_response(result, fmt)
    target = write_result(result, location, fmt, config, clients)
    record["output_uri"] = target.uri
    return json_response(
        200,
        {
            "input_uri": location.uri,
            "output_uri": target.uri,
            "content_type": result.content_type,
            "size_bytes": len(result.body),
        },
    )


def handler(event: object, context: Any) -> dict[str, Any]:
    """The Lambda entry point (``handler.handler``): always answers a proxy response dict."""
    started = time.monotonic()
    record: dict[str, Any] = {"request_id": getattr(context, "aws_request_id", None)}
    try:
        config = HandlerConfig.from_env()
    except ConfigError as error:
        response = json_response(500, {"error": f"function is misconfigured: {error}"})
        logger = request_logger("INFO")
        record["error"] = str(error)
    else:
        logger = request_logger(config.log_level)
        record["endpoint"] = config.endpoint_name
        try:
            response = serve(event, config, record)
        except RequestError as error:
            response = json_response(error.status, {"error": error.message}, error.headers)
            record["error"] = error.message
        except Exception as error:  # the caller gets JSON, the log gets the traceback
            logger.exception(json.dumps({**record, "error": repr(error)}))
            response = json_response(500, {"error": f"internal error: {type(error).__name__}"})
    record.update(status=response["statusCode"], latency_ms=round((time.monotonic() - started) * 1000, 1))
    status = response["statusCode"]
    logger.log(
        logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR,
        json.dumps(record),
    )
    return response
