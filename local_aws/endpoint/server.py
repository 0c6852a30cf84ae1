"""``carvana serve``: a local endpoint that answers like the SageMaker TF Serving container, like TF
Serving itself and like SageMaker Runtime, for one exported SavedModel (folder or model.tar.gz).

Routes (one port, 127.0.0.1 by default):
  GET  /ping                                 200 once the model is loaded, else 503 with the reason
  POST /invocations                          the model's inference.py handlers (container.py)
  POST /endpoints/<name>/invocations         SageMaker Runtime's InvokeEndpoint, for boto3 / the SDK
  GET|POST /v1/models/...  (and /tfs/v1/...) TF Serving's REST API (model_server.py)
The handlers reach TF Serving over real HTTP, as in the container: each worker also runs TF Serving's
REST API on a private 127.0.0.1 port, so a handler waiting on the model never holds the thread the
model call needs.

``--container aws`` answers as the real SageMaker TF Serving container does (container.py): 500 with
``{"error": str(exception)}`` for every handler exception and no request size limit in front of
``/invocations`` (the container's nginx.conf.template sets ``client_max_body_size 0``: the handler's
own check answers); the SageMaker Runtime route keeps the 6 MB limit, which is Runtime's own.

A real server: gunicorn with gthread workers (each loads the model after the fork, in the
background, so /ping answers 503 while it loads), a request size limit (413 with a message), bounded
admission per worker (admission.py: a few requests run, a few wait, the rest get 503 with
Retry-After; a per-request deadline answers 504),
optional batching (SAGEMAKER_TFS_ENABLE_BATCHING, _MAX_BATCH_SIZE, _BATCH_TIMEOUT_MICROS), graceful
shutdown on SIGTERM (in-flight requests finish) and one log line per request with its latency.
TensorFlow is imported only in the workers: a TF runtime does not survive fork().
``local_aws.endpoint.process`` starts it in a subprocess and waits for ``/ping``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flask
from gunicorn.app.base import BaseApplication
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from local_aws.endpoint.admission import AdmissionConfig, AdmissionGate
from local_aws.endpoint.batching import BatchingConfig
from local_aws.endpoint.container import CONTAINER_MODES, Container, container_blueprint, load_handlers
from trainer.wire import ENDPOINT_PAYLOAD_LIMIT

log = logging.getLogger("carvana.serve")
# The body size the admission gate buffers under --container aws (the real container sets none).
UNLIMITED_BYTES = 1 << 40


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return number


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value}")
    return number


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``carvana serve`` needs, from CLI flags over the container's environment variables."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # None: one per request the admission gate holds, plus 2 to answer 503s and /ping while full.
    threads: int | None = None
    max_request_bytes: int = ENDPOINT_PAYLOAD_LIMIT
    endpoint_name: str | None = None
    model_name: str | None = None
    timeout_s: int = 120
    graceful_timeout_s: int = 30
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    # "carvana": handler errors answered with their own status; "aws": as the real container (500).
    container: str = "carvana"

    @property
    def gunicorn_threads(self) -> int:
        """Threads per worker: the gate can only refuse what reaches it, so it must never wait for a
        thread behind gunicorn's own (unbounded) queue."""
        return self.threads if self.threads is not None else self.admission.capacity + 2

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
        """Flags win; unset flags fall back to the container's variables, then to the defaults."""

        def pick(flag: Any, variable: str, default: Any, kind: Callable[[str], Any] = int) -> Any:
            if flag is not None:
                return flag
            return kind(env[variable]) if env.get(variable) else default

        limit = cls.max_request_bytes
        from_env = BatchingConfig.from_env(env)
        batching = BatchingConfig(
            enabled=from_env.enabled if args.batching is None else args.batching,
            max_batch_size=args.max_batch_size or from_env.max_batch_size,
            timeout_micros=from_env.timeout_micros
            if args.batch_timeout_micros is None
            else args.batch_timeout_micros,
        )
        flags = {"max_inflight": args.max_inflight, "max_queue": args.max_queue, "deadline_s": args.deadline}
        overrides = {name: value for name, value in flags.items() if value is not None}
        inflight_set = "max_inflight" in overrides or env.get(AdmissionConfig.ENV["max_inflight"])
        if batching.enabled and not inflight_set:
            # A batch can only fill with requests in flight: by default let a whole batch in.
            overrides["max_inflight"] = max(AdmissionConfig.max_inflight, batching.max_batch_size)
        admission = dataclasses.replace(AdmissionConfig.from_env(env), **overrides)
        return cls(
            model=Path(args.model),
            host=args.host,
            port=pick(args.port, "SAGEMAKER_BIND_TO_PORT", cls.port),
            workers=pick(args.workers, "SAGEMAKER_GUNICORN_WORKERS", cls.workers),
            threads=pick(args.threads, "SAGEMAKER_GUNICORN_THREADS", None),
            max_request_bytes=pick(args.max_request_bytes, "CARVANA_MAX_REQUEST_BYTES", limit),
            endpoint_name=args.endpoint_name,
            model_name=pick(args.model_name, "SAGEMAKER_TFS_DEFAULT_MODEL_NAME", None, str),
            graceful_timeout_s=args.graceful_timeout,
            batching=batching,
            admission=admission,
            container=args.container,
        )


