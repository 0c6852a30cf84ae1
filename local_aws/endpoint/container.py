"""The SageMaker side of ``carvana serve``: the container's ``/ping`` and ``/invocations``, and the
SageMaker Runtime route ``POST /endpoints/<name>/invocations`` in front of them.

``/invocations`` does what the TF Serving container's Python service (python_service.py and
tfs_utils.py in aws/sagemaker-tensorflow-serving-container) does: build the ``Context`` namedtuple
from the request (custom attributes ``tfs-model-name``, ``tfs-model-version``, ``tfs-method`` pick
the TF Serving URI; Content-Type and Accept default to application/json), call the model's
``input_handler``, POST its result over real HTTP to TF Serving at ``context.rest_uri``, and return
what ``output_handler`` makes of the ``requests`` response. The handlers are the model's own
``code/inference.py`` (with ``code/`` and ``code/lib`` importable, as the container sets
``--pythonpath``) when the model carries one, else :mod:`serving.inference`.

Two ways to answer a handler's exception (``carvana serve --container``):

- ``aws``: exactly as the real container (python_service.py ``_handle_invocation_post``): **500**
  with ``{"error": str(exception)}`` for every exception. Our handler's str() is the JSON error
  document (trainer.wire.error_document), so the status it meant travels inside that body.
- ``carvana`` (the default): the exception's ``status`` (400-599) is the HTTP status, and the body
  is the error document itself (``{"error", "status", "request_id"}``): the same fields, unwrapped.

Custom attributes are parsed as strictly as the real tfs_utils.py ``parse_tfs_custom_attributes``
in both modes: ``re.findall(r"(tfs-[a-z-]+=[^,]+)")`` then ``split("=")`` with no strip, so a
space stays in the value, and a value holding ``=`` fails *before* the handler (outside the
container's try): falcon's own uncaught-error answer, 500 with ``{"title": "500 Internal Server
Error"}`` when the Accept header allows JSON and an empty body otherwise (``aws``), or 400 with a
message saying why (``carvana``).

The runtime route answers like SageMaker Runtime, so unchanged boto3 ``invoke_endpoint`` and the
SDK's predictors work against it: the container's body and Content-Type with
``x-Amzn-Invoked-Production-Variant`` on success; on a container error, HTTP 424 ``ModelError`` with
``OriginalStatusCode`` and ``OriginalMessage``.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import re
import sys
import uuid
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import flask
import requests

from trainer.wire import MEDIA_JSON, ErrorDocument, error_body, media_type, parse_error_document

log = logging.getLogger(__name__)

# The container's request context, field for field (tfs_utils.py).
Context = namedtuple(
    "Context",
    "model_name, model_version, method, rest_uri, grpc_port, channel, "
    "custom_attributes, request_content_type, accept_header, content_length",
)
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_CONTENT_TYPE = MEDIA_JSON
DEFAULT_ACCEPT = MEDIA_JSON
PRODUCTION_VARIANT = "AllTraffic"
Handler = Callable[[Any, Context], tuple[bytes, str]]


class Headers(Protocol):
    """Request headers looked up case-insensitively (werkzeug's, or a plain dict in tests)."""

    def get(self, key: str, /) -> str | None: ...


class Health(Protocol):
    """What /ping needs to know about the model server."""

    @property
    def ready(self) -> bool: ...

    error: str | None


def parse_tfs_attributes(header: str | None) -> dict[str, str]:
    """``tfs-*`` pairs from the custom attributes header (other attributes are the handler's).

    The real container's parse, kept as strict: no strip, and ValueError for a value holding ``=``
    (``dict()`` of a three-part split), which the container does not catch.
    """
    pairs = re.findall(r"(tfs-[a-z\-]+=[^,]+)", header or "")
    return dict(_pair(pair.split("=")) for pair in pairs)


def _pair(parts: list[str]) -> tuple[str, str]:
    if len(parts) != 2:  # what dict() raises on the container's split, with our own words
        raise ValueError(
            f"custom attribute {'='.join(parts)!r} holds more than one '=': the container's "
            "tfs_utils.py cannot parse it (dictionary update sequence element has length "
            f"{len(parts)}; 2 is required)"
        )
    return parts[0], parts[1]


def make_rest_uri(port: int, attributes: Mapping[str, str], default_model_name: str) -> str:
    """TF Serving's REST URI for a request, as the container builds it."""
    uri = f"http://127.0.0.1:{port}/v1/models/{attributes.get('tfs-model-name', default_model_name)}"
    if attributes.get("tfs-model-version"):
        uri += "/versions/" + attributes["tfs-model-version"]
    return uri + ":" + attributes.get("tfs-method", "predict")


@dataclass(frozen=True)
class Handlers:
    """The request handler built from a model's inference script, and where it came from."""

    handle: Handler
    source: str


def _import_script(script: Path) -> ModuleType:
    code_dir = script.parent
    for folder in (code_dir / "lib", code_dir):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("inference", script)
    if spec is None or spec.loader is None:
        raise ImportError(f"{script}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_handlers(code_dir: Path | None) -> Handlers:
    """The container's handler from ``code_dir/inference.py``, else from :mod:`serving.inference`.

    Like the container: ``handler(data, context)`` if defined, else the pair ``input_handler`` /
    ``output_handler`` around a real HTTP POST to ``context.rest_uri``.
    """
    script = code_dir / "inference.py" if code_dir else None
    if script and script.is_file():
        module, source = _import_script(script), str(script)
    else:
        module, source = importlib.import_module("serving.inference"), "serving.inference"
    if hasattr(module, "handler"):
        return Handlers(module.handler, source)
    if not (hasattr(module, "input_handler") and hasattr(module, "output_handler")):
        raise NotImplementedError(f"{source}: handlers are not implemented correctly in user script.")

    def handle(data: Any, context: Context) -> tuple[bytes, str]:
        processed = module.input_handler(data, context)
        response = requests.post(context.rest_uri, data=processed, timeout=60)
        return module.output_handler(response, context)

    return Handlers(handle, source)


def _error_status(err: Exception) -> int:
    # Read by name, not isinstance: the model's code/inference.py may carry its own trainer.wire.
    status = getattr(err, "status", None)
    return status if isinstance(status, int) and 400 <= status <= 599 else 500


# ``carvana serve --container``: how handler exceptions are answered (see the module docstring).
CONTAINER_MODES = ("carvana", "aws")


def falcon_uncaught_error(accept: str | None) -> tuple[int, bytes, str]:
    """What falcon 3 answers for an exception outside the container's try (its default
    ``_python_error_handler``: HTTPInternalServerError, serialized only for JSON-accepting clients;
    the TF 2.19 inference image pins falcon 3.1). Not reproduced: the XML body falcon writes for
    clients preferring XML, and Accept weights (the handlers here never answer XML)."""
    ranges = [media_type(item)[0] for item in (accept or "*/*").split(",")]
    if any(r in ("*/*", "application/*", MEDIA_JSON) or r.endswith("+json") for r in ranges):
        return 500, json.dumps({"title": "500 Internal Server Error"}).encode(), MEDIA_JSON
    return 500, b"", MEDIA_JSON


class Container:
    """``/invocations``: the model's handlers in front of TF Serving's REST port."""

    def __init__(
        self, handlers: Handlers, rest_port: int, default_model_name: str, mode: str = "carvana"
    ) -> None:
        if mode not in CONTAINER_MODES:
            raise ValueError(f"container mode must be one of {', '.join(CONTAINER_MODES)}, got {mode!r}")
        self.handlers = handlers
        self.rest_port = rest_port
        self.default_model_name = default_model_name
        self.mode = mode

    def context(self, headers: Headers, content_length: int | None) -> Context:
        """The container's Context for a request's headers (a case-insensitive mapping)."""
        header = headers.get(CUSTOM_ATTRIBUTES_HEADER)
        attributes = parse_tfs_attributes(header)
        return Context(
            attributes.get("tfs-model-name"),
            attributes.get("tfs-model-version"),
            attributes.get("tfs-method"),
            make_rest_uri(self.rest_port, attributes, self.default_model_name),
            None,  # no gRPC port: only TF Serving's REST API is served locally
            None,
            header,
            headers.get("Content-Type") or DEFAULT_CONTENT_TYPE,
            headers.get("Accept") or DEFAULT_ACCEPT,
            content_length,
        )

    def invoke(self, body: bytes, headers: Headers) -> tuple[int, bytes, str]:
        """Run the handlers: ``(status, body, content type)``; errors answered per ``mode``."""
        try:
            context = self.context(headers, len(body))
        except ValueError as err:  # the container parses attributes before its try
            log.error("request refused before the handler: %s", err)
            if self.mode == "aws":
                return falcon_uncaught_error(headers.get("Accept"))
            return 400, json.dumps(error_body(str(err), 400)).encode(), MEDIA_JSON
        try:
            payload, content_type = self.handlers.handle(io.BytesIO(body), context)
        except Exception as err:
            status = _error_status(err)
            level = logging.WARNING if status < 500 else logging.ERROR
            log.log(level, "invocation failed (%d): %s", status, err)
            if self.mode == "aws":
                return 500, json.dumps({"error": str(err)}).encode("utf-8"), MEDIA_JSON
            document = parse_error_document(str(err))
            if document is None or document.status is None:
                document = ErrorDocument(str(err), status)
            answer = error_body(document.message, status, document.request_id)
            return status, json.dumps(answer).encode("utf-8"), MEDIA_JSON
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return 200, payload, content_type


def _runtime_error(status: int, error_type: str, body: dict[str, Any]) -> flask.Response:
    """An error as SageMaker Runtime sends it: botocore reads the type from ``x-amzn-ErrorType``."""
    response = flask.Response(json.dumps(body), status=status, content_type="application/json")
    response.headers["x-amzn-ErrorType"] = error_type
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    return response


def runtime_response(status: int, body: bytes, content_type: str) -> flask.Response:
    """A container answer as SageMaker Runtime relays it to ``invoke_endpoint``."""
    if status == 200:
        response = flask.Response(body, status=200, content_type=content_type)
        response.headers["x-Amzn-Invoked-Production-Variant"] = PRODUCTION_VARIANT
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response
    text = body.decode("utf-8", errors="replace")
    kind = "client" if status < 500 else "server"
    return _runtime_error(
        424,
        "ModelError",
        {
            "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
            "Message": f'Received {kind} error ({status}) from primary with message "{text}". '
            "See the carvana serve log for more information.",
            "OriginalStatusCode": status,
            "OriginalMessage": text,
        },
    )


def container_blueprint(
    container: Callable[[], Container | None], health: Health, endpoint_name: str | None
) -> flask.Blueprint:
    """``/ping``, ``/invocations`` and the runtime's ``/endpoints/<name>/invocations``.

    ``container`` returns None until the model (and so its handlers) is loaded.
    """
    blueprint = flask.Blueprint("container", __name__)

    def not_ready() -> tuple[int, bytes, str]:
        message = health.error or "the model is still loading"
        return 503, json.dumps({"error": message}).encode(), "application/json"

    def invoke() -> tuple[int, bytes, str]:
        current = container()
        if current is None or not health.ready:
            return not_ready()
        return current.invoke(flask.request.get_data(), flask.request.headers)

    @blueprint.get("/ping")
    def ping() -> flask.Response:
        if container() is None or not health.ready:
            status, body, content_type = not_ready()
            return flask.Response(body, status=status, content_type=content_type)
        return flask.Response(b"", status=200)

    @blueprint.post("/invocations")
    def invocations() -> flask.Response:
        status, body, content_type = invoke()
        return flask.Response(body, status=status, content_type=content_type)

    @blueprint.post("/endpoints/<name>/invocations")
    def runtime_invocations(name: str) -> flask.Response:
        if endpoint_name and name != endpoint_name:
            message = f"Endpoint {name} not found (this server serves {endpoint_name})."
            return _runtime_error(400, "ValidationError", {"message": message})
        return runtime_response(*invoke())

    return blueprint
