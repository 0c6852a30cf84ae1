"""lambda/: real API Gateway events and direct invocations in, proxy responses out.

The built package (lambda/Makefile) imports with the standard library and boto3 alone. The endpoint
is the real local one (``served_endpoint``: ``carvana serve`` on a trained model,
reached through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` exactly as on AWS); S3 is moto in server
mode (``AWS_ENDPOINT_URL_S3``). Bad inputs are checked for their status *and* their message.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import re
import struct
import subprocess
import sys
import sysconfig
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from local_aws.api_gateway import LambdaContext, load_handler
from local_aws.endpoint.process import free_port
from trainer.wire import MEDIA_CUTOUT_PNG, parse_error_document, rle_decode

REPO = Path(__file__).resolve().parents[1]
HANDLER_FILE = REPO / "lambda" / "handler.py"
BUCKET = "studio-photos"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF"
NO_PHOTO = (
    '"s3_uri" {uri}: no photo there that this API may read (photos go under s3://studio-photos/incoming/)'
)


@pytest.fixture(scope="module")
def lam() -> ModuleType:
    """lambda/handler.py loaded by path, as the Lambda runtime and the gateway load it."""
    return sys.modules[load_handler(HANDLER_FILE, "handler").__module__]


@pytest.fixture(scope="module")
def parts(lam: ModuleType) -> dict[str, ModuleType]:
    """The handler's sibling modules (importable once the handler is loaded, as on AWS)."""
    return {name: importlib.import_module(name) for name in ("mask_config", "mask_request")}


def context(request_id: str = "req-0001") -> LambdaContext:
    return LambdaContext(
        function_name="mask", aws_request_id=request_id, memory_limit_in_mb=256, deadline=1e12
    )


