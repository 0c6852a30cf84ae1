"""The TF Serving side of ``carvana serve``: the SavedModel behind TF Serving's REST API.

In the SageMaker container, TF Serving (``tensorflow_model_server``) answers ``/v1/models/...`` on
port 8501 and the Python service calls it over HTTP. This module plays that part with the same
SavedModel, loaded by TensorFlow in-process: ``POST /v1/models/<name>[/versions/<v>]:predict``,
``GET /v1/models/<name>[/versions/<v>]`` (version status) and ``.../metadata`` (signature defs read
from saved_model.pb, as TF Serving prints them). Routes, status codes and error texts follow
tensorflow_serving/model_servers/http_rest_api_handler.cc, so a client that works here works there.

One addition on purpose: photos sent as ``{"b64": ...}`` to an ``image_bytes`` input pass the same
header check as ``/invocations`` (trainer.wire.check_photo, limits from ``CARVANA_MAX_PIXELS`` /
``CARVANA_MAX_IMAGE_BYTES``) before the graph decodes them, so a PNG bomb sent straight to TF Serving's
REST API is refused (413) from its header instead of being decoded. Real TF Serving has no such limit;
on AWS its port is reached only through the handler, which checks first. Bytes whose header cannot be
read are left to the graph's decoder, whose error TF Serving would give.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flask
import numpy as np
import tensorflow as tf

from local_aws.endpoint.batching import Batcher, BatchingConfig
from local_aws.endpoint.tfs_json import InputSpec, format_predict_response, parse_predict_request
from trainer.saved_model_io import op_error_text, signature_defs
from trainer.wire import INPUT_NAME, MODEL_NAME, PhotoLimits, WireError, check_photo

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
# The route patterns of http_rest_api_util.cc, verbatim.
PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?"
)
# TF error classes -> HTTP status, as TF Serving maps canonical error codes.
_TF_ERROR_STATUS = (
    (tf.errors.InvalidArgumentError, 400),
    (tf.errors.FailedPreconditionError, 400),
    (tf.errors.OutOfRangeError, 400),
    (tf.errors.NotFoundError, 404),
    (tf.errors.ResourceExhaustedError, 429),
    (tf.errors.UnimplementedError, 501),
    (tf.errors.UnavailableError, 503),
)


def model_identity(folder: Path) -> tuple[str, int]:
    """``(model name, version)`` of a SavedModel folder laid out as ``<name>/<version>/``."""
    if folder.name.isdigit():
        return folder.parent.name or MODEL_NAME, int(folder.name)
    return MODEL_NAME, 1


def _input_spec(spec: tf.TensorSpec) -> InputSpec:
    dtype = np.dtype(object) if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
    return InputSpec(dtype, tuple(spec.shape.as_list()) if spec.shape.rank is not None else ())


class LoadedModel:
    """A SavedModel's signatures, called with NumPy arrays."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._loaded = tf.saved_model.load(str(folder))  # keeps the signatures' variables alive
        self.signatures = dict(self._loaded.signatures)
        self.input_specs = {
            name: {key: _input_spec(spec) for key, spec in fn.structured_input_signature[1].items()}
            for name, fn in self.signatures.items()
        }
        self.signature_defs = signature_defs(folder)

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call one signature; TF errors become WireError with TF Serving's status code."""
        fn = self.signatures[signature]
        for name, value in inputs.items():
            spec = self.input_specs[signature][name]
            if len(spec.shape) != value.ndim or any(
                want is not None and want != got for want, got in zip(spec.shape, value.shape, strict=True)
            ):
                shape = ",".join("-1" if dim is None else str(dim) for dim in spec.shape)
                raise WireError(
                    f"input '{name}' of signature '{signature}' has shape {list(value.shape)}, "
                    f"expected [{shape}] (-1: any size)"
                )
        try:
            tensors = {name: tf.constant(value) for name, value in inputs.items()}
            outputs = fn(**tensors)
        except tf.errors.OpError as err:
            status = next((code for cls, code in _TF_ERROR_STATUS if isinstance(err, cls)), 500)
            raise WireError(op_error_text(err.message), status) from None
        except (TypeError, ValueError) as err:
            # Shape or dtype outside the signature's TensorSpec, caught by the function call itself.
            raise WireError(f"input does not fit signature {signature!r}: {err}") from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}


