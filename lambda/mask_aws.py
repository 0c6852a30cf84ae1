"""The AWS calls of one request: read the S3 photo, invoke the endpoint, write the S3 result, and
hand out presigned uploads.

Each failure becomes a WireError with the status the caller should see. On AWS the real TF Serving
container answers every handler exception with 500, so the status the model meant is read back from
the error document inside the body (trainer.wire.parse_error_document): a photo the model refuses
keeps its 4xx and message. SageMaker Runtime's own refusals keep their meaning too: throttling is
429 and a model that is not ready 503, both with ``Retry-After``; an unreachable or failing endpoint
is 502, a slow one 504. Errors from the endpoint carry SageMaker's request id (``x-amzn-RequestId``).
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError
from mask_config import HandlerConfig, S3Location, runtime_client, s3_client
from mask_request import check_length, no_such_photo

from trainer.wire import REQUEST_ID_ATTRIBUTE, OutputFormat, WireError, parse_error_document

# Where an S3 input's result goes: suffix of the output key per format.
OUTPUT_SUFFIXES = {
    OutputFormat.MASK_PNG: ".mask.png",
    OutputFormat.RLE_JSON: ".rle.json",
    OutputFormat.CUTOUT_PNG: ".cutout.png",
    OutputFormat.FINISHED_JPEG: ".finished.jpg",
    OutputFormat.FINISHED_PNG: ".finished.png",
}
# Presigned uploads land here, below INPUT_S3_PREFIX, under a random name.
UPLOADS_FOLDER = "uploads/"
UPLOAD_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png"}
# Retry-After (seconds) for SageMaker Runtime's refusals that are worth retrying.
RETRY_AFTER_S = {429: 2, 503: 10}
# SageMaker Runtime error codes (botocore's sagemaker-runtime service-2.json; ThrottlingException is
# the common AWS throttling error, not in the model) -> the status the caller gets.
RUNTIME_ERROR_STATUS = {"ThrottlingException": 429, "ModelNotReadyException": 503, "ServiceUnavailable": 503}
S3_MISSING_OR_FORBIDDEN = {"NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403", "Forbidden"}


class UpstreamError(WireError):
    """A WireError from an AWS call, with the request id AWS gave it (``x-amzn-RequestId``)."""

    def __init__(
        self, message: str, status: int, aws_request_id: str | None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, status, headers)
        self.aws_request_id = aws_request_id


@dataclass(frozen=True)
class Result:
    """The endpoint's answer: the mask PNG, the RLE JSON or the cut-out PNG."""

    body: bytes
    content_type: str
    sagemaker_request_id: str | None = None


def _aws_request_id(response: dict[str, Any]) -> str | None:
    metadata = response.get("ResponseMetadata") or {}
    return metadata.get("RequestId") or (metadata.get("HTTPHeaders") or {}).get("x-amzn-requestid")


def read_s3_photo(location: S3Location, config: HandlerConfig) -> bytes:
    """The object's bytes; its size is checked before download, so big objects are never read.

    A missing object and one the function may not read answer the same 404 (no_such_photo), so
    the answer never tells whether a key exists.
    """
    try:
        obj = s3_client(config).get_object(Bucket=location.bucket, Key=location.key)
    except (ClientError, BotoCoreError) as error:
        if (
            isinstance(error, ClientError)
            and error.response.get("Error", {}).get("Code") in S3_MISSING_OR_FORBIDDEN
        ):
            raise no_such_photo(location.uri, config) from error
        raise WireError(f"could not read {location.uri}: {error}", 502) from error
    with obj["Body"] as body:
        check_length(obj["ContentLength"], config.max_image_bytes, config)
        return body.read()


def invoke_endpoint(
    photo: bytes,
    content_type: str,
    fmt: OutputFormat,
    config: HandlerConfig,
    timeout_s: int,
    request_id: str | None,
    attributes: str = "",
) -> Result:
    """One invoke_endpoint call within ``timeout_s``; its failures become WireErrors (endpoint_error).

    The function's request id goes along as a custom attribute, so the handler's error names it, and
    so do the finished photo's options (``attributes``, trainer.wire.FinishOptions.attributes()).
    """
    pairs = [f"{REQUEST_ID_ATTRIBUTE}={request_id}" if request_id else "", attributes]
    custom = ",".join(pair for pair in pairs if pair)
    extra = {"CustomAttributes": custom} if custom else {}
    try:
        response = runtime_client(config, timeout_s).invoke_endpoint(
            EndpointName=config.endpoint_name, Body=photo, ContentType=content_type, Accept=fmt.value, **extra
        )
        body = response["Body"].read()
    except ClientError as error:
        raise endpoint_error(error, config.endpoint_name) from error
    except (ReadTimeoutError, ConnectTimeoutError) as error:
        raise WireError(
            f"endpoint {config.endpoint_name} did not answer within {timeout_s} s: {error}", 504
        ) from error
    except BotoCoreError as error:
        raise WireError(f"could not reach endpoint {config.endpoint_name}: {error}", 502) from error
    return Result(body, response.get("ContentType") or fmt.value, _aws_request_id(response))


