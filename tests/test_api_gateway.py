"""``carvana gateway``: real HTTP in, API Gateway proxy events to a handler, proxy responses out.

The event-format tests put a tiny echo function behind the gateway (a user's Lambda, not a stand-in
for our code) so that what API Gateway would hand a Lambda can be asserted field by field; the
end-to-end tests put lambda/handler.py behind it, in front of the real local endpoint.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from PIL import Image

from local_aws import api_gateway as gateway
from trainer.wire import ENDPOINT_PAYLOAD_LIMIT, rle_decode

REPO = Path(__file__).resolve().parents[1]
CARVANA = Path(sys.executable).with_name("carvana")
JPEG_HEAD = b"\xff\xd8\xff\xe0"

ECHO_HANDLER = '''
import json


def handler(event, context):
    """Echo the event and the context's fields back as JSON (status 201 to tell it from defaults)."""
    if "x-crash" in (event.get("headers") or {}):
        raise RuntimeError("asked to crash")
    seen = {
        "event": event,
        "context": {
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "invoked_function_arn": context.invoked_function_arn,
        },
    }
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Echo": "yes"},
        "cookies": ["flavour=oat"],
        "body": json.dumps(seen),
    }
'''


@contextmanager
def running_gateway(handler: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``carvana gateway`` as a subprocess on a free port; yields its base URL, stops it after."""
    process = subprocess.Popen(
        [str(CARVANA), "gateway", "--handler", str(handler), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            process.kill()
            raise AssertionError(f"gateway did not start: {line!r} {process.communicate()[1]}")
        yield match.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=30)
            assert "carvana gateway: stopped" in out  # SIGTERM shuts it down cleanly


def post(
    url: str, body: bytes, headers: dict[str, str], sign: tuple[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST over real HTTP; ``sign=(key id, secret)`` signs it SigV4 for execute-api as a studio's
    uploader would (botocore's signer, README "Calling the API")."""
    if sign is not None:
        signed = AWSRequest("POST", url, headers=headers, data=body)
        SigV4Auth(Credentials(*sign), "execute-api", "us-east-1").add_auth(signed)
        headers = dict(signed.headers.items())
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def echo_handler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("echo") / "echo.py"
    path.write_text(ECHO_HANDLER)
    return path


@pytest.fixture(scope="module")
def echo_v2(echo_handler: Path) -> Iterator[str]:
    with running_gateway(echo_handler, "--auth", "none") as url:
        yield url


def test_binary_post_becomes_an_http_api_v2_event(echo_v2: str) -> None:
    photo = JPEG_HEAD + bytes(range(256)) * 4
    connection = http.client.HTTPConnection(echo_v2.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/mask?format=json&format=png&empty=")
    headers = [
        ("Content-Type", "image/jpeg"),
        ("X-Tag", "a"),
        ("X-Tag", "b"),
        ("Cookie", "session=1; theme=dark"),
    ]
    for name, value in [*headers, ("Content-Length", str(len(photo)))]:
        connection.putheader(name, value)
    connection.endheaders(photo)
    response = connection.getresponse()
    seen = json.loads(response.read())
    assert response.status == 201 and response.getheader("X-Echo") == "yes"
    assert response.getheader("Set-Cookie") == "flavour=oat"
    event, context = seen["event"], seen["context"]
    assert event["version"] == "2.0" and event["routeKey"] == "POST /mask"
    assert (event["rawPath"], event["rawQueryString"]) == ("/mask", "format=json&format=png&empty=")
    assert event["queryStringParameters"] == {"format": "json,png", "empty": ""}
    assert event["headers"]["content-type"] == "image/jpeg" and event["headers"]["x-tag"] == "a,b"
    assert event["cookies"] == ["session=1", "theme=dark"] and "cookie" not in event["headers"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == photo
    http_context = event["requestContext"]["http"]
    assert (http_context["method"], http_context["path"], http_context["sourceIp"]) == (
        "POST",
        "/mask",
        "127.0.0.1",
    )
    assert event["requestContext"]["requestId"] == context["aws_request_id"]
    assert event["requestContext"]["stage"] == "$default" and event["requestContext"]["timeEpoch"] > 0
    assert context["function_name"] == "echo" and context["memory_limit_in_mb"] == 256
    assert 0 < context["remaining_ms"] <= 30_000 and context["invoked_function_arn"].endswith(
        ":function:echo"
    )


def test_json_post_stays_text_and_requests_get_their_own_ids(echo_v2: str) -> None:
    ids = set()
    for _ in range(2):
        status, _, body = post(
            f"{echo_v2}/mask", b'{"s3_uri": "s3://b/in/car.jpg"}', {"Content-Type": "application/json"}
        )
        event = json.loads(body)["event"]
        assert status == 201 and event["isBase64Encoded"] is False
        assert json.loads(event["body"]) == {"s3_uri": "s3://b/in/car.jpg"}
        assert "queryStringParameters" not in event
        ids.add(event["requestContext"]["requestId"])
    assert len(ids) == 2


def test_unrouted_requests_get_api_gateways_404(echo_v2: str) -> None:
    assert post(f"{echo_v2}/other", b"x", {"Content-Type": "image/jpeg"})[0] == 404
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{echo_v2}/mask", timeout=30)  # GET on a POST route
    assert raised.value.code == 404 and json.loads(raised.value.read()) == {"message": "Not Found"}


def test_request_over_api_gateways_10_mb_is_refused_unread(echo_v2: str) -> None:
    connection = http.client.HTTPConnection(echo_v2.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/mask")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(10 * 1024 * 1024 + 1))
    connection.endheaders()  # the body is never sent: the gateway answers from the headers
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read()) == {"message": "Request Entity Too Large"}


def test_body_over_lambdas_6_mb_event_limit_is_refused_with_the_s3_hint(echo_v2: str) -> None:
    # 5 MB of photo is under API Gateway's 10 MB but base64 makes the event ~6.7 MB.
    status, _, body = post(
        f"{echo_v2}/mask", JPEG_HEAD + bytes(5 * 1024 * 1024), {"Content-Type": "image/jpeg"}
    )
    assert status == 413
    assert (
        "6,291,456-byte invoke payload limit" in json.loads(body)["message"]
        and "s3_uri" in json.loads(body)["message"]
    )


def test_handler_exception_is_a_500_and_the_gateway_keeps_serving(echo_v2: str) -> None:
    status, _, body = post(f"{echo_v2}/mask", b"{}", {"Content-Type": "application/json", "X-Crash": "1"})
    assert status == 500 and json.loads(body) == {"message": "Internal Server Error"}
    assert post(f"{echo_v2}/mask", b"{}", {"Content-Type": "application/json"})[0] == 201


def test_payload_format_1_0_builds_rest_api_events(echo_handler: Path) -> None:
    with running_gateway(echo_handler, "--payload-format", "1.0", "--auth", "none") as url:
        status, _, body = post(
            f"{url}/mask?format=cutout&format=png", b"\x89PNG\r\n\x1a\n", {"Content-Type": "image/png"}
        )
    event = json.loads(body)["event"]
    assert status == 201 and event["httpMethod"] == "POST" and event["resource"] == "/mask"
    assert event["queryStringParameters"] == {"format": "png"}
    assert event["multiValueQueryStringParameters"] == {"format": ["cutout", "png"]}
    assert event["headers"]["Content-Type"] == "image/png"
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\x89PNG\r\n\x1a\n"
    assert (
        event["requestContext"]["stage"] == "Prod"
        and event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    )


def test_bad_handler_or_route_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway.main(["--handler", str(tmp_path / "missing.py"), "--auth", "none"]) == 2
    assert f"handler file {tmp_path / 'missing.py'} does not exist" in capsys.readouterr().err
    (tmp_path / "fn.py").write_text("x = 1\n")
    assert gateway.main(["--handler", str(tmp_path / "fn.py"), "--auth", "none"]) == 2
    assert "has no function 'handler'" in capsys.readouterr().err
    assert gateway.main(["--handler", str(tmp_path / "fn.py"), "--route", "mask", "--auth", "none"]) == 2
    assert "--route must look like 'POST /mask'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def echo_iam(echo_handler: Path) -> Iterator[str]:
    """The echo function behind ``--auth iam`` (the default) with the key pair ``AKIDLOCAL``/``s3cret``."""
    with running_gateway(
        echo_handler, env={"AWS_ACCESS_KEY_ID": "AKIDLOCAL", "AWS_SECRET_ACCESS_KEY": "s3cret"}
    ) as url:
        yield url


@pytest.mark.parametrize(
    ("sign", "tamper", "message"),
    [
        (None, None, "Forbidden"),
        (("AKIDLOCAL", "wrong"), None, "The request signature we calculated does not match"),
        (("AKIDOTHER", "s3cret"), None, "The security token included in the request is invalid."),
        (("AKIDLOCAL", "s3cret"), "body", "The request signature we calculated does not match"),
        (("AKIDLOCAL", "s3cret"), "query", "The request signature we calculated does not match"),
    ],
    ids=["unsigned", "wrong-secret", "unknown-key", "body-changed", "query-changed"],
)
def test_iam_auth_refuses_what_api_gateway_refuses_and_never_calls_the_function(
    echo_iam: str, sign: tuple[str, str] | None, tamper: str | None, message: str
) -> None:
    url, body = f"{echo_iam}/mask?format=png", b"\xff\xd8\xff photo"
    headers = {"Content-Type": "image/jpeg"}
    if sign is not None:
        signed = AWSRequest("POST", url, headers=headers, data=body)
        SigV4Auth(Credentials(*sign), "execute-api", "us-east-1").add_auth(signed)
        headers = dict(signed.headers.items())
    if tamper == "body":
        body = b"\xff\xd8\xff other"
    elif tamper == "query":
        url = url.replace("png", "json")
    status, _, answer = post(url, body, headers)
    assert status == 403 and message in json.loads(answer)["message"]  # 201 would be the echo


def test_iam_auth_serves_signed_requests_and_tells_the_function_who_signed(echo_iam: str) -> None:
    status, _, body = post(
        f"{echo_iam}/uploads", b"{}", {"Content-Type": "application/json"}, ("AKIDLOCAL", "s3cret")
    )
    event = json.loads(body)["event"]
    assert status == 201 and event["routeKey"] == "POST /uploads"
    assert event["requestContext"]["authorizer"]["iam"]["accessKey"] == "AKIDLOCAL"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_aws_sigv4_is_accepted(echo_iam: str) -> None:
    """The README's unsigned-client recipe: curl signs with --aws-sigv4 (curl >= 7.75)."""
    command = [
        "curl",
        "-sS",
        "--aws-sigv4",
        "aws:amz:us-east-1:execute-api",
        "--user",
        "AKIDLOCAL:s3cret",
        "--data-binary",
        "photo",
        "-H",
        "Content-Type: image/jpeg",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{echo_iam}/mask",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.stdout == "201", result.stderr


def test_iam_auth_needs_a_key_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    (tmp_path / "fn.py").write_text("def handler(event, context):\n    return {}\n")
    assert gateway.main(["--handler", str(tmp_path / "fn.py")]) == 2
    assert "--auth iam needs the key pair requests are signed with" in capsys.readouterr().err


def test_proxy_response_decodes_base64_bodies_and_infers_v2_json() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(10)
    response = gateway.proxy_response(
        {
            "statusCode": 200,
            "headers": {"Content-Type": "image/png"},
            "body": base64.b64encode(png).decode(),
            "isBase64Encoded": True,
        },
        "2.0",
    )
    assert (response.status, response.body, response.headers) == (200, png, [("Content-Type", "image/png")])
    inferred = gateway.proxy_response({"ok": True}, "2.0")
    assert (inferred.status, json.loads(inferred.body)) == (200, {"ok": True})
    assert gateway.proxy_response({"ok": True}, "1.0").status == 502


# ---- lambda/handler.py behind the gateway, in front of the real local endpoint -----------------------

BUCKET = "studio-photos"
REGION_AND_KEYS = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
KEYS = ("test", "test")  # the key pair the gateway (--auth iam) checks signatures against


@pytest.fixture(scope="module")
def car_jpg(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 192x128 car photo copied to ``car.jpg`` in a folder of its own (curl's @car.jpg)."""
    path = tmp_path_factory.mktemp("curl") / "car.jpg"
    path.write_bytes(sorted((sample_data / "train").glob("*.jpg"))[0].read_bytes())
    return path


@pytest.fixture(scope="module")
def endpoint_mask(car_jpg: Path, served_endpoint: str) -> np.ndarray:
    """The endpoint's mask for the photo, straight through boto3: what the gateway must return."""
    runtime = boto3.client("sagemaker-runtime", endpoint_url=served_endpoint, **REGION_AND_KEYS)
    answer = runtime.invoke_endpoint(
        EndpointName="carvana-unet", Body=car_jpg.read_bytes(), ContentType="image/jpeg", Accept="image/png"
    )
    return np.asarray(Image.open(io.BytesIO(answer["Body"].read())).convert("L"))


@pytest.fixture(scope="module")
def mask_gateway(served_endpoint: str, moto_server: str) -> Iterator[str]:
    """``carvana gateway --handler lambda/handler.py`` with the env template.yaml gives the function."""
    boto3.client("s3", endpoint_url=moto_server, **REGION_AND_KEYS).create_bucket(Bucket=BUCKET)
    env = {
        **FAKE_AWS,
        "ENDPOINT_NAME": "carvana-unet",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": served_endpoint,
        "AWS_ENDPOINT_URL_S3": moto_server,
        "INPUT_S3_PREFIX": f"s3://{BUCKET}/incoming/",
        "OUTPUT_S3_PREFIX": f"s3://{BUCKET}/masks/",
    }
    with running_gateway(REPO / "lambda" / "handler.py", env=env) as url:
        yield url


def test_posting_a_jpeg_returns_the_png_mask_of_the_photos_size(
    mask_gateway: str, car_jpg: Path, endpoint_mask: np.ndarray
) -> None:
    status, headers, body = post(
        f"{mask_gateway}/mask", car_jpg.read_bytes(), {"Content-Type": "image/jpeg"}, KEYS
    )
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(body)) as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "1", Image.open(car_jpg).size)
        np.testing.assert_array_equal(np.asarray(mask.convert("L")), endpoint_mask)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readmes_curl_command_writes_mask_png(
    mask_gateway: str, car_jpg: Path, endpoint_mask: np.ndarray
) -> None:
    command = (
        'curl --aws-sigv4 "aws:amz:us-east-1:execute-api" --user "test:test" '
        f"--data-binary @car.jpg -H 'Content-Type: image/jpeg' {mask_gateway}/mask -o mask.png"
    )
    subprocess.run(command, shell=True, cwd=car_jpg.parent, check=True, capture_output=True, timeout=60)
    with Image.open(car_jpg.parent / "mask.png") as mask:
        assert mask.format == "PNG" and mask.size == (192, 128)
        np.testing.assert_array_equal(np.asarray(mask.convert("L")), endpoint_mask)


def test_json_and_cutout_formats_through_the_gateway(
    mask_gateway: str, car_jpg: Path, endpoint_mask: np.ndarray
) -> None:
    photo = car_jpg.read_bytes()
    status, headers, body = post(
        f"{mask_gateway}/mask?format=json", photo, {"Content-Type": "image/jpeg"}, KEYS
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    result = json.loads(body)
    np.testing.assert_array_equal(
        rle_decode(result["rle"], result["height"], result["width"]) * 255, endpoint_mask
    )
    accept = {"Content-Type": "image/jpeg", "Accept": "image/png; variant=cutout"}
    status, headers, body = post(f"{mask_gateway}/mask", photo, accept, KEYS)
    assert status == 200 and headers["Content-Type"] == "image/png; variant=cutout"
    with Image.open(io.BytesIO(body)) as cutout:
        assert cutout.mode == "RGBA" and cutout.size == (192, 128)
        np.testing.assert_array_equal(np.asarray(cutout)[..., 3], endpoint_mask)


def test_bad_input_through_the_gateway_is_a_4xx_and_it_keeps_serving(
    mask_gateway: str, car_jpg: Path
) -> None:
    status, _, body = post(f"{mask_gateway}/mask", b"hello", {"Content-Type": "text/plain"}, KEYS)
    assert status == 415 and "Content-Type 'text/plain' is not supported" in json.loads(body)["error"]
    status, _, body = post(f"{mask_gateway}/mask", b"GIF89a....", {"Content-Type": "image/jpeg"}, KEYS)
    assert status == 415 and "photo format GIF is not supported" in json.loads(body)["error"]
    assert post(f"{mask_gateway}/mask", car_jpg.read_bytes(), {"Content-Type": "image/jpeg"}, KEYS)[0] == 200


def test_s3_uri_through_the_gateway_writes_the_result_to_s3(
    mask_gateway: str, moto_server: str, car_jpg: Path
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server, **REGION_AND_KEYS)
    s3.put_object(Bucket=BUCKET, Key="incoming/big/car.jpg", Body=car_jpg.read_bytes())
    request = json.dumps({"s3_uri": f"s3://{BUCKET}/incoming/big/car.jpg", "format": "cutout"}).encode()
    status, _, body = post(f"{mask_gateway}/mask", request, {"Content-Type": "application/json"}, KEYS)
    assert status == 200 and json.loads(body)["output_uri"] == f"s3://{BUCKET}/masks/big/car.cutout.png"
    stored = s3.get_object(Bucket=BUCKET, Key="masks/big/car.cutout.png")["Body"].read()
    assert Image.open(io.BytesIO(stored)).size == (192, 128)


def test_a_presigned_upload_then_the_mask_by_its_key(
    mask_gateway: str, moto_server: str, car_jpg: Path, upload_with_grant: Callable[..., None]
) -> None:
    """A client without AWS credentials for S3: POST /uploads (signed for the API only), upload the
    photo with the presigned POST over real HTTP (moto in server mode checks the policy), then ask
    /mask for the key."""
    status, _, body = post(
        f"{mask_gateway}/uploads",
        b'{"content_type": "image/jpeg"}',
        {"Content-Type": "application/json"},
        KEYS,
    )
    assert status == 200, body
    grant = json.loads(body)
    assert grant["s3_uri"].startswith(f"s3://{BUCKET}/incoming/uploads/") and grant["s3_uri"].endswith(".jpg")
    assert grant["expires_in"] == 300 and grant["upload"]["url"].startswith(moto_server)
    upload_with_grant(grant, "car.jpg", car_jpg.read_bytes(), "image/jpeg")
    request = json.dumps({"s3_uri": grant["s3_uri"], "format": "json"}).encode()
    status, _, body = post(f"{mask_gateway}/mask", request, {"Content-Type": "application/json"}, KEYS)
    assert status == 200, body
    key = grant["s3_uri"].split("/", 3)[3].replace("incoming/", "masks/", 1).replace(".jpg", ".rle.json")
    assert json.loads(body)["output_uri"] == f"s3://{BUCKET}/{key}"
    s3 = boto3.client("s3", endpoint_url=moto_server, **REGION_AND_KEYS)
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert (stored["width"], stored["height"]) == (192, 128)

    # The policy S3 enforces (moto accepts any POST, so the signed policy is checked here): this key
    # only, this Content-Type, 1 byte to the limit, expiring in 5 minutes.
    policy = json.loads(base64.b64decode(grant["upload"]["fields"]["policy"]))
    conditions = policy["conditions"]
    assert {"key": grant["s3_uri"].split("/", 3)[3]} in conditions and {
        "Content-Type": "image/jpeg"
    } in conditions
    assert ["content-length-range", 1, ENDPOINT_PAYLOAD_LIMIT] in conditions and {
        "bucket": BUCKET
    } in conditions
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 240 < (expires - datetime.now(UTC)).total_seconds() <= 300


def test_a_missing_upload_key_answers_like_a_forbidden_one(mask_gateway: str) -> None:
    answers = []
    for uri in (f"s3://{BUCKET}/incoming/uploads/0000.jpg", f"s3://{BUCKET}/masks/secret.jpg"):
        request = json.dumps({"s3_uri": uri}).encode()
        status, _, body = post(f"{mask_gateway}/mask", request, {"Content-Type": "application/json"}, KEYS)
        answers.append((status, json.loads(body)["error"].replace(uri, "<uri>")))
    assert answers[0] == answers[1] and answers[0][0] == 404
