"""The AWS calls of one request: read the S3 photo, invoke the endpoint, write the S3 result.

Each failure becomes a WireError with the status the caller should see: the model refusing a photo
keeps its 4xx and message; an unreachable or failing endpoint is 502, a slow one 504.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError
from mask_config import Clients, HandlerConfig, S3Location
from mask_request import check_length

from trainer.wire import OutputFormat, WireError, sniff_photo

# Where an S3 input's result goes: suffix of the output key per format.
OUTPUT_SUFFIXES = {
    OutputFormat.MASK_PNG: ".mask.png",
    OutputFormat.RLE_JSON: ".rle.json",
    OutputFormat.CUTOUT_PNG: ".cutout.png",
    OutputFormat.FINISHED_JPEG: ".finished.jpg",
    OutputFormat.FINISHED_PNG: ".finished.png",
}


@dataclass(frozen=True)
class Result:
    """The endpoint's answer: the mask PNG, the RLE JSON or the cut-out PNG."""

    body: bytes
    content_type: str


def read_s3_photo(location: S3Location, config: HandlerConfig, clients: Clients) -> bytes:
    """The object's bytes; its size is checked before download, so big objects are never read."""
    try:
        obj = clients.s3.get_object(Bucket=location.bucket, Key=location.key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "NoSuchBucket", "404"}:
            raise WireError(f'"s3_uri" {location.uri}: no such object', 404) from error
        raise WireError(f"could not read {location.uri}: {error}", 502) from error
    with obj["Body"] as body:
        check_length(obj["ContentLength"], config.max_image_bytes, config)
        return body.read()


def invoke_endpoint(
    photo: bytes, fmt: OutputFormat, config: HandlerConfig, clients: Clients, attributes: str = ""
) -> Result:
    """One invoke_endpoint call (``attributes``: the finish options as CustomAttributes); endpoint
    failures become WireErrors carrying its message."""
    content_type = sniff_photo(photo)
    extra = {"CustomAttributes": attributes} if attributes else {}
    try:
        response = clients.runtime.invoke_endpoint(
            EndpointName=config.endpoint_name, Body=photo, ContentType=content_type, Accept=fmt.value, **extra
        )
        return Result(response["Body"].read(), response.get("ContentType") or fmt.value)
    except ClientError as error:
        raise endpoint_error(error, config.endpoint_name) from error
    except (ReadTimeoutError, ConnectTimeoutError) as error:
        raise WireError(f"endpoint {config.endpoint_name} did not answer in time: {error}", 504) from error
    except BotoCoreError as error:
        raise WireError(f"could not reach endpoint {config.endpoint_name}: {error}", 502) from error


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


def endpoint_error(error: ClientError, endpoint_name: str) -> WireError:
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
        return WireError(f"endpoint {endpoint_name} rejected the photo: {message}", original)
    return WireError(f"endpoint {endpoint_name} failed: {message}", 502)


def write_result(
    result: Result, source: S3Location, fmt: OutputFormat, config: HandlerConfig, clients: Clients
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
        raise WireError(f"could not write the result to {target.uri}: {error}", 502) from error
    return target
