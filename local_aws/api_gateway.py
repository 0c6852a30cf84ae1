"""``carvana gateway``: a local API Gateway in front of the Lambda handler (like ``sam local start-api``).

Why: the Lambda (lambda/handler.py) only ever sees API Gateway proxy events, so the honest way to
try it on a laptop or in tests is to put a real HTTP server in front of it that builds those
events the way API Gateway does: HTTP API payload 2.0 by default (REST API payload 1.0 with
``--payload-format 1.0``), bodies base64-encoded unless they are text, header and query-string
folding, a ``requestContext``, a Lambda ``context`` object, and API Gateway's 10 MB request and
Lambda's 6 MB event limits. Its answer (``statusCode``, ``headers``, ``body``,
``isBase64Encoded``) is turned back into HTTP, so::

    curl --data-binary @car.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:3000/mask -o mask.png

works against the local endpoint (``carvana serve``). The handler runs in this process and reads
this process's environment: set ``ENDPOINT_NAME`` and ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (and
AWS credentials, any value for a local endpoint) before starting the gateway. As in the Lambda
runtime, the handler's folder goes on ``sys.path`` (its sibling modules import), and ``trainer.wire``
comes from this checkout, where the Lambda package has its copy. Unlike ``sam local`` it does not
run the handler in a Lambda container, so it does not catch imports the Lambda runtime lacks; the
Lambda's tests do, on the built package.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from trainer.command import CarvanaError
from trainer.wire import LAMBDA_PAYLOAD_LIMIT, MB, MEDIA_JSON, WireError, b64decode, b64encode, media_type

API_GATEWAY_REQUEST_LIMIT = 10 * MB  # API Gateway rejects larger requests with 413
LAMBDA_EVENT_LIMIT = LAMBDA_PAYLOAD_LIMIT  # a synchronous invocation's event, base64 body included
TEXT_MEDIA_TYPES = (
    "text/",
    MEDIA_JSON,
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)
ACCOUNT_ID = "123456789012"  # what API Gateway puts in requestContext; a placeholder locally


class GatewayError(CarvanaError, ValueError):
    """The gateway cannot start: a missing handler file or function, or a bad option."""


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway serves and how; built from ``carvana gateway`` arguments."""

    handler_path: Path
    function: str = "handler"
    host: str = "127.0.0.1"
    port: int = 3000
    method: str = "POST"
    path: str = "/mask"
    payload_format: str = "2.0"
    timeout_s: float = 30.0
    memory_mb: int = 256
    max_request_bytes: int = API_GATEWAY_REQUEST_LIMIT

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GatewayConfig:
        """Validate the parsed arguments; GatewayError names the option that is wrong."""
        method, _, path = args.route.strip().partition(" ")
        if not method or not path.startswith("/"):
            raise GatewayError(f"--route must look like 'POST /mask', got {args.route!r}")
        if args.timeout <= 0:
            raise GatewayError(f"--timeout must be positive (seconds), got {args.timeout}")
        return cls(
            handler_path=Path(args.handler),
            function=args.function,
            host=args.host,
            port=args.port,
            method=method.upper(),
            path=path.strip(),
            payload_format=args.payload_format,
            timeout_s=args.timeout,
        )

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


def load_handler(path: Path, function: str) -> Callable[[dict[str, Any], Any], Any]:
    """Import ``function`` from the file at ``path`` (``lambda`` is a keyword, so not by package).

    The file's folder goes first on ``sys.path``, as the Lambda runtime puts the package root there,
    so the handler's sibling modules import as they do on AWS.
    """
    if not path.is_file():
        raise GatewayError(f"handler file {path} does not exist (expected e.g. lambda/handler.py)")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"lambda_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GatewayError(f"handler file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    entry = getattr(module, function, None)
    if not callable(entry):
        raise GatewayError(f"handler file {path} has no function {function!r}")
    return entry


@dataclass
class LambdaContext:
    """The Lambda runtime's context object, with the fields and method handlers use."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int
    deadline: float  # time.monotonic() at which Lambda would stop the invocation
    function_version: str = "$LATEST"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as received, before it becomes an event."""

    method: str
    target: str  # path and query string as sent
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    host: str


def encode_body(body: bytes, content_type: str) -> tuple[str, bool]:
    """The event's ``body`` and ``isBase64Encoded``: text types as text, everything else base64."""
    media, _ = media_type(content_type)
    if media.startswith(TEXT_MEDIA_TYPES) or media.endswith(("+json", "+xml")):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return b64encode(body), True