def v2_event(
    body: bytes,
    content_type: str | None,
    *,
    query: dict[str, str] | None = None,
    accept: str | None = None,
    method: str = "POST",
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event as API Gateway builds it for a binary body."""
    headers = {"host": "abc.execute-api.us-east-1.amazonaws.com", "user-agent": "curl/8.5.0"}
    headers |= {"content-type": content_type} if content_type else {}
    headers |= {"accept": accept} if accept else {}
    event = {
        "version": "2.0",
        "routeKey": "POST /mask",
        "rawPath": "/mask",
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "requestId": "api-v2-id",
            "routeKey": "POST /mask",
            "stage": "$default",
            "http": {
                "method": method,
                "path": "/mask",
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.7",
                "userAgent": "curl/8.5.0",
            },
        },
        "isBase64Encoded": True,
        "body": base64.b64encode(body).decode(),
    }
    if query:
        event["queryStringParameters"] = query
    return event


def v1_event(
    body: bytes, content_type: str, *, accept: str | None = None, base64_body: bool = True
) -> dict[str, Any]:
    """A REST API (payload 1.0) event: original header case, None for absent maps."""
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    return {
        "resource": "/mask",
        "path": "/mask",
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "requestId": "api-v1-id",
            "stage": "Prod",
            "httpMethod": "POST",
            "resourcePath": "/mask",
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def text_event(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    """A REST API event with a text body (not base64), as for JSON requests."""
    return v1_event(body, content_type, base64_body=False)


def error_of(response: dict[str, Any], request_id: str = "req-0001") -> tuple[int, str]:
    """``(status, message)`` of an error answer, once its body is checked to be the wire contract's
    error document: the same status inside, and the function's request id."""
    assert response["headers"]["Content-Type"] == "application/json" and response["isBase64Encoded"] is False
    body = json.loads(response["body"])
    assert body["status"] == response["statusCode"] and body["request_id"] == request_id, body
    return response["statusCode"], body["error"]


@pytest.fixture(scope="module")
def moto_s3(moto_server: str) -> str:
    """The session's moto server (S3 over real HTTP) with the studio bucket in it."""
    s3_client(moto_server).create_bucket(Bucket=BUCKET)
    return moto_server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, moto_s3: str) -> pytest.MonkeyPatch:
    """The function's environment as template.yaml sets it, with S3 on moto and no endpoint yet."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_s3,
        "ENDPOINT_NAME": "carvana-unet",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": f"http://127.0.0.1:{free_port()}",
        "INPUT_S3_PREFIX": f"s3://{BUCKET}/incoming/",
        "OUTPUT_S3_PREFIX": f"s3://{BUCKET}/masks/",
        "MAX_IMAGE_BYTES": "6291456",
        "LOG_LEVEL": "INFO",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return monkeypatch


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


# ---- no TensorFlow in the Lambda ------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Lambda package as ``sam build`` makes it: lambda/Makefile's build-MaskFunction target."""
    out = tmp_path_factory.mktemp("lambda-package")
    subprocess.run(
        ["make", "-s", "-C", str(REPO / "lambda"), "build-MaskFunction", f"ARTIFACTS_DIR={out}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def test_the_package_is_the_lambda_folder_and_the_wire_contract(built_package: Path) -> None:
    files = sorted(str(p.relative_to(built_package)) for p in built_package.rglob("*") if p.is_file())
    lambda_files = sorted(p.name for p in (REPO / "lambda").glob("*.py"))
    assert files == sorted([*lambda_files, "trainer/__init__.py", "trainer/wire.py"])
    assert (built_package / "trainer" / "wire.py").read_bytes() == (REPO / "trainer" / "wire.py").read_bytes()


def test_the_built_handler_runs_on_boto3_and_the_standard_library_alone(built_package: Path) -> None:
    """Only the package and site-packages on the path, the project itself not installed (-S), and
    NumPy, Pillow, TensorFlow and our other packages refused outright: the handler still imports
    and answers a request that goes through trainer.wire's negotiation and base64."""
    code = f"""
import importlib.abc, json, sys
sys.path[:0] = [{str(built_package)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # boto3, as the Lambda runtime has it
REFUSED = {{"numpy", "PIL", "tensorflow", "keras", "serving", "local_aws"}}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED or name.startswith("trainer.") and name != "trainer.wire":
            raise ImportError(f"the Lambda runtime has no {{name}}")
sys.meta_path.insert(0, Refuse())
import handler
event = {{"image_b64": "  /9j/4AAQ\\n", "format": "png"}}
import os; os.environ.update(ENDPOINT_NAME="ep", AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME="http://127.0.0.1:9")
os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
bad = handler.handler({{**event, "format": "gif"}}, None)
print(sys.modules["trainer.wire"].__file__)
print(bad["statusCode"], json.loads(bad["body"])["error"])
"""
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=built_package
    )
    assert result.returncode == 0, result.stderr
    wire_file, answer = result.stdout.splitlines()[-2:]
    assert Path(wire_file) == built_package / "trainer" / "wire.py"
    assert answer == "400 format must be one of png, json, cutout, jpeg, finished-png; got 'gif'"


# ---- configuration -----------------------------------------------------------------------------


def test_missing_endpoint_name_is_a_500_naming_the_variable(lam: ModuleType, env: pytest.MonkeyPatch) -> None:
    env.delenv("ENDPOINT_NAME")
    status, message = error_of(lam.handler(v2_event(JPEG_HEAD, "image/jpeg"), context()))
    assert status == 500 and "ENDPOINT_NAME is not set" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MAX_IMAGE_BYTES", "lots", "MAX_IMAGE_BYTES must be a positive integer"),
        ("INPUT_S3_PREFIX", "studio-photos/incoming", "INPUT_S3_PREFIX must look like s3://bucket/key"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
    ],
)
def test_malformed_settings_are_500s_naming_the_variable(
    lam: ModuleType, env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    env.setenv(name, value)
    status, message = error_of(lam.handler(v2_event(JPEG_HEAD, "image/jpeg"), context()))
    assert status == 500 and expected in message


def test_config_reads_prefixes_as_folders(parts: dict[str, ModuleType]) -> None:
    config = parts["mask_config"].HandlerConfig.from_env(
        {
            "ENDPOINT_NAME": "ep",
            "INPUT_S3_PREFIX": "s3://b/in",
            "OUTPUT_S3_PREFIX": "s3://b/out/",
            "MAX_IMAGE_BYTES": "99999999",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        }
    )
    assert config.input_prefix.uri == "s3://b/in/" and config.output_prefix.uri == "s3://b/out/"
    assert config.max_image_bytes == 6 * 1024 * 1024  # capped at what invoke_endpoint accepts
    assert config.runtime_endpoint_url == config.s3_endpoint_url == "http://127.0.0.1:9"


# ---- bad requests: 4xx with a message, before the endpoint is called ------------------------------


@pytest.mark.parametrize(
    ("event", "status", "expected"),
    [
        (v2_event(b"", "image/jpeg"), 400, "request body is empty"),
        (v2_event(b"GIF89a\x01\x00", "image/jpeg"), 415, "photo format GIF is not supported"),
        (v2_event(b"hello, not a photo", "image/jpeg"), 400, "is not an image: expected JPEG or PNG"),
        (v2_event(JPEG_HEAD, "image/jpeg"), 400, "JPEG is truncated"),
        (v2_event(b"\xff\xd8\xff\xda\x00\x02", "image/jpeg"), 400, "JPEG is malformed"),
        (text_event(b"hello", "text/plain"), 415, "Content-Type 'text/plain' is not supported"),
        (v2_event(JPEG_HEAD, None), 415, "Content-Type '(none)' is not supported"),
        (v2_event(JPEG_HEAD, "image/jpeg", query={"format": "gif"}), 400, "format must be one of png, json"),
        (v2_event(JPEG_HEAD, "image/jpeg", accept="text/html"), 406, "Accept 'text/html' is not supported"),
        (v2_event(JPEG_HEAD, "image/jpeg", method="GET"), 405, "method GET is not allowed"),
        (text_event(b"{not json"), 400, "body is not valid JSON"),
        (text_event(b"[1, 2]"), 400, "JSON body must be an object, got list"),
        (text_event(b"{}"), 400, 'send exactly one of "s3_uri"'),
        ({"image_b64": "***"}, 400, '"image_b64" is not valid base64'),
        ({"image_b64": ""}, 400, '"image_b64" is empty'),
        ({**v2_event(b"", "image/jpeg"), "body": "@@@"}, 400, "(marked isBase64Encoded) is not valid base64"),
        ("just a string", 400, "event must be a JSON object, got str"),
    ],
    ids=[
        "empty",
        "gif",
        "not-an-image",
        "truncated-jpeg",
        "no-frame-header",
        "text",
        "no-type",
        "bad-format",
        "bad-accept",
        "get",
        "bad-json",
        "json-list",
        "json-empty",
        "bad-b64",
        "empty-b64",
        "bad-event-b64",
        "string-event",
    ],
)
def test_bad_requests_get_4xx_that_say_what_was_wrong(
    lam: ModuleType, env: pytest.MonkeyPatch, event: Any, status: int, expected: str
) -> None:
    got_status, message = error_of(lam.handler(event, context()))
    assert (got_status, expected in message) == (status, True), message


def test_the_pixel_limit_is_checked_from_the_header_before_the_endpoint(
    lam: ModuleType, env: pytest.MonkeyPatch
) -> None:
    """A few dozen bytes claiming 30000x30000 pixels: 413 from the Lambda itself (the endpoint in
    ``env`` is unreachable, so reaching it would have been a 502)."""
    status, message = error_of(lam.handler(v2_event(_png_header(30000, 30000), "image/png"), context()))
    assert status == 413 and "30000x30000 = 900000000 pixels, over the limit of 16000000" in message
    env.setenv("CARVANA_MAX_PIXELS", "1000")
    status, message = error_of(lam.handler(v2_event(_png_header(40, 30), "image/png"), context()))
    assert status == 413 and "over the limit of 1000 pixels" in message


def test_photo_too_large_is_413_with_the_limit(lam: ModuleType, env: pytest.MonkeyPatch) -> None:
    env.setenv("MAX_IMAGE_BYTES", "1000")
    status, message = error_of(lam.handler(v2_event(JPEG_HEAD + bytes(2000), "image/jpeg"), context()))
    assert (
        status == 413
        and f"photo is {2000 + len(JPEG_HEAD):,} bytes, over the limit of 1,000 bytes" in message
    )


def test_inline_photo_over_the_lambda_payload_is_413_pointing_to_s3(
    lam: ModuleType, parts: dict[str, ModuleType], env: pytest.MonkeyPatch
) -> None:
    limit = parts["mask_request"].INLINE_PHOTO_LIMIT
    photo = JPEG_HEAD + bytes(limit)  # fits invoke_endpoint, not a base64 event
    status, message = error_of(lam.handler({"image_b64": base64.b64encode(photo).decode()}, context()))
    assert status == 413 and f"over the limit of {limit:,} bytes" in message
    assert f'upload it under s3://{BUCKET}/incoming/ and send {{"s3_uri": ...}}' in message


@pytest.mark.parametrize(
    ("s3_uri", "status", "expected"),
    [
        (
            "https://studio-photos.s3.amazonaws.com/incoming/car.jpg",
            400,
            '"s3_uri" must look like s3://bucket/key',
        ),
        ("s3:///incoming/car.jpg", 400, '"s3_uri" has no valid bucket name'),
        (42, 400, '"s3_uri" must look like s3://bucket/key, got 42'),
        (f"s3://{BUCKET}/masks/car.jpg", 404, NO_PHOTO),
        (f"s3://{BUCKET}/incoming-old/car.jpg", 404, NO_PHOTO),
        (f"s3://{BUCKET}/incoming/", 404, NO_PHOTO),
        ("s3://someone-elses-bucket/incoming/car.jpg", 404, NO_PHOTO),
        (f"s3://{BUCKET}/incoming/missing.jpg", 404, NO_PHOTO),
    ],
    ids=[
        "https",
        "no-bucket",
        "number",
        "output-prefix",
        "sibling-prefix",
        "the-prefix",
        "other-bucket",
        "missing",
    ],
)
def test_bad_s3_uris_get_4xx_that_say_what_was_wrong(
    lam: ModuleType, env: pytest.MonkeyPatch, s3_uri: object, status: int, expected: str
) -> None:
    body = json.dumps({"s3_uri": s3_uri}).encode()
    got_status, message = error_of(lam.handler(text_event(body), context()))
    expected = expected.format(uri=s3_uri)
    assert (got_status, expected in message) == (status, True), message


def test_a_missing_key_answers_exactly_as_a_forbidden_one(
    lam: ModuleType, env: pytest.MonkeyPatch, moto_s3: str
) -> None:
    """Same status, same message but for the URI: the answer never tells whether a key exists."""
    s3_client(moto_s3).put_object(Bucket=BUCKET, Key="masks/exists.jpg", Body=b"secret")
    answers = []
    for key in ("incoming/missing.jpg", "masks/exists.jpg", "masks/missing.jpg"):
        uri = f"s3://{BUCKET}/{key}"
        status, message = error_of(lam.handler({"s3_uri": uri}, context()))
        answers.append((status, message.replace(uri, "<uri>")))
    assert len(set(answers)) == 1 and answers[0][0] == 404, answers


def test_s3_object_over_the_limit_is_413_before_download(
    lam: ModuleType, env: pytest.MonkeyPatch, moto_s3: str
) -> None:
    s3_client(moto_s3).put_object(Bucket=BUCKET, Key="incoming/huge.jpg", Body=JPEG_HEAD + bytes(5000))
    env.setenv("MAX_IMAGE_BYTES", "4096")
    status, message = error_of(lam.handler({"s3_uri": f"s3://{BUCKET}/incoming/huge.jpg"}, context()))
    assert status == 413 and "over the limit of 4,096 bytes" in message


def test_s3_input_needs_both_prefixes(lam: ModuleType, env: pytest.MonkeyPatch) -> None:
    env.delenv("OUTPUT_S3_PREFIX")
    status, message = error_of(lam.handler({"s3_uri": f"s3://{BUCKET}/incoming/car.jpg"}, context()))
    assert status == 400 and "S3 input is not enabled here" in message


def test_unreachable_endpoint_is_502_naming_it(
    lam: ModuleType, env: pytest.MonkeyPatch, make_photo: Callable[..., bytes]
) -> None:
    status, message = error_of(lam.handler(v2_event(make_photo(), "image/jpeg"), context()))
    assert status == 502 and "could not reach endpoint carvana-unet" in message


def test_each_request_logs_one_json_line(
    lam: ModuleType, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ticks = iter([100.0, 100.0123])  # the request starts, then it ends 12.3 ms later
    env.setattr(lam, "clock", lambda: next(ticks))
    lam.handler(v2_event(b"GIF89a", "image/jpeg", query={"format": "json"}), context("req-log"))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1
    (line,) = lines
    assert (
        line["request_id"] == "req-log"
        and line["api_request_id"] == "api-v2-id"
        and line["source"] == "http-api-v2"
    )
    assert (line["status"], line["format"], line["size_bytes"]) == (415, "json", 6)
    assert line["latency_ms"] == 12.3 and "photo format GIF is not supported" in line["error"]


# ---- against the real local endpoint ----------------------------------------------------------


@pytest.fixture(scope="module")
def photo(sample_data: Path) -> bytes:
    """One synthetic car photo (JPEG, 192x128), as a studio would upload it."""
    return sorted((sample_data / "train").glob("*.jpg"))[0].read_bytes()


def runtime_client(served_endpoint: str) -> Any:
    """boto3's SageMaker Runtime client pointed at the served endpoint."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=served_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="module")
def expected_mask(photo: bytes, served_endpoint: str) -> np.ndarray:
    """The endpoint's own mask for ``photo`` via boto3, which every Lambda route must reproduce."""
    answer = runtime_client(served_endpoint).invoke_endpoint(
        EndpointName="carvana-unet", Body=photo, ContentType="image/jpeg", Accept="image/png"
    )
    return png_pixels(answer["Body"].read())


@pytest.fixture
def live(env: pytest.MonkeyPatch, served_endpoint: str) -> pytest.MonkeyPatch:
    """The function's environment pointed at the served endpoint."""
    env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", served_endpoint)
    return env


def png_pixels(data: bytes, mode: str = "1") -> np.ndarray:
    """A PNG's pixels, a 1-bit mask's as 0/255 (expanded to 8 bits, as browsers and libpng read it)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == mode
        return np.asarray(image.convert("L") if mode == "1" else image)


def image_body(response: dict[str, Any], content_type: str) -> bytes:
    assert response["statusCode"] == 200, response["body"]
    assert response["headers"]["Content-Type"] == content_type and response["isBase64Encoded"] is True
    return base64.b64decode(response["body"])


def test_http_api_event_gets_the_png_mask_at_the_photos_size(
    lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes, expected_mask: np.ndarray
) -> None:
    mask = png_pixels(image_body(lam.handler(v2_event(photo, "image/jpeg"), context()), "image/png"))
    assert mask.shape == (128, 192) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask, expected_mask)


def test_png_photo_in_a_rest_api_event_works_too(
    lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes, expected_mask: np.ndarray
) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buffer, format="PNG")
    mask = png_pixels(
        image_body(lam.handler(v1_event(buffer.getvalue(), "image/png"), context()), "image/png")
    )
    # The same pixels as the JPEG decodes to here; TF's JPEG decoder may round differently: same size.
    assert mask.shape == expected_mask.shape and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize(
    ("accept", "query"),
    [
        ("application/json", None),
        ("image/png;q=0.4, application/json", None),
        (None, {"format": "json"}),
        ("image/png", {"format": "json"}),
    ],
    ids=["accept", "accept-q", "query", "query-wins"],
)
def test_json_format_is_the_kaggle_rle_of_the_same_mask(
    lam: ModuleType,
    live: pytest.MonkeyPatch,
    photo: bytes,
    expected_mask: np.ndarray,
    accept: str | None,
    query: dict[str, str] | None,
) -> None:
    response = lam.handler(v2_event(photo, "image/jpeg", accept=accept, query=query), context())
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is False
    assert response["headers"]["Content-Type"] == "application/json"
    result = json.loads(response["body"])
    assert (result["width"], result["height"]) == (192, 128)
    np.testing.assert_array_equal(rle_decode(result["rle"], 128, 192) * 255, expected_mask)
    assert result["car_fraction"] == pytest.approx((expected_mask > 0).mean(), abs=1e-6)


def test_direct_invocation_gets_the_rgba_cutout(
    lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes, expected_mask: np.ndarray
) -> None:
    event = {"image_b64": base64.b64encode(photo).decode(), "format": "cutout"}
    cutout = png_pixels(image_body(lam.handler(event, context()), MEDIA_CUTOUT_PNG), mode="RGBA")
    assert cutout.shape == (128, 192, 4)
    np.testing.assert_array_equal(cutout[..., 3], expected_mask)
    assert cutout[cutout[..., 3] == 0].max(initial=0) == 0  # nothing of the studio under alpha 0


@pytest.mark.parametrize("via", ["query", "json-options"])
def test_finished_photo_options_pass_through_to_the_endpoint(
    lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes, served_endpoint: str, via: str
) -> None:
    options = {"backdrop": "#0a3cc8", "shadow": "1", "frame": "4:3"}
    if via == "query":
        event = v2_event(photo, "image/jpeg", query={"format": "finished-png", **options})
    else:
        event = {"image_b64": base64.b64encode(photo).decode(), "format": "finished-png", "options": options}
    finished = image_body(lam.handler(event, context()), "image/png; variant=finished")
    # What the endpoint answers for those options as custom attributes: the Lambda computed nothing.
    direct = (
        runtime_client(served_endpoint)
        .invoke_endpoint(
            EndpointName="carvana-unet",
            Body=photo,
            ContentType="image/jpeg",
            Accept="image/png; variant=finished",
            CustomAttributes="backdrop=0a3cc8,shadow=1,frame=1.3333333333333333",
        )["Body"]
        .read()
    )
    assert finished == direct


def test_json_answer_carries_box_and_review(lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes) -> None:
    response = lam.handler(
        v2_event(photo, "image/jpeg", query={"format": "json", "review_threshold": "0.5"}), context()
    )
    answer = json.loads(response["body"])
    assert {"box", "review"} <= set(answer) and set(answer["review"]) >= {"needs_review", "confidence"}


def test_bad_finish_options_are_400_naming_each_field(lam: ModuleType, env: pytest.MonkeyPatch) -> None:
    event = v2_event(JPEG_HEAD, "image/jpeg", query={"format": "jpeg", "backdrop": "pink", "margin": "lots"})
    response = lam.handler(event, context())
    assert response["statusCode"] == 400
    error = json.loads(response["body"])["error"]
    assert "backdrop must be white, black, grey, or #rrggbb; got 'pink'" in error
    assert "margin must be a number in [0, 0.45]; got 'lots'" in error


def test_s3_photo_result_goes_to_the_output_prefix(
    lam: ModuleType, live: pytest.MonkeyPatch, moto_s3: str, photo: bytes, expected_mask: np.ndarray
) -> None:
    s3 = s3_client(moto_s3)
    s3.put_object(Bucket=BUCKET, Key="incoming/shoot-7/car.jpg", Body=photo, ContentType="image/jpeg")
    body = json.dumps({"s3_uri": f"s3://{BUCKET}/incoming/shoot-7/car.jpg"}).encode()
    response = lam.handler(text_event(body), context())
    assert response["statusCode"] == 200, response["body"]
    result = json.loads(response["body"])
    assert result["input_uri"] == f"s3://{BUCKET}/incoming/shoot-7/car.jpg"
    assert result["output_uri"] == f"s3://{BUCKET}/masks/shoot-7/car.mask.png"
    stored = s3.get_object(Bucket=BUCKET, Key="masks/shoot-7/car.mask.png")
    assert stored["ContentType"] == "image/png" and result["size_bytes"] == stored["ContentLength"]
    np.testing.assert_array_equal(png_pixels(stored["Body"].read()), expected_mask)

    rle = lam.handler({"s3_uri": f"s3://{BUCKET}/incoming/shoot-7/car.jpg", "format": "json"}, context())
    assert json.loads(rle["body"])["output_uri"] == f"s3://{BUCKET}/masks/shoot-7/car.rle.json"
    stored_rle = json.loads(s3.get_object(Bucket=BUCKET, Key="masks/shoot-7/car.rle.json")["Body"].read())
    assert (stored_rle["width"], stored_rle["height"]) == (192, 128)


def _png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT") + _png_chunk(b"IEND")


@pytest.fixture(params=["carvana", "aws"])
def either_container(request: pytest.FixtureRequest, env: pytest.MonkeyPatch) -> str:
    """The function pointed at ``carvana serve`` in each container mode: its own 4xx, and the real
    container's 500 for every handler exception (``--container aws``); the mapping must hold in both."""
    fixture = "served_endpoint" if request.param == "carvana" else "aws_container_endpoint"
    env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", request.getfixturevalue(fixture))
    return str(request.param)


def test_photos_only_the_endpoint_can_refuse_keep_its_4xx_through_either_container(
    lam: ModuleType, env: pytest.MonkeyPatch, either_container: str, photo: bytes
) -> None:
    """A JPEG whose header is fine but whose data ends half-way passes the Lambda's screen and is
    refused by the model's decoder (400); a photo over the endpoint's pixel limit but not the
    Lambda's (set higher here) is refused by the endpoint's handler (413). Through the real
    container's 500 the status comes back from the error document in its body."""
    cut = photo[: len(photo) // 2]
    status, message = error_of(lam.handler(v2_event(cut, "image/jpeg"), context()))
    assert status == 400 and message.startswith("endpoint carvana-unet rejected the photo: "), message
    assert "TF Serving answered 400: jpeg::Uncompress failed. Invalid JPEG data" in message
    assert '"status"' not in message and '"error"' not in message  # the document unwrapped
    env.setenv("CARVANA_MAX_PIXELS", str(10**9))
    response = lam.handler(v2_event(_png_header(30000, 30000), "image/png"), context("req-bomb"))
    status, message = error_of(response, "req-bomb")
    assert status == 413 and "900000000 pixels, over the limit of 16000000" in message
    sagemaker_id = json.loads(response["body"])["sagemaker_request_id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", sagemaker_id)  # SageMaker's x-amzn-RequestId


def test_the_handler_names_the_functions_request_id_in_its_error(
    either_container: str, env: pytest.MonkeyPatch, photo: bytes
) -> None:
    """The request id the Lambda sends as a custom attribute comes back inside the error document,
    wrapped once more by the real container: the endpoint's log and the caller's answer match."""
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(
            EndpointName="carvana-unet",
            Body=JPEG_HEAD,
            ContentType="image/jpeg",
            CustomAttributes="carvana-request-id=req-77",
        )
    response = raised.value.response
    expected_status = 500 if either_container == "aws" else 400
    assert (response["Error"]["Code"], response["OriginalStatusCode"]) == ("ModelError", expected_status)
    document = parse_error_document(response["OriginalMessage"])
    assert document is not None and (document.status, document.request_id) == (400, "req-77")
    assert "JPEG is truncated" in document.message


def test_too_little_time_left_is_504_at_once(lam: ModuleType, env: pytest.MonkeyPatch, photo: bytes) -> None:
    """With 1.2 s left the endpoint is not called (it is unreachable here: calling it would be 502)."""
    started = time.monotonic()
    late = LambdaContext("mask", "req-late", 256, deadline=time.monotonic() + 1.2)
    status, message = error_of(lam.handler(v2_event(photo, "image/jpeg"), late), "req-late")
    assert status == 504 and "of the function's time are left: not enough to call endpoint" in message
    assert time.monotonic() - started < 0.5


class FakeRuntime(ThreadingHTTPServer):
    """SageMaker Runtime's error answers on the wire, as botocore's sagemaker-runtime model reads them
    (``x-amzn-ErrorType``, ``x-amzn-RequestId``, a JSON body): what AWS sends but a local endpoint
    never does. ``answer`` is ``(status, error type)``, or ``("slow", seconds)``."""

    answer: tuple[Any, Any] = (400, "ThrottlingException")


class FakeRuntimeHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        first, second = self.server.answer  # type: ignore[attr-defined]
        if first == "slow":
            time.sleep(second)
            return
        fields = (
            {"OriginalStatusCode": 503, "OriginalMessage": '{"error": "busy"}'}
            if second == "ModelError"
            else {}
        )
        body = json.dumps({"message": f"{second} from the fake runtime", **fields}).encode()
        self.send_response(first)
        self.send_header("x-amzn-ErrorType", second)
        self.send_header("x-amzn-RequestId", "sm-fake-0001")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_runtime(env: pytest.MonkeyPatch) -> Iterator[FakeRuntime]:
    server = FakeRuntime(("127.0.0.1", 0), FakeRuntimeHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("answer", "status", "retry_after", "expected"),
    [
        ((400, "ThrottlingException"), 429, "2", "is busy (ThrottlingException)"),
        ((429, "ModelNotReadyException"), 503, "10", "is not ready (ModelNotReadyException)"),
        ((503, "ServiceUnavailable"), 503, "10", "is not ready (ServiceUnavailable)"),
        ((500, "InternalFailure"), 502, None, "endpoint carvana-unet failed"),
        ((424, "ModelError"), 503, "10", "endpoint carvana-unet could not take the photo: busy"),
    ],
    ids=["throttled", "not-ready", "unavailable", "internal", "container-busy"],
)
def test_runtime_refusals_keep_their_meaning_with_retry_after(
    lam: ModuleType,
    fake_runtime: FakeRuntime,
    photo: bytes,
    answer: tuple[int, str],
    status: int,
    retry_after: str | None,
    expected: str,
) -> None:
    fake_runtime.answer = answer
    response = lam.handler(v2_event(photo, "image/jpeg"), context())
    got_status, message = error_of(response)
    assert got_status == status and expected in message, message
    assert response["headers"].get("Retry-After") == retry_after
    assert json.loads(response["body"])["sagemaker_request_id"] == "sm-fake-0001"


def test_the_endpoint_calls_read_timeout_follows_the_remaining_time(
    lam: ModuleType, fake_runtime: FakeRuntime, photo: bytes
) -> None:
    """4 s left: the call gets 2 s (less the margin, whole seconds) and the answer is a 504 with a
    message in about that time, while the endpoint would have taken 10 s."""
    fake_runtime.answer = ("slow", 10)
    started = time.monotonic()
    ctx = LambdaContext("mask", "req-slow", 256, deadline=time.monotonic() + 4.0)
    status, message = error_of(lam.handler(v2_event(photo, "image/jpeg"), ctx), "req-slow")
    elapsed = time.monotonic() - started
    assert status == 504 and "did not answer within 2 s" in message
    assert 1.5 < elapsed < 3.5, elapsed


def test_success_is_logged_with_size_format_and_latency(
    lam: ModuleType, live: pytest.MonkeyPatch, photo: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    lam.handler(v1_event(photo, "image/jpeg", accept="application/json"), context("req-ok"))
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert (
        line["request_id"] == "req-ok"
        and line["source"] == "rest-api-v1"
        and line["endpoint"] == "carvana-unet"
    )
    assert (line["status"], line["format"], line["size_bytes"]) == (200, "json", len(photo))
    assert line["latency_ms"] > 0 and "error" not in line


def upload_event(body: bytes = b"", content_type: str = "application/json") -> dict[str, Any]:
    """An HTTP API event for ``POST /uploads`` (a JSON body, not base64)."""
    event = v2_event(body, content_type)
    event.update(rawPath="/uploads", routeKey="POST /uploads", isBase64Encoded=False, body=body.decode())
    event["requestContext"]["http"]["path"] = "/uploads"
    return event


def test_uploads_hand_out_a_presigned_post_under_the_input_prefix(
    lam: ModuleType,
    env: pytest.MonkeyPatch,
    moto_s3: str,
    photo: bytes,
    upload_with_grant: Callable[..., None],
) -> None:
    """The grant works over real HTTP against moto in server mode, and the mask request by its key
    then reads the uploaded photo (the endpoint is unreachable here: 502 proves the photo was read
    and passed the header screen)."""
    env.setenv("MAX_IMAGE_BYTES", "500000")
    response = lam.handler(upload_event(b'{"content_type": "image/png"}'), context())
    assert response["statusCode"] == 200, response["body"]
    grant = json.loads(response["body"])
    assert re.fullmatch(rf"s3://{BUCKET}/incoming/uploads/[0-9a-f]{{32}}\.png", grant["s3_uri"])
    assert (grant["expires_in"], grant["max_bytes"]) == (300, 500000)
    policy = json.loads(base64.b64decode(grant["upload"]["fields"]["policy"]))
    assert ["content-length-range", 1, 500000] in policy["conditions"]
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buffer, format="PNG")
    upload_with_grant(grant, "car.png", buffer.getvalue(), "image/png")
    status, message = error_of(lam.handler({"s3_uri": grant["s3_uri"]}, context()))
    assert status == 502 and "could not reach endpoint carvana-unet" in message


@pytest.mark.parametrize(
    ("body", "unset", "status", "expected"),
    [
        (b'{"content_type": "image/gif"}', None, 415, '"content_type" must be one of image/jpeg, image/png'),
        (b"", "INPUT_S3_PREFIX", 400, "uploads are not enabled here"),
    ],
    ids=["gif", "no-prefix"],
)
def test_uploads_refuse_what_cannot_be_masked(
    lam: ModuleType, env: pytest.MonkeyPatch, body: bytes, unset: str | None, status: int, expected: str
) -> None:
    if unset:
        env.delenv(unset)
    got_status, message = error_of(lam.handler(upload_event(body), context()))
    assert got_status == status and expected in message, message
