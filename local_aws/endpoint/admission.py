"""Bounded admission for ``carvana serve``: a few requests run, a few wait, the rest get 503 at once.

Without a bound, every request a client sends is accepted and queued (gunicorn's thread pool queue
and the kernel's backlog have no useful limit), each holding its photo and, once running, tens of
bytes per pixel; under a burst the server's memory and every caller's latency grow without limit
until something times out. Real AWS bounds this for you only at the edges (SageMaker Runtime's
payload limit and its 60 s answer limit, aws-facts Q4; the container's nginx has no ``limit_req``,
Q3), so the local endpoint does it explicitly, per gunicorn worker:

- at most ``max_inflight`` gated requests run at once (default 2: one per core of the 2-core machine
  this is sized for; TensorFlow already uses every core for one photo, so more in flight only adds
  memory and latency);
- at most ``max_queue`` wait for a slot (default 6, so 8 steady clients are all served);
- anything beyond gets **503** with ``Retry-After`` immediately, and the server keeps serving;
- every gated request has a **deadline** (default 60 s, SageMaker's own limit for a container's
  answer): one still waiting for a slot at its deadline gets 503 with ``Retry-After``; one still
  running gets **504**, while its work keeps its slot until it really ends, so memory stays bounded
  by ``max_inflight`` even when callers give up.

Gated: ``POST /invocations``, ``POST /endpoints/<name>/invocations`` (answered as SageMaker Runtime
relays a container error: ModelError 424 carrying the status) and ``POST`` to TF Serving's REST API
(``/v1/models/...``, ``/tfs/v1/models/...``). ``/ping`` and the model status and metadata calls are
never gated: a health check must not fail because the endpoint is busy.

The settings are read once, here: ``CARVANA_MAX_INFLIGHT``, ``CARVANA_MAX_QUEUE``,
``CARVANA_REQUEST_DEADLINE_SECONDS`` (flags ``--max-inflight``, ``--max-queue``, ``--deadline``).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from local_aws.endpoint.batching import env_number

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
GATED_PREFIXES = ("/invocations", "/endpoints/", "/v1/models", "/tfs/v1/models")
RUNTIME_PREFIX = "/endpoints/"


@dataclass(frozen=True)
class AdmissionConfig:
    """How many requests run and wait per worker, and how long one may take in all."""

    max_inflight: int = 2
    max_queue: int = 6
    deadline_s: float = 60.0
    # What Retry-After says: about one photo's time on the 2-core machine.
    retry_after_s: int = 1

    ENV: ClassVar[dict[str, str]] = {
        "max_inflight": "CARVANA_MAX_INFLIGHT",
        "max_queue": "CARVANA_MAX_QUEUE",
        "deadline_s": "CARVANA_REQUEST_DEADLINE_SECONDS",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdmissionConfig:
        """The variables in :attr:`ENV` (in flight >= 1, queue >= 0, deadline > 0), else the defaults."""
        return cls(
            max_inflight=env_number(env, cls.ENV["max_inflight"], cls.max_inflight, 1, int),
            max_queue=env_number(env, cls.ENV["max_queue"], cls.max_queue, 0, int),
            deadline_s=env_number(env, cls.ENV["deadline_s"], cls.deadline_s, 0.001, float),
        )

    @property
    def capacity(self) -> int:
        """Requests one worker holds at once (running + waiting); gunicorn needs a thread for each."""
        return self.max_inflight + self.max_queue


class RefusedError(Exception):
    """A gated request that will not run (or not be answered): its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdmissionGate:
    """WSGI middleware: admit, queue or refuse gated requests (see the module docstring)."""

    def __init__(self, app: WsgiApp, config: AdmissionConfig, max_request_bytes: int) -> None:
        self.app = app
        self.config = config
        self.max_request_bytes = max_request_bytes
        self._slots = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.refused = 0

    @staticmethod
    def gated(environ: Mapping[str, Any]) -> bool:
        return environ.get("REQUEST_METHOD") == "POST" and str(environ.get("PATH_INFO", "")).startswith(
            GATED_PREFIXES
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self.gated(environ):
            return self.app(environ, start_response)
        deadline = time.monotonic() + self.config.deadline_s
        try:
            self._admit(deadline)
        except RefusedError as refusal:
            self._drain(environ)
            return self._refuse(refusal, environ, start_response)
        try:
            self._buffer_body(environ)
        except BaseException:
            self._release()
            raise
        return self._run(environ, start_response, deadline)

    def _admit(self, deadline: float) -> None:
        """Take a slot, waiting in the bounded queue until ``deadline``; RefusedError(503) otherwise."""
        config = self.config
        with self._slots:
            if self.running >= config.max_inflight and self.waiting >= config.max_queue:
                self.refused += 1
                raise RefusedError(
                    503,
                    f"the endpoint is at capacity ({self.running} requests running, {self.waiting} "
                    f"waiting; it holds {config.max_inflight} + {config.max_queue}): retry after "
                    f"{config.retry_after_s} s",
                )
            self.waiting += 1
            try:
                while self.running >= config.max_inflight:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.refused += 1
                        raise RefusedError(
                            503,
                            f"no free slot within the request deadline of {config.deadline_s:g} s "
                            f"({config.max_inflight} requests running): retry after {config.retry_after_s} s",
                        )
                    self._slots.wait(remaining)
            finally:
                self.waiting -= 1
            self.running += 1

    def _release(self) -> None:
        with self._slots:
            self.running -= 1
            self._slots.notify()

    def _drain(self, environ: dict[str, Any]) -> None:
        """Read and drop a refused request's body (up to the size limit), so the client, still
        sending, reads our 503 instead of a connection reset."""
        try:
            left = min(int(environ.get("CONTENT_LENGTH") or 0), self.max_request_bytes)
        except ValueError:
            return
        while left > 0 and (chunk := environ["wsgi.input"].read(min(left, 1 << 16))):
            left -= len(chunk)

    def _buffer_body(self, environ: dict[str, Any]) -> None:
        """Read the body on the connection's own thread, so the worker below never touches the socket
        (after a 504 the connection may already be gone). Oversized bodies are left to the app's 413."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length > self.max_request_bytes:
            return
        stream = environ["wsgi.input"]
        body = stream.read(length) if length >= 0 else stream.read(self.max_request_bytes + 1)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))

    def _run(
        self, environ: dict[str, Any], start_response: Callable[..., Any], deadline: float
    ) -> Iterable[bytes]:
        """Run the app on its own thread; answer 504 at the deadline, keeping the slot until it ends."""
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def work() -> None:
            try:
                written: list[bytes] = []

                def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                    outcome["head"] = (status, headers)
                    return written.append

                iterable = self.app(environ, capture)
                try:
                    outcome["body"] = b"".join([*written, *iterable])
                finally:
                    if hasattr(iterable, "close"):
                        iterable.close()
            except BaseException as err:  # re-raised on the connection's thread
                outcome["error"] = err
            finally:
                self._release()
                finished.set()

        threading.Thread(target=work, name="admitted-request", daemon=True).start()
        if not finished.wait(max(deadline - time.monotonic(), 0)):
            log.warning(
                "request %s %s ran past its %g s deadline: answered 504, still running",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                self.config.deadline_s,
            )
            refusal = RefusedError(
                504,
                f"the request ran past its deadline of {self.config.deadline_s:g} s and was abandoned "
                "(its work still holds a slot until it ends)",
            )
            return self._refuse(refusal, environ, start_response)
        if "error" in outcome:
            raise outcome["error"]
        status, headers = outcome["head"]
        start_response(status, headers)
        return [outcome["body"]]

    def _refuse(
        self, refusal: RefusedError, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """503/504 as the route answers errors: ``{"error": ...}``, or SageMaker Runtime's ModelError."""
        body = json.dumps({"error": refusal.message}).encode()
        headers = [("Retry-After", str(self.config.retry_after_s)), ("Connection", "close")]
        if str(environ.get("PATH_INFO", "")).startswith(RUNTIME_PREFIX):
            from local_aws.endpoint.container import runtime_response

            response = runtime_response(refusal.status, body, "application/json")
            for name, value in headers:
                response.headers[name] = value
            return response(environ, start_response)
        start_response(
            f"{refusal.status} {'Service Unavailable' if refusal.status == 503 else 'Gateway Timeout'}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
        )
        return [body]
