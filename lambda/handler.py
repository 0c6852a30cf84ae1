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
A client without AWS credentials first asks ``POST /uploads`` for a presigned S3 POST under the
input prefix, uploads there, then asks ``/mask`` for that ``s3_uri``.

Every photo is screened from its header before the endpoint is called (trainer.wire.check_photo:
empty, not JPEG/PNG, over the byte or pixel limit), because on AWS the container turns the
endpoint's own refusals into 500s. Every error body is ``{"error", "status", "request_id"}`` (plus
``sagemaker_request_id`` when the endpoint answered), and so is every log line's record.

The package (lambda/Makefile builds it) is this folder plus ``trainer/wire.py``, the wire contract
the endpoint also runs; it imports boto3 and the standard library only (present in the Lambda
Python runtime): no TensorFlow, NumPy or Pillow. The parts:

- ``mask_config.py``: the environment (:class:`HandlerConfig`) and the boto3 clients;
- ``mask_request.py``: events into a :class:`Request`, the format, the photo and its size checks;
- ``mask_aws.py``: S3 in, ``invoke_endpoint``, S3 out, and their failures as HTTP statuses;
- ``mask_response.py``: proxy responses and the JSON log line each request writes to stdout.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from mask_aws import invoke_endpoint, presigned_upload, read_s3_photo, write_result
from mask_config import ConfigError, HandlerConfig, S3Location, endpoint_budget
from mask_request import choose_format, parse_event, photo_or_location, upload_content_type, wants_upload
from mask_response import error_response, json_response, request_logger, result_response

from trainer.wire import WireError, check_photo

# The clock the request's latency is measured with (a test sets its own).
clock = time.monotonic


def serve(event: object, context: Any, config: HandlerConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Answer one event; ``record`` collects the request's log fields as they become known."""
    request = parse_event(event)
    record.update(source=request.source, api_request_id=request.api_request_id)
    if request.method != "POST":
        raise WireError(f"method {request.method} is not allowed: POST the photo", 405, {"Allow": "POST"})
    if wants_upload(request):
        record["route"] = "uploads"
        upload = presigned_upload(config, upload_content_type(request))
        record["upload_uri"] = upload["s3_uri"]
        return json_response(200, upload)
    photo = photo_or_location(request, config)
    fmt = choose_format(request)
    record["format"] = fmt.query
    location = photo if isinstance(photo, S3Location) else None
    if location is not None:
        record["input_uri"] = location.uri
        photo = read_s3_photo(location, config)
    assert isinstance(photo, bytes)
    record["size_bytes"] = len(photo)
    header = check_photo(photo, config.limits)  # what the endpoint would refuse, refused here
    record["pixels"] = header.pixels
    request_id = record.get("request_id")
    result = invoke_endpoint(
        photo, header.media_type, fmt, config, endpoint_budget(context, config), request_id
    )
    record["sagemaker_request_id"] = result.sagemaker_request_id
    if location is None:
        return result_response(result, fmt)
    target = write_result(result, location, fmt, config)
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
    started = clock()
    request_id = getattr(context, "aws_request_id", None)
    record: dict[str, Any] = {"request_id": request_id}
    try:
        config = HandlerConfig.from_env()
    except ConfigError as error:
        response = error_response(WireError(f"function is misconfigured: {error}", 500), request_id)
        logger = request_logger("INFO")
        record["error"] = str(error)
    else:
        logger = request_logger(config.log_level)
        record["endpoint"] = config.endpoint_name
        try:
            response = serve(event, context, config, record)
        except WireError as error:
            sagemaker_request_id = getattr(error, "aws_request_id", None)
            if sagemaker_request_id:
                record["sagemaker_request_id"] = sagemaker_request_id
            response = error_response(error, request_id, sagemaker_request_id)
            record["error"] = error.message
        except Exception as error:  # the caller gets JSON, the log gets the traceback
            logger.exception(json.dumps({**record, "error": repr(error)}))
            failure = WireError(f"internal error: {type(error).__name__}", 500)
            response = error_response(failure, request_id)
    record.update(status=response["statusCode"], latency_ms=round((clock() - started) * 1000, 1))
    status = response["statusCode"]
    logger.log(
        logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR,
        json.dumps(record),
    )
    return response
