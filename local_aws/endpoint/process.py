"""Start the local endpoint (``carvana serve``) in a subprocess and wait until it answers ``/ping``.

The one way tests, benchmarks, the demo's deploy step and ``carvana deploy --backend local`` bring
an endpoint up: the process is started in its own session (a terminal's Ctrl-C reaches the caller,
which then stops it with SIGTERM so in-flight requests finish), its output goes to a log file, and
the caller learns quickly and with the log's tail when it cannot start (the process exited, or
``/ping`` reports a model that failed to load) instead of waiting out the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

LOG_TAIL_CHARS = 3000
# What /ping says (503) while the worker is still loading the model; any other 503 is final.
STILL_LOADING = "still loading"


class EndpointStartError(RuntimeError):
    """The endpoint did not come up; the message says why and quotes the end of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server started just after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


def _ping(url: str) -> tuple[int | None, str]:
    """``(status, body)`` of ``GET /ping``; status None while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, ValueError):  # refused, reset, timed out: not listening yet
        return None, ""


def _load_error(body: str) -> str | None:
    """The load failure /ping reports, or None while the model is still loading."""
    try:
        message = str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        message = body
    return None if STILL_LOADING in message else message


def stop_endpoint(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM to the endpoint's process group (in-flight requests finish), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def start_endpoint(
    model: Path,
    *serve_args: str,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
) -> subprocess.Popen[bytes]:
    """``carvana serve --model MODEL --port PORT SERVE_ARGS`` in the background, ready to answer.

    ``env`` is laid over this process's environment (the container's ``SAGEMAKER_TFS_*`` settings,
    say). Returns once ``GET /ping`` answers 200; the caller owns the process (see
    :func:`stop_endpoint`). Raises EndpointStartError, quoting the log, if the process exits,
    ``/ping`` reports a model that cannot load, or ``timeout_s`` passes; the process is stopped then.
    """
    command = [
        sys.executable,
        "-m",
        "local_aws.endpoint.server",
        "--model",
        str(model),
        "--port",
        str(port),
        *serve_args,
    ]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, env=environment, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise EndpointStartError(
                f"carvana serve exited with code {process.returncode}; {log_path}:\n{_tail(log_path)}"
            )
        status, body = _ping(url)
        if status == 200:
            return process
        if status is not None and (error := _load_error(body)) is not None:
            stop_endpoint(process)
            raise EndpointStartError(f"carvana serve cannot serve {model}: {error}")
        if time.monotonic() > deadline:
            stop_endpoint(process)
            raise EndpointStartError(
                f"carvana serve did not answer {url}/ping with 200 within {timeout_s:.0f} s; "
                f"{log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def running_endpoint(
    model: Path,
    *serve_args: str,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
) -> Iterator[str]:
    """:func:`start_endpoint` for a ``with`` block: yields the base URL, stops the server after."""
    process = start_endpoint(model, *serve_args, port=port, log_path=log_path, env=env, timeout_s=timeout_s)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_endpoint(process)