def _cap(message: str, limit: int = 1000) -> str:
    """At most ``limit`` characters: keeps an HTML error page from a proxy out of the response."""
    return message if len(message) <= limit else message[:limit] + "..."


def endpoint_error(error: ClientError, endpoint_name: str) -> UpstreamError:
    """Map an invoke_endpoint error to the status the caller should see.

    ModelError (HTTP 424 from SageMaker Runtime) carries the container's status as
    OriginalStatusCode and its body as OriginalMessage. On AWS that status is 500 for every handler
    exception, so the status our handler meant is read from the error document in the body: a 4xx
    there (an undecodable or oversized photo) is the caller's mistake and is passed on, as is a
    503/504 (the container busy or too slow). ThrottlingException -> 429, ModelNotReadyException and
    ServiceUnavailable -> 503, with Retry-After. Everything else is the endpoint failing: 502.
    """
    response = error.response
    code = response.get("Error", {}).get("Code", "")
    sagemaker_id = _aws_request_id(response)
    text = str(response.get("OriginalMessage") or response.get("Error", {}).get("Message") or error)
    document = parse_error_document(text)
    message = _cap(document.message if document else text)
    if code in RUNTIME_ERROR_STATUS:
        status = RUNTIME_ERROR_STATUS[code]
        retry = {"Retry-After": str(RETRY_AFTER_S[status])}
        return UpstreamError(
            f"endpoint {endpoint_name} is {'busy' if status == 429 else 'not ready'} ({code}): {message}; "
            f"retry after {RETRY_AFTER_S[status]} s",
            status,
            sagemaker_id,
            retry,
        )
    original = response.get("OriginalStatusCode")
    status = document.status if document and document.status else original
    if isinstance(status, int) and 400 <= status < 500:
        return UpstreamError(f"endpoint {endpoint_name} rejected the photo: {message}", status, sagemaker_id)
    if status in (503, 504):
        headers = {"Retry-After": str(RETRY_AFTER_S[503])} if status == 503 else {}
        return UpstreamError(
            f"endpoint {endpoint_name} could not take the photo: {message}", status, sagemaker_id, headers
        )
    return UpstreamError(f"endpoint {endpoint_name} failed: {message}", 502, sagemaker_id)


def write_result(result: Result, source: S3Location, fmt: OutputFormat, config: HandlerConfig) -> S3Location:
    """Store an S3 input's result under OUTPUT_S3_PREFIX, mirroring its path below INPUT_S3_PREFIX.

    Mirroring keeps names unique across input folders and makes retries overwrite, not duplicate.
    """
    assert config.input_prefix is not None and config.output_prefix is not None  # checked on input
    stem = posixpath.splitext(source.relative_to(config.input_prefix) or source.key)[0]
    target = S3Location(config.output_prefix.bucket, config.output_prefix.key + stem + OUTPUT_SUFFIXES[fmt])
    try:
        s3_client(config).put_object(
            Bucket=target.bucket, Key=target.key, Body=result.body, ContentType=result.content_type
        )
    except (ClientError, BotoCoreError) as error:
        raise WireError(f"could not write the result to {target.uri}: {error}", 502) from error
    return target


def presigned_upload(config: HandlerConfig, content_type: str) -> dict[str, Any]:
    """A presigned S3 POST for one photo under INPUT_S3_PREFIX/uploads/, valid ``upload_expiry_s``.

    For clients without AWS credentials whose photo is over the synchronous payload limit: they POST
    the file to ``url`` with ``fields`` (S3 checks the policy: this key, this Content-Type, 1 byte to
    MAX_IMAGE_BYTES), then ask ``/mask`` for ``{"s3_uri": ...}``. The random key is the only handle.
    """
    if config.input_prefix is None or config.output_prefix is None:
        raise WireError("uploads are not enabled here (INPUT_S3_PREFIX and OUTPUT_S3_PREFIX are unset)")
    if content_type not in UPLOAD_SUFFIXES:
        raise WireError(
            f'"content_type" must be one of {", ".join(UPLOAD_SUFFIXES)}, got {content_type!r}', 415
        )
    key = f"{config.input_prefix.key}{UPLOADS_FOLDER}{uuid.uuid4().hex}{UPLOAD_SUFFIXES[content_type]}"
    bucket = config.input_prefix.bucket
    try:
        post = s3_client(config).generate_presigned_post(
            Bucket=bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, config.max_image_bytes]],
            ExpiresIn=config.upload_expiry_s,
        )
    except (ClientError, BotoCoreError) as error:
        raise WireError(f"could not presign an upload: {error}", 502) from error
    uri = S3Location(bucket, key).uri
    return {
        "upload": {"url": post["url"], "fields": post["fields"]},
        "s3_uri": uri,
        "expires_in": config.upload_expiry_s,
        "max_bytes": config.max_image_bytes,
        "next": (
            "POST the file as multipart/form-data to upload.url with upload.fields (the file last), "
            f'then POST {{"s3_uri": "{uri}"}} to /mask'
        ),
    }