def _request_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def build_event(request: HttpRequest, config: GatewayConfig, request_id: str) -> dict[str, Any]:
    """The proxy event API Gateway would send for ``request`` (payload ``config.payload_format``)."""
    url = urlsplit(request.target)
    query = parse_qsl(url.query, keep_blank_values=True)
    content_type = next((v for k, v in request.headers if k.lower() == "content-type"), "")
    body, is_base64 = encode_body(request.body, content_type)
    user_agent = next((v for k, v in request.headers if k.lower() == "user-agent"), "")
    now = time.time()
    if config.payload_format == "1.0":
        return _event_v1(request, config, request_id, query, body, is_base64, user_agent, now)
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        if name.lower() == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:  # HTTP APIs lower-case names and join repeated headers with commas
            headers[name.lower()] = f"{headers[name.lower()]},{value}" if name.lower() in headers else value
    params: dict[str, str] = {}
    for name, value in query:
        params[name] = f"{params[name]},{value}" if name in params else value
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": config.route_key,
        "rawPath": url.path,
        "rawQueryString": url.query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": request.host,
            "domainPrefix": request.host.split(".")[0],
            "http": {
                "method": request.method,
                "path": url.path,
                "protocol": "HTTP/1.1",
                "sourceIp": request.source_ip,
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": config.route_key,
            "stage": "$default",
            "time": _request_time(now),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if cookies:
        event["cookies"] = cookies
    if params:
        event["queryStringParameters"] = params
    if request.body:
        event["body"] = body
    return event


def _event_v1(
    request: HttpRequest,
    config: GatewayConfig,
    request_id: str,
    query: list[tuple[str, str]],
    body: str,
    is_base64: bool,
    user_agent: str,
    now: float,
) -> dict[str, Any]:
    """A REST API (payload 1.0) event: last-value and multi-value maps, ``None`` when empty."""
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        multi_headers.setdefault(name, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for name, value in query:
        multi_query.setdefault(name, []).append(value)
    path = urlsplit(request.target).path
    return {
        "resource": config.path,
        "path": path,
        "httpMethod": request.method,
        "headers": {name: values[-1] for name, values in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {name: values[-1] for name, values in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": request.host,
            "httpMethod": request.method,
            "identity": {"sourceIp": request.source_ip, "userAgent": user_agent},
            "path": f"/Prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": _request_time(now),
            "requestTimeEpoch": int(now * 1000),
            "resourcePath": config.path,
            "stage": "Prod",
        },
        "body": body if request.body else None,
        "isBase64Encoded": is_base64 if request.body else False,
    }


@dataclass(frozen=True)
class HttpResponse:
    """What goes back on the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def message_response(status: int, message: str) -> HttpResponse:
    """API Gateway's own answers (no route, too large, handler failure): ``{"message": ...}``."""
    body = json.dumps({"message": message}).encode()
    return HttpResponse(status, [("Content-Type", MEDIA_JSON)], body)


def proxy_response(result: object, payload_format: str) -> HttpResponse:
    """Turn the handler's return value into HTTP the way API Gateway does.

    Payload 2.0 treats anything that is not a dict with ``statusCode`` as a 200 JSON body;
    payload 1.0 answers 502 for a malformed response, as REST APIs do.
    """
    if not isinstance(result, dict) or "statusCode" not in result:
        if payload_format == "1.0":
            return message_response(502, "Internal server error")
        return HttpResponse(200, [("Content-Type", MEDIA_JSON)], json.dumps(result).encode())
    body = result.get("body") or ""
    try:
        raw = b64decode(body, "body") if result.get("isBase64Encoded") else str(body).encode()
        status = int(result["statusCode"])
    except (WireError, ValueError, TypeError):
        return message_response(502, "Internal server error")
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers += [(str(name), str(v)) for v in values]
    headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", MEDIA_JSON))
    return HttpResponse(status, headers, raw)


class Gateway:
    """Routes requests, builds events, calls the handler with a deadline, builds responses."""

    def __init__(self, config: GatewayConfig, handler: Callable[[dict[str, Any], Any], Any]) -> None:
        self.config = config
        self.handler = handler
        # Handlers run on their own threads so a slow one can be abandoned at the timeout.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="lambda")

    def respond(self, request: HttpRequest) -> HttpResponse:
        """The answer to one request that has passed the size check."""
        path = urlsplit(request.target).path
        if request.method != self.config.method or path != self.config.path:
            return message_response(404, "Not Found")
        request_id = str(uuid.uuid4())
        event = build_event(request, self.config, request_id)
        if len(json.dumps(event)) > LAMBDA_EVENT_LIMIT:
            return message_response(
                413,
                f"the event is over Lambda's {LAMBDA_EVENT_LIMIT:,}-byte invoke payload limit "
                "(base64 adds a third to binary bodies): upload the photo to S3 and send its s3_uri",
            )
        context = LambdaContext(
            function_name=self.config.handler_path.stem,
            aws_request_id=request_id,
            memory_limit_in_mb=self.config.memory_mb,
            deadline=time.monotonic() + self.config.timeout_s,
        )
        future = self.pool.submit(self.handler, event, context)
        try:
            result = future.result(timeout=self.config.timeout_s)
        except concurrent.futures.TimeoutError:
            print(f"carvana gateway: handler timed out after {self.config.timeout_s:g} s", file=sys.stderr)
            return message_response(504, "Endpoint request timed out")
        except Exception as error:  # a crashing handler is a 5xx for the client, a traceback for us
            traceback.print_exception(error, file=sys.stderr)
            status = 502 if self.config.payload_format == "1.0" else 500
            return message_response(status, "Internal Server Error")
        return proxy_response(result, self.config.payload_format)


def make_request_handler(gateway: Gateway) -> type[BaseHTTPRequestHandler]:
    """A BaseHTTPRequestHandler class bound to ``gateway`` (http.server instantiates per request)."""

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "carvana-gateway"

        def handle_any(self) -> None:
            started = time.monotonic()
            response = self._read_and_respond()
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            latency_ms = (time.monotonic() - started) * 1000
            self.log_message(
                '"%s %s" %d %d bytes %.1f ms',
                self.command,
                self.path,
                response.status,
                len(response.body),
                latency_ms,
            )

        def _read_and_respond(self) -> HttpResponse:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                return message_response(411, "Length Required: send a Content-Length")
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                return message_response(400, "Bad Request: Content-Length is not a number")
            if length > gateway.config.max_request_bytes:
                self.close_connection = True  # the unread body makes the connection unusable
                return message_response(413, "Request Entity Too Large")
            body = self.rfile.read(length) if length else b""
            request = HttpRequest(
                method=self.command,
                target=self.path,
                headers=list(self.headers.items()),
                body=body,
                source_ip=self.client_address[0],
                host=self.headers.get("Host", f"{gateway.config.host}:{gateway.config.port}"),
            )
            return gateway.respond(request)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"carvana gateway: {self.client_address[0]} {format % args}\n")

    # http.server dispatches to do_<METHOD>; every method goes through the router (404 unless routed).
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        setattr(RequestHandler, f"do_{method}", RequestHandler.handle_any)
    return RequestHandler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana gateway",
        description="Serve a Lambda handler behind a local API Gateway (HTTP API proxy events), "
        "like `sam local start-api`. The handler reads this process's environment "
        "(ENDPOINT_NAME, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, ...).",
    )
    parser.add_argument("--handler", default="lambda/handler.py", help="the handler's file")
    parser.add_argument("--function", default="handler", help="the function in it (default handler)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port (default 3000; 0 picks a free one)")
    parser.add_argument("--route", default="POST /mask", help="the one route served (default 'POST /mask')")
    parser.add_argument(
        "--payload-format",
        choices=["2.0", "1.0"],
        default="2.0",
        help="2.0: HTTP API events (default, what template.yaml deploys); 1.0: REST API events",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="handler timeout in seconds (default 30)")
    return parser


def serve(config: GatewayConfig, handler: Callable[[dict[str, Any], Any], Any]) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight and return."""
    gateway = Gateway(config, handler)
    server = ThreadingHTTPServer((config.host, config.port), make_request_handler(gateway))
    server.daemon_threads = False  # server_close() waits for requests in flight

    def stop(signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it must not run on serve_forever's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = config.host, server.server_address[1]
    print(
        f"carvana gateway: {config.route_key} -> {config.handler_path}:{config.function} "
        f"(payload {config.payload_format}) on http://{host}:{port}",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        gateway.pool.shutdown(wait=True)
        print("carvana gateway: stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = GatewayConfig.from_args(args)
        handler = load_handler(config.handler_path, config.function)
    except GatewayError as error:
        print(f"carvana gateway: error: {error}", file=sys.stderr)
        return 2
    try:
        serve(config, handler)
    except OSError as error:  # address in use, permission denied
        print(
            f"carvana gateway: error: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