class RequestLog:
    """WSGI middleware: one line per request with status, size and latency."""

    def __init__(self, app: Callable[..., Iterable[bytes]], name: str) -> None:
        self.app = app
        self.log = logging.getLogger(name)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        seen: list[str] = []

        def record(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        iterable = self.app(environ, record)
        try:
            body = list(iterable)
        finally:
            if hasattr(iterable, "close"):
                iterable.close()
        self.log.info(
            '%s "%s %s" %s %dB in %.1f ms',
            environ.get("REMOTE_ADDR", "-"),
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", ""),
            seen[0].split()[0] if seen else "-",
            sum(map(len, body)),
            (time.perf_counter() - started) * 1000,
        )
        return body


def _json_error(status: int, message: str, key: str = "error") -> flask.Response:
    return flask.Response(json.dumps({key: message}), status=status, content_type="application/json")


class EndpointState:
    """One worker's model, handlers and private TF Serving port, and how to shut them down."""

    def __init__(self, config: ServeConfig) -> None:
        # Imported here, in the worker after the fork, so the gunicorn master never starts TensorFlow.
        from local_aws.endpoint.model_server import ModelServer, tfs_blueprint

        self.config = config
        self.model_server = ModelServer(config.batching)
        self.container: Container | None = None
        self._stack = contextlib.ExitStack()
        tfs_app = flask.Flask("carvana.tfs")
        tfs_app.register_blueprint(tfs_blueprint(self.model_server))
        tfs_wsgi = RequestLog(tfs_app.wsgi_app, "carvana.tfs")
        self._tfs_http = make_server("127.0.0.1", 0, tfs_wsgi, threaded=True)
        self.rest_port = self._tfs_http.server_port
        threading.Thread(target=self._tfs_http.serve_forever, name="tfs-rest", daemon=True).start()
        self.tfs_blueprints = [tfs_blueprint(self.model_server), tfs_blueprint(self.model_server, "/tfs")]
        threading.Thread(target=self._load, name="model-load", daemon=True).start()

    def _load(self) -> None:
        from local_aws.endpoint.model_server import model_identity
        from trainer.saved_model_io import saved_model_dir

        started = time.perf_counter()
        try:
            folder = self._stack.enter_context(saved_model_dir(self.config.model))
            name, version = model_identity(folder)
            name = self.config.model_name or name
            code_dir = folder.parent.parent / "code" if folder.name.isdigit() else None
            handlers = load_handlers(code_dir)
            self.model_server.load(folder, name, version)
            self.container = Container(handlers, self.rest_port, name, self.config.container)
        except Exception as err:
            self.model_server.error = f"{self.config.model}: cannot serve the model: {err}"
            log.error(self.model_server.error)
            return
        log.info(
            "ready in %.1f s: handlers from %s, TF Serving REST on 127.0.0.1:%d",
            time.perf_counter() - started,
            handlers.source,
            self.rest_port,
        )

    def close(self) -> None:
        """Stop the private TF Serving port and the batcher; remove an extracted model.tar.gz."""
        self._tfs_http.shutdown()
        self.model_server.close()
        self._stack.close()


def create_app(config: ServeConfig) -> flask.Flask:
    """The endpoint's WSGI app; the model loads in the background (``/ping`` says when it is ready)."""
    state = EndpointState(config)
    app = flask.Flask("carvana.serve")
    # The real container's nginx has no body limit (client_max_body_size 0); SageMaker Runtime has.
    unlimited = config.container == "aws"
    app.config["MAX_CONTENT_LENGTH"] = None if unlimited else config.max_request_bytes
    app.extensions["carvana"] = state
    app.register_blueprint(
        container_blueprint(lambda: state.container, state.model_server, config.endpoint_name)
    )
    for blueprint in state.tfs_blueprints:
        app.register_blueprint(blueprint)

    def too_large(length: int | None) -> flask.Response:
        size = f"{length} bytes" if length is not None else "too large"
        message = (
            f"request body is {size}, over the limit of {config.max_request_bytes} bytes "
            "(SageMaker real-time endpoints accept 6 MB: send large photos through S3)"
        )
        runtime = flask.request.path.startswith("/endpoints/")
        return _json_error(413, message, "message" if runtime else "error")

    @app.before_request
    def limit_size() -> flask.Response | None:
        length = flask.request.content_length
        if unlimited and not flask.request.path.startswith("/endpoints/"):
            return None
        if length is not None and length > config.max_request_bytes:
            return too_large(length)
        return None

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> flask.Response:
        if err.code == 413:
            return too_large(flask.request.content_length)
        return _json_error(err.code or 500, err.name if err.code == 404 else f"{err.name}: {err.description}")

    gate_limit = UNLIMITED_BYTES if unlimited else config.max_request_bytes
    gate = AdmissionGate(app.wsgi_app, config.admission, gate_limit)
    app.extensions["carvana.admission"] = gate
    app.wsgi_app = RequestLog(gate, "carvana.serve")  # type: ignore[method-assign]
    return app


class GunicornServer(BaseApplication):
    """gunicorn, configured from ServeConfig instead of its own command line."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": f"{self.config.host}:{self.config.port}",
            "workers": self.config.workers,
            "worker_class": "gthread",
            "threads": self.config.gunicorn_threads,
            "timeout": self.config.timeout_s,
            "graceful_timeout": self.config.graceful_timeout_s,
            "keepalive": 5,
            "proc_name": "carvana-serve",
            "worker_exit": _worker_exit,
            # gunicorn 27's control socket lives at one path per user: two servers would collide.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> flask.Flask:
        return create_app(self.config)


def _worker_exit(_server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    state = app.extensions.get("carvana") if isinstance(app, flask.Flask) else None
    if state is not None:
        state.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana serve",
        description="Serve a SavedModel (folder or model.tar.gz) like the SageMaker TF Serving container, "
        "TF Serving's REST API and SageMaker Runtime's InvokeEndpoint.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="SavedModel folder, model_dir holding unet/<version>/, or model.tar.gz "
        "(code/inference.py in it is used when present)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument(
        "--workers",
        type=_positive,
        help="gunicorn workers, each with its own model (default $SAGEMAKER_GUNICORN_WORKERS or 1)",
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        help="threads per worker (default $SAGEMAKER_GUNICORN_THREADS or max-inflight + max-queue + 2)",
    )
    defaults = AdmissionConfig()
    for flag, name, kind, what in (
        ("--max-inflight", "max_inflight", _positive, "requests running at once per worker; more wait"),
        ("--max-queue", "max_queue", _non_negative, "requests waiting per worker; beyond, 503 + Retry-After"),
        (
            "--deadline",
            "deadline_s",
            _positive_seconds,
            "seconds a request may wait and run: 503 if still waiting, 504 if still running",
        ),
    ):
        default = f"${AdmissionConfig.ENV[name]} or {getattr(defaults, name):g}"
        parser.add_argument(flag, type=kind, help=f"{what} (default {default})")
    parser.add_argument(
        "--max-request-bytes",
        type=_positive,
        help=f"larger bodies get 413 (default $CARVANA_MAX_REQUEST_BYTES or {ENDPOINT_PAYLOAD_LIMIT})",
    )
    parser.add_argument(
        "--container",
        choices=CONTAINER_MODES,
        default="carvana",
        help="how handler errors are answered: carvana (default) with their own 4xx status and the "
        "JSON error document as the body; aws exactly as the real SageMaker TF Serving container "
        '(500 with {"error": str(exception)}, no body size limit before the handler)',
    )
    parser.add_argument(
        "--endpoint-name", help="the only name /endpoints/<name>/invocations accepts (default: any name)"
    )
    parser.add_argument(
        "--model-name", help="TF Serving model name (default: the folder above the version, unet)"
    )
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="server-side batching (default $SAGEMAKER_TFS_ENABLE_BATCHING or off)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive,
        help="instances per batch (default $SAGEMAKER_TFS_MAX_BATCH_SIZE or 8)",
    )
    parser.add_argument(
        "--batch-timeout-micros",
        type=int,
        help="how long a batch waits for more requests (default $SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS or 1000)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=_positive,
        default=30,
        help="seconds in-flight requests get to finish after SIGTERM (default 30)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the endpoint until SIGTERM / Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ServeConfig.from_args(args, os.environ)
    except ValueError as err:
        parser.error(str(err))
    if not config.model.exists():
        parser.error(
            f"--model {config.model}: no such file or directory (expected a SavedModel folder, "
            "a model_dir holding unet/<version>/, or model.tar.gz)"
        )
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    log.info(
        "serving %s on http://%s:%d (%d worker(s) x %d threads, limit %d bytes, %s, %s)",
        config.model,
        config.host,
        config.port,
        config.workers,
        config.gunicorn_threads,
        config.max_request_bytes,
        config.batching,
        config.admission,
    )
    GunicornServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
