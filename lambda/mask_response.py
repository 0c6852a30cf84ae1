"""What goes back: API Gateway proxy responses, and the one JSON log line per request.

Lambda ships stdout lines to CloudWatch unchanged, so each request's line stays machine-readable
for CloudWatch Logs Insights.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from mask_aws import Result
from mask_request import EVENT_OVERHEAD

from trainer.wire import LAMBDA_PAYLOAD_LIMIT, MEDIA_JSON, OutputFormat, WireError, b64encode, error_body

LOGGER_NAME = "carvana.lambda"


def json_response(
    status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """A proxy response with a JSON body (errors: see error_response)."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": MEDIA_JSON, **(headers or {})},
        "body": json.dumps(payload),
        "isBase64Encoded": False,
    }


def error_response(
    error: WireError, request_id: str | None, sagemaker_request_id: str | None = None
) -> dict[str, Any]:
    """An error answer: trainer.wire's error body (message, status, request id; SageMaker's request
    id when the endpoint was reached), with the error's headers (Retry-After, Allow, Vary)."""
    extra = {"sagemaker_request_id": sagemaker_request_id} if sagemaker_request_id else {}
    body = error_body(error.message, error.status, request_id, **extra)
    return json_response(error.status, body, error.headers)


def result_response(result: Result, fmt: OutputFormat) -> dict[str, Any]:
    """A proxy response carrying the endpoint's answer: JSON as text, images base64-encoded."""
    if fmt is OutputFormat.RLE_JSON:
        body, encoded = result.body.decode("utf-8"), False
    else:
        body, encoded = b64encode(result.body), True
    if len(body) > LAMBDA_PAYLOAD_LIMIT - EVENT_OVERHEAD:
        raise WireError(
            f"the {fmt.query} result is {len(body):,} bytes once encoded, over Lambda's 6 MB response "
            'limit: send the photo as {"s3_uri": ...} so the result goes to S3, or ask for ?format=json',
            413,
        )
    return {
        "statusCode": 200,
        "headers": {"Content-Type": result.content_type},
        "body": body,
        "isBase64Encoded": encoded,
    }


class _StdoutJsonLines(logging.Handler):
    """Writes each record's message, one JSON document, as one line on the current stdout.

    The stream is looked up per record so test runners that swap ``sys.stdout`` still see them.
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
