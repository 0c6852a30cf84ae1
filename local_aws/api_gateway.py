"""``carvana gateway``: a local API Gateway in front of the Lambda handler (like ``sam local start-api``).

Why: the Lambda (lambda/handler.py) only ever sees API Gateway proxy events, so the honest way to
try it on a laptop or in tests is to put a real HTTP server in front of it that builds those
events the way API Gateway does: HTTP API payload 2.0 by default (REST API payload 1.0 with
``--payload-format 1.0``), bodies base64-encoded unless they are text, header and query-string
folding, a ``requestContext``, a Lambda ``context`` object, and API Gateway's 10 MB request and
Lambda's 6 MB event limits. Its answer (``statusCode``, ``headers``, ``body``,
``isBase64Encoded``) is turned back into HTTP, so::

    curl --data-binary @car.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:3000/mask -o mask.png

works against the local endpoint (``carvana serve``) with ``--auth none``. By default (``--auth iam``)
it is no more open than the deployed API (template.yaml's routes are AWS_IAM): every request must
be SigV4-signed for ``execute-api`` with the configured key pair, checked with botocore's own
signer; unsigned or wrongly signed requests get API Gateway's 403 ``{"message": ...}``. E.g.
``curl --aws-sigv4 "aws:amz:us-east-1:execute-api" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"``.
The handler runs in this process and reads
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
import hashlib
import hmac
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

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
DEFAULT_ROUTES = ("POST /mask", "POST /uploads")  # template.yaml's routes
SIGV4_SERVICE = "execute-api"
SIGV4_MAX_SKEW = timedelta(minutes=5)  # API Gateway: "Signature expired: ... (... - 5 min.)"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;\-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
# API Gateway's own 403 messages for IAM-authorized routes.
FORBIDDEN = "Forbidden"
INVALID_TOKEN = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)


class GatewayError(CarvanaError, ValueError):
    """The gateway cannot start: a missing handler file or function, or a bad option."""


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway serves and how; built from ``carvana gateway`` arguments."""

    handler_path: Path
    function: str = "handler"
    host: str = "127.0.0.1"
    port: int = 3000
    routes: tuple[tuple[str, str], ...] = tuple(
        (key.split(" ", 1)[0], key.split(" ", 1)[1]) for key in DEFAULT_ROUTES
    )
    payload_format: str = "2.0"
    timeout_s: float = 30.0
    memory_mb: int = 256
    max_request_bytes: int = API_GATEWAY_REQUEST_LIMIT
    # "iam": SigV4 for execute-api with ``credentials`` (access key id, secret) in ``region``.
    auth: str = "iam"
    credentials: tuple[str, str] | None = None
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if self.auth not in ("iam", "none"):
            raise GatewayError(f"--auth must be iam or none, got {self.auth!r}")
        if self.auth == "iam" and self.credentials is None:
            raise GatewayError(
                "--auth iam needs the key pair requests are signed with: --access-key-id and "
                "--secret-access-key (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); "
                "--auth none serves unsigned requests"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GatewayConfig:
        """Validate the parsed arguments; GatewayError names the option that is wrong."""
        routes = []
        for route in args.route or DEFAULT_ROUTES:
            method, _, path = route.strip().partition(" ")
            if not method or not path.strip().startswith("/"):
                raise GatewayError(f"--route must look like 'POST /mask', got {route!r}")
            routes.append((method.upper(), path.strip()))
        if args.timeout <= 0:
            raise GatewayError(f"--timeout must be positive (seconds), got {args.timeout}")
        key = args.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = args.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        credentials = (key, secret) if args.auth == "iam" and key and secret else None
        return cls(
            handler_path=Path(args.handler),
            function=args.function,
            host=args.host,
            port=args.port,
            routes=tuple(routes),
            payload_format=args.payload_format,
            timeout_s=args.timeout,
            auth=args.auth,
            credentials=credentials,
            region=args.region or os.environ.get("AWS_REGION") or "us-east-1",
        )

    @property
    def route_keys(self) -> str:
        return ", ".join(f"{method} {path}" for method, path in self.routes)


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


def _header(request: HttpRequest, name: str) -> str | None:
    """``name``'s value in ``request`` (``name`` in lower case), else None."""
    return next((v for k, v in request.headers if k.lower() == name), None)


def build_event(
    request: HttpRequest,
    config: GatewayConfig,
    request_id: str,
    route: tuple[str, str] | None = None,
    caller: str | None = None,
) -> dict[str, Any]:
    """The proxy event API Gateway would send for ``request`` (payload ``config.payload_format``) on
    ``route`` (the first configured one by default); ``caller`` is the access key that signed it."""
    route = route or config.routes[0]
    url = urlsplit(request.target)
    query = parse_qsl(url.query, keep_blank_values=True)
    content_type = _header(request, "content-type") or ""
    body, is_base64 = encode_body(request.body, content_type)
    user_agent = _header(request, "user-agent") or ""
    now = time.time()
    if config.payload_format == "1.0":
        return _event_v1(request, route[1], request_id, query, body, is_base64, user_agent, now)
    route_key = f"{route[0]} {route[1]}"
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
        "routeKey": route_key,
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
            "routeKey": route_key,
            "stage": "$default",
            "time": _request_time(now),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if caller is not None:  # what an AWS_IAM route adds (placeholders for what only IAM knows)
        event["requestContext"]["authorizer"] = {
            "iam": {
                "accessKey": caller,
                "accountId": ACCOUNT_ID,
                "callerId": caller,
                "principalOrgId": None,
                "userArn": f"arn:aws:iam::{ACCOUNT_ID}:user/local",
                "userId": caller,
            }
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
    resource: str,
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
        "resource": resource,
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
            "resourcePath": resource,
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


def verify_sigv4(request: HttpRequest, credentials: tuple[str, str], region: str) -> str | None:
    """None when ``request`` is SigV4-signed for execute-api in ``region`` by ``credentials``, else
    API Gateway's 403 message. The signature is recomputed with botocore's own SigV4 signer over
    exactly the headers the client signed, the method, path, query and body as received."""
    authorization = _header(request, "authorization")
    if not authorization:
        return FORBIDDEN
    match = AUTHORIZATION.fullmatch(authorization.strip())
    if not match:
        return (
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
            f"(AWS4-HMAC-SHA256). Authorization={authorization}"
        )
    access_key, secret = credentials
    if not hmac.compare_digest(match["key"], access_key):
        return INVALID_TOKEN
    stamp = _header(request, "x-amz-date") or ""
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    now = datetime.now(UTC)
    if abs(now - signed_at) > SIGV4_MAX_SKEW:
        when = "earlier" if signed_at < now else "later"
        bound = now - SIGV4_MAX_SKEW if signed_at < now else now + SIGV4_MAX_SKEW
        return (
            f"Signature expired: {stamp} is now {when} than {bound:%Y%m%dT%H%M%SZ} "
            f"({now:%Y%m%dT%H%M%SZ} {'-' if signed_at < now else '+'} 5 min.)"
        )
    if (match["date"], match["region"], match["service"]) != (stamp[:8], region, SIGV4_SERVICE):
        return (
            f"Credential should be scoped to a valid region and service: expected "
            f"{stamp[:8]}/{region}/{SIGV4_SERVICE}, got {match['date']}/{match['region']}/{match['service']}"
        )
    signed = match["headers"].split(";")
    if "host" not in signed:
        return SIGNATURE_MISMATCH
    declared = _header(request, "x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(request.body).hexdigest():
        return SIGNATURE_MISMATCH  # a hash claimed for another body
    headers: dict[str, str] = {}
    for name, value in request.headers:  # a repeated header is signed as its values joined by ","
        if name.lower() in signed:
            headers[name.lower()] = f"{headers[name.lower()]},{value}" if name.lower() in headers else value
    if set(headers) != set(signed):
        return SIGNATURE_MISMATCH
    rebuilt = AWSRequest(request.method, f"http://{request.host}{request.target}", headers, request.body)
    rebuilt.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret), SIGV4_SERVICE, region)
    expected = signer.signature(signer.string_to_sign(rebuilt, signer.canonical_request(rebuilt)), rebuilt)
    return None if hmac.compare_digest(expected, match["signature"]) else SIGNATURE_MISMATCH


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
        route = (request.method, path)
        if route not in self.config.routes:
            return message_response(404, "Not Found")
        caller = None
        if self.config.auth == "iam":
            assert self.config.credentials is not None  # __post_init__ insists
            refusal = verify_sigv4(request, self.config.credentials, self.config.region)
            if refusal is not None:
                return message_response(403, refusal)
            caller = self.config.credentials[0]
        request_id = str(uuid.uuid4())
        event = build_event(request, self.config, request_id, route, caller)
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
    parser.add_argument(
        "--route",
        action="append",
        help="a route to serve, repeatable (default: template.yaml's 'POST /mask' and 'POST /uploads')",
    )
    parser.add_argument(
        "--auth",
        choices=["iam", "none"],
        default="iam",
        help="iam (default, as template.yaml's AWS_IAM routes): requests must be SigV4-signed for "
        "execute-api with the key pair below; none: unsigned requests are served",
    )
    parser.add_argument(
        "--access-key-id", help="the key id requests are signed with (default $AWS_ACCESS_KEY_ID)"
    )
    parser.add_argument("--secret-access-key", help="its secret (default $AWS_SECRET_ACCESS_KEY)")
    parser.add_argument(
        "--region", help="the region signatures are scoped to (default $AWS_REGION or us-east-1)"
    )
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
        f"carvana gateway: {config.route_keys} -> {config.handler_path}:{config.function} "
        f"(payload {config.payload_format}, auth {config.auth}) on http://{host}:{port}",
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
