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

The result format comes from ``?format=png|json|cutout|jpeg|finished-png`` (or ``"format"`` in
JSON), else from the ``Accept`` header; the default is the PNG mask. ``jpeg`` / ``finished-png`` are
finished photos: their options (``?backdrop=white&shadow=1&frame=4:3&margin=0.08``, or a JSON
``"options"`` object) are checked and passed to the endpoint as CustomAttributes; the endpoint
computes them, as it computes the JSON answer's box and review flag.

Photos bigger than a synchronous Lambda payload allows (6 MB, and base64 costs a third of it) go
through S3: the function reads them from ``INPUT_S3_PREFIX`` only, writes the result under
``OUTPUT_S3_PREFIX`` and answers with its URI.

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

from mask_aws import invoke_endpoint, read_s3_photo, write_result
from mask_config import ConfigError, HandlerConfig, S3Location, clients_for
from mask_request import choose_format, finish_options, parse_event, photo_or_location
from mask_response import json_response, request_logger, result_response

from trainer.wire import WireError

# The clock the request's latency is measured with (a test sets its own).
clock = time.monotonic


def serve(event: object, config: HandlerConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Answer one event; ``record`` collects the request's log fields as they become known."""
    request = parse_event(event)
    record.update(source=request.source, api_request_id=request.api_request_id)
    if request.method != "POST":
        raise WireError(f"method {request.method} is not allowed: POST the photo", 405, {"Allow": "POST"})
    photo = photo_or_location(request, config)
    fmt = choose_format(request)
    attributes = finish_options(request)
    record["format"] = fmt.query
    if attributes:
        record["options"] = attributes
    clients = clients_for(config)
    location = photo if isinstance(photo, S3Location) else None
    if location is not None:
        record["input_uri"] = location.uri
        photo = read_s3_photo(location, config, clients)
    assert isinstance(photo, bytes)
    record["size_bytes"] = len(photo)
    result = invoke_endpoint(photo, fmt, config, clients, attributes)
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
    started = clock()
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
        except WireError as error:
            response = json_response(error.status, {"error": error.message}, error.headers)
            record["error"] = error.message
        except Exception as error:  # the caller gets JSON, the log gets the traceback
            logger.exception(json.dumps({**record, "error": repr(error)}))
            response = json_response(500, {"error": f"internal error: {type(error).__name__}"})
    record.update(status=response["statusCode"], latency_ms=round((clock() - started) * 1000, 1))
    status = response["statusCode"]
    logger.log(
        logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR,
        json.dumps(record),
    )
    return response
