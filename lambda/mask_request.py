"""What a request asks for, from any event shape: the photo (or its S3 address) and the format.

API Gateway proxy events (REST API payload 1.0, HTTP API payload 2.0) and direct invocations are
read into one :class:`Request`; the photo is checked against the size limits here, before anything
is sent to the endpoint. Media types, negotiation, base64 and the error type are trainer/wire.py's,
the same code the endpoint runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mask_config import HandlerConfig, S3Location

from trainer.wire import (
    LAMBDA_PAYLOAD_LIMIT,
    MEDIA_JSON,
    PHOTO_CONTENT_TYPES,
    OutputFormat,
    WireError,
    b64decode,
    json_object,
    media_type,
    negotiate,
)

# Headroom for the proxy event's headers, requestContext and JSON framing around the body.
EVENT_OVERHEAD = 64 * 1024
# The largest photo that fits inline once API Gateway has base64-encoded it into the event.
INLINE_PHOTO_LIMIT = (LAMBDA_PAYLOAD_LIMIT - EVENT_OVERHEAD) // 4 * 3
# Without Accept or ?format= the function answers the PNG mask (the endpoint's default is JSON).
DEFAULT_OUTPUT = OutputFormat.MASK_PNG
# The route that hands out presigned uploads (template.yaml's POST /uploads); every other is /mask.
UPLOADS_ROUTE = "/uploads"


@dataclass(frozen=True)
class Request:
    """What the function needs from any event shape: the body, its headers and the format asked."""

    source: str  # "http-api-v2", "rest-api-v1" or "direct"
    api_request_id: str | None
    method: str
    path: str  # the request's path ("/mask", "/uploads"; with a stage prefix on some APIs)
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
    return b64decode(body, "the body (marked isBase64Encoded)")


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def parse_event(event: object) -> Request:
    """Read an API Gateway proxy event (payload 1.0 or 2.0) or a direct invocation into a Request."""
    if not isinstance(event, dict):
        raise WireError(f"event must be a JSON object, got {type(event).__name__}")
    context = event.get("requestContext") or {}
    if event.get("version") == "2.0" and "http" in context:
        headers = _lower_keys(event.get("headers"))
        query = event.get("queryStringParameters") or {}
        source, method = "http-api-v2", context["http"].get("method", "")
        path = str(event.get("rawPath") or context["http"].get("path") or "")
    elif "httpMethod" in event:
        headers = _lower_keys(event.get("headers"))
        query = event.get("queryStringParameters") or {}
        source, method = "rest-api-v1", event["httpMethod"]
        path = str(event.get("path") or event.get("resource") or "")
    else:
        fields = dict(event)
        return Request(
            "direct", None, "POST", "/mask", MEDIA_JSON, "", _opt_str(event.get("format")), b"", fields
        )
    body = _event_body(event)
    content_type = headers.get("content-type", "")
    fields = json_object(body) if media_type(content_type)[0] == MEDIA_JSON and body else {}
    return Request(
        source=source,
        api_request_id=context.get("requestId"),
        method=method.upper(),
        path=path,
        content_type=content_type,
        accept=headers.get("accept", ""),
        format=_opt_str(query.get("format") or fields.get("format")),
        body=body,
        fields=fields,
    )


def wants_upload(request: Request) -> bool:
    """Whether the request is for a presigned upload (``POST /uploads``) rather than a mask."""
    return request.path.rstrip("/").endswith(UPLOADS_ROUTE)


def upload_content_type(request: Request) -> str:
    """The photo type a ``POST /uploads`` asks to upload: JSON ``{"content_type": ...}``, default JPEG."""
    value = request.fields.get("content_type", "image/jpeg")
    return value if isinstance(value, str) else repr(value)


def choose_format(request: Request) -> OutputFormat:
    """The result format: ``?format=`` (or ``"format"``) if given, else by ``Accept``, else the mask."""
    if request.format is not None:
        return OutputFormat.from_query(request.format)
    try:
        return negotiate(request.accept, DEFAULT_OUTPUT)
    except WireError as error:  # point callers who cannot set Accept at ?format=
        choices = "|".join(member.query for member in OutputFormat)
        raise WireError(f"{error.message}, or add ?format={choices}", error.status, error.headers) from None


def photo_or_location(request: Request, config: HandlerConfig) -> bytes | S3Location:
    """The inline photo (size checked) or the S3 object to read (prefix checked), from any body."""
    media, _ = media_type(request.content_type)
    if request.source != "direct":
        if not request.body:
            raise WireError(
                'request body is empty: send the photo (image/jpeg or image/png) or JSON {"s3_uri": ...}'
            )
        if media in PHOTO_CONTENT_TYPES:
            return _check_size(request.body, inline_limit(config), config)
        if media != MEDIA_JSON:
            raise WireError(
                f"Content-Type {request.content_type or '(none)'!r} is not supported: send image/jpeg or "
                'image/png bytes, or application/json {"s3_uri": "s3://bucket/key.jpg"}',
                415,
            )
    fields = request.fields
    if ("s3_uri" in fields) == ("image_b64" in fields):
        raise WireError('send exactly one of "s3_uri" (s3://bucket/key.jpg) or "image_b64" (base64 photo)')
    if "s3_uri" in fields:
        return allowed_location(fields["s3_uri"], config)
    data = b64decode(fields["image_b64"], '"image_b64"')
    if not data:
        raise WireError('"image_b64" is empty: it must hold the base64 of a JPEG or PNG photo')
    return _check_size(data, inline_limit(config), config)


def inline_limit(config: HandlerConfig) -> int:
    """The largest photo accepted inside the event itself."""
    return min(config.max_image_bytes, INLINE_PHOTO_LIMIT)


def _check_size(data: bytes, limit: int, config: HandlerConfig) -> bytes:
    check_length(len(data), limit, config)
    return data


def check_length(size: int, limit: int, config: HandlerConfig) -> None:
    """413 for a photo over ``limit`` bytes, pointing to S3 when that would have taken it."""
    if size <= limit:
        return
    hint = (
        f'; upload it under {config.input_prefix.uri} and send {{"s3_uri": ...}}'
        if config.input_prefix and limit < config.max_image_bytes
        else ""
    )
    raise WireError(f"photo is {size:,} bytes, over the limit of {limit:,} bytes{hint}", 413)


def allowed_location(uri: object, config: HandlerConfig) -> S3Location:
    """``uri`` parsed and checked to lie below INPUT_S3_PREFIX (the only place the role may read)."""
    if config.input_prefix is None or config.output_prefix is None:
        raise WireError("S3 input is not enabled here (INPUT_S3_PREFIX and OUTPUT_S3_PREFIX are unset)")
    try:
        location = S3Location.parse(uri, '"s3_uri"')
    except ValueError as error:
        raise WireError(str(error)) from error
    relative = location.relative_to(config.input_prefix)
    if not relative or relative.endswith("/"):
        raise no_such_photo(location.uri, config)
    return location


def no_such_photo(uri: str, config: HandlerConfig) -> WireError:
    """The one answer for a photo the caller cannot have: missing, outside INPUT_S3_PREFIX, or
    unreadable. The same 404 and message for all, so the answer never tells whether a key exists."""
    prefix = config.input_prefix.uri if config.input_prefix else "(none)"
    return WireError(f'"s3_uri" {uri}: no photo there that this API may read (photos go under {prefix})', 404)