class ModelServer:
    """TF Serving's REST API over one model; ``load`` may run on a background thread."""

    def __init__(self, batching: BatchingConfig, limits: PhotoLimits | None = None) -> None:
        self._batching = batching
        self.limits = PhotoLimits.from_env() if limits is None else limits
        self.name: str | None = None
        self.version = 1
        self._model: LoadedModel | None = None
        self._batcher: Batcher | None = None
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self, folder: Path, name: str, version: int) -> None:
        """Load the SavedModel as ``name``/``version``; the model answers only once complete."""
        model = LoadedModel(folder)
        self.name, self.version = name, version
        if self._batching.enabled:
            self._batcher = Batcher(model.run, self._batching)
        self._model = model
        log.info(
            "model %s version %d loaded from %s (signatures: %s; %s)",
            name,
            version,
            folder,
            ", ".join(sorted(model.signatures)),
            self._batching,
        )

    def close(self) -> None:
        """Stop the batcher thread (in-flight requests finish first)."""
        if self._batcher is not None:
            self._batcher.close()

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many model calls ran with each batch size (empty without batching)."""
        return dict(self._batcher.batch_sizes) if self._batcher else {}

    # -- REST -----------------------------------------------------------------------------------

    def _require(self, name: str, version: str | None, label: str | None) -> LoadedModel:
        if label:
            raise WireError(f"Unrecognized servable version label: {label}", 404)
        if self._model is None or name != self.name or (version is not None and int(version) != self.version):
            request = f"Specific({name}, {int(version)})" if version is not None else f"Latest({name})"
            raise WireError(f"Servable not found for request: {request}", 404)
        return self._model

    def _specs(self, model: LoadedModel, signature_name: str) -> Mapping[str, InputSpec]:
        name = signature_name or DEFAULT_SIGNATURE
        if name not in model.signatures:
            raise WireError(f'Serving signature name: "{name}" not found in signature def')
        return model.input_specs[name]

    def predict(self, body: bytes, name: str, version: str | None = None, label: str | None = None) -> bytes:
        """A ``:predict`` call: JSON request in, JSON response out (WireError on failure)."""
        model = self._require(name, version, label)
        request = parse_predict_request(body, lambda signature: self._specs(model, signature))
        self._check_photos(request.inputs)
        signature = request.signature_name or DEFAULT_SIGNATURE
        batcher = self._batcher
        outputs = (
            batcher.submit(signature, request.inputs) if batcher else model.run(signature, request.inputs)
        )
        return format_predict_response(outputs, request.row_format)

    def _check_photos(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Refuse (413) photos over the limits from their headers, before the graph decodes them."""
        photos = inputs.get(INPUT_NAME)
        if photos is None or photos.dtype != np.dtype(object):
            return
        for index, photo in enumerate(photos.ravel()):
            try:
                check_photo(bytes(photo), self.limits)
            except WireError as err:
                if err.status == 413:
                    raise WireError(f"instance {index}, input '{INPUT_NAME}': {err.message}", 413) from None

    def status(self, name: str, version: str | None, label: str | None) -> dict[str, Any]:
        """``GetModelStatus``: one version, AVAILABLE once loaded (LOADING before, END on failure)."""
        if self._model is not None:
            self._require(name, version, label)
            state, code, message = "AVAILABLE", "OK", ""
        elif self.error:
            state, code, message = "END", "UNKNOWN", self.error
        else:
            state, code, message = "LOADING", "OK", ""
        return {
            "model_version_status": [
                {
                    "version": str(self.version),
                    "state": state,
                    "status": {"error_code": code, "error_message": message},
                }
            ]
        }

    def metadata(self, name: str, version: str | None, label: str | None) -> dict[str, Any]:
        """``GetModelMetadata``: model spec and the signature defs."""
        model = self._require(name, version, label)
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": model.signature_defs}},
        }

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Answer one REST call on ``/v1/models...``: ``(status, JSON body)``."""
        try:
            if method == "POST" and (match := PREDICT_PATH.fullmatch(path)):
                name, version, label, verb = match.groups()
                if verb.lower() != "predict":
                    raise WireError(
                        f"Expected {verb.lower()} signature method_name to be tensorflow/serving/"
                        f"{verb.lower()}. Was: {PREDICT_METHOD}"
                    )
                return 200, self.predict(body, name, version, label)
            if method == "GET" and (match := STATUS_PATH.fullmatch(path)):
                name, version, label, subresource = match.groups()
                if not name:
                    raise WireError("Missing model name in request.")
                if subresource:
                    return 200, json.dumps(self.metadata(name, version, label), indent=1).encode()
                return 200, json.dumps(self.status(name, version, label), indent=1).encode()
            raise WireError(f"Malformed request: {method} {path}")
        except WireError as err:
            return err.status, json.dumps({"error": str(err)}).encode()


def tfs_blueprint(server: ModelServer, prefix: str = "") -> flask.Blueprint:
    """Flask routes for TF Serving's REST API under ``prefix`` (``/tfs`` mirrors the container's nginx)."""
    blueprint = flask.Blueprint(f"tfs{prefix.replace('/', '_')}", __name__, url_prefix=prefix or None)

    @blueprint.route("/v1/models", methods=["GET", "POST"])
    @blueprint.route("/v1/models/<path:_rest>", methods=["GET", "POST"])
    def rest(_rest: str = "") -> flask.Response:
        path = flask.request.path[len(prefix) :]
        status, body = server.handle(flask.request.method, path, flask.request.get_data())
        return flask.Response(body, status=status, content_type="application/json")

    return blueprint
