"""``carvana serve`` end to end: an exported U-Net packaged, served, and called the ways clients call it.

boto3's ``sagemaker-runtime`` client, the SageMaker SDK's ``TensorFlowPredictor``, TF Serving's REST
API and the container's own ``/invocations`` must all return the same mask at the photo's size; bad
input is answered 4xx with its message and the server keeps answering; batching changes nothing but
how many model calls run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from local_aws.endpoint import server
from local_aws.endpoint.batching import BatchingConfig
from local_aws.endpoint.process import EndpointStartError
from trainer.wire import ENDPOINT_PAYLOAD_LIMIT, parse_error_document, rle_decode

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def runtime_client(url: str) -> object:
    """An unchanged boto3 sagemaker-runtime client pointed at the local endpoint."""
    return boto3.client(
        "sagemaker-runtime", endpoint_url=url, config=Config(retries={"total_max_attempts": 1}), **CREDENTIALS
    )


def png_array(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "1"  # 1-bit grey: 0/255 once expanded to 8 bits
    return np.asarray(image.convert("L"))


def invocations(
    url: str, body: bytes, content_type: str = "image/jpeg", accept: str = "image/png", **headers: str
) -> requests.Response:
    return requests.post(
        f"{url}/invocations",
        data=body,
        timeout=60,
        headers={"Content-Type": content_type, "Accept": accept, **headers},
    )


@pytest.fixture(scope="module")
def photo(make_photo: Callable[..., bytes]) -> bytes:
    return make_photo(height=72, width=108, seed=1)


@pytest.fixture(scope="module")
def reference_mask(served_endpoint: str, photo: bytes) -> np.ndarray:
    """The mask ``/invocations`` returns for ``photo`` (0/255 at the photo's size)."""
    response = invocations(served_endpoint, photo)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    mask = png_array(response.content)
    assert mask.shape == (72, 108)
    assert set(np.unique(mask)) <= {0, 255}
    return mask


def test_ping_and_unknown_routes(served_endpoint: str) -> None:
    assert requests.get(f"{served_endpoint}/ping", timeout=10).status_code == 200
    missing = requests.get(f"{served_endpoint}/nothing/here", timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})


def test_boto3_invoke_endpoint(served_endpoint: str, photo: bytes, reference_mask: np.ndarray) -> None:
    client = runtime_client(served_endpoint)
    response = client.invoke_endpoint(
        EndpointName="carvana-unet", Body=photo, ContentType="image/jpeg", Accept="image/png"
    )
    assert response["ContentType"] == "image/png"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    np.testing.assert_array_equal(png_array(response["Body"].read()), reference_mask)

    response = client.invoke_endpoint(
        EndpointName="carvana-unet", Body=photo, ContentType="application/x-image", Accept="application/json"
    )
    answer = json.loads(response["Body"].read())
    assert (answer["width"], answer["height"]) == (108, 72)
    np.testing.assert_array_equal(rle_decode(answer["rle"], 72, 108) * 255, reference_mask)


def test_boto3_via_environment_variable(
    served_endpoint: str, photo: bytes, reference_mask: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lambda's way: no endpoint_url in code, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME in the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", served_endpoint)
    client = boto3.client("sagemaker-runtime", **CREDENTIALS)
    response = client.invoke_endpoint(
        EndpointName="any-name", Body=photo, ContentType="image/jpeg", Accept="*/*"
    )
    np.testing.assert_array_equal(png_array(response["Body"].read()), reference_mask)


def test_sdk_tensorflow_predictor(
    served_endpoint: str, photo: bytes, reference_mask: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker
    from sagemaker.tensorflow import TensorFlowPredictor

    session = sagemaker.Session(
        boto_session=boto3.Session(**CREDENTIALS), sagemaker_runtime_client=runtime_client(served_endpoint)
    )
    predictor = TensorFlowPredictor(
        "carvana-unet", sagemaker_session=session, model_name="unet", model_version="1"
    )
    answer = predictor.predict({"instances": [{"b64": base64.b64encode(photo).decode()}]})
    assert (answer["width"], answer["height"]) == (108, 72)
    np.testing.assert_array_equal(rle_decode(answer["rle"], 72, 108) * 255, reference_mask)


def test_tf_serving_rest_formats(
    served_endpoint: str, make_photo, photo: bytes, reference_mask: np.ndarray
) -> None:
    b64 = base64.b64encode(photo).decode()
    row = requests.post(
        f"{served_endpoint}/v1/models/unet:predict",
        timeout=60,
        json={"signature_name": "mask_png", "instances": [{"image_bytes": {"b64": b64}, "orientation": 1}]},
    )
    assert row.status_code == 200, row.text
    prediction = row.json()["predictions"][0]
    assert (prediction["height"], prediction["width"]) == (72, 108)
    np.testing.assert_array_equal(
        png_array(base64.b64decode(prediction["mask_png_bytes"]["b64"])), reference_mask
    )

    columnar = requests.post(
        f"{served_endpoint}/v1/models/unet/versions/1:predict",
        timeout=60,
        json={"inputs": {"image_bytes": [{"b64": b64}]}},
    )  # serving_default
    assert columnar.status_code == 200, columnar.text
    outputs = columnar.json()["outputs"]
    np.testing.assert_array_equal(np.asarray(outputs["mask"][0], dtype=np.uint8) * 255, reference_mask)
    probabilities = np.asarray(outputs["probabilities"][0])
    np.testing.assert_array_equal((probabilities > 0.5) * 255, reference_mask)

    # predict_images on the decoded pixels of a lossless photo: the same mask as its PNG bytes.
    png = make_photo(height=20, width=30, fmt="PNG", seed=2)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
    tfs = f"{served_endpoint}/tfs/v1/models/unet:predict"  # the container's nginx route to TF Serving
    floats = requests.post(
        tfs, timeout=60, json={"signature_name": "predict_images", "instances": [pixels.tolist()]}
    )
    assert floats.status_code == 200, floats.text
    mask = np.asarray(floats.json()["predictions"][0]["mask"], dtype=np.uint8)
    from_bytes = invocations(served_endpoint, png, content_type="image/png")
    np.testing.assert_array_equal(mask * 255, png_array(from_bytes.content))


def test_model_status_and_metadata(served_endpoint: str) -> None:
    status = requests.get(f"{served_endpoint}/v1/models/unet", timeout=10)
    assert status.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    metadata = requests.get(f"{served_endpoint}/v1/models/unet/versions/1/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": "unet", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "mask_png", "mask_png_tta", "predict_images"} <= set(signatures)
    mask_png = signatures["mask_png"]
    assert mask_png["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(mask_png["outputs"]) == {"mask_png_bytes", "height", "width", "car_fraction"}
    assert mask_png["method_name"] == "tensorflow/serving/predict"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/unet:predict", "", 400, "JSON Parse error: The document is empty"),
        ("POST", "/v1/models/unet:predict", "{", 400, "JSON Parse error:"),
        ("POST", "/v1/models/unet:predict", "{}", 400, "Missing 'inputs' or 'instances' key"),
        (
            "POST",
            "/v1/models/unet:predict",
            '{"instances": [], "inputs": []}',
            400,
            "expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        ("POST", "/v1/models/unet:predict", '{"instances": []}', 400, "No values in 'instances' array"),
        (
            "POST",
            "/v1/models/unet:predict",
            '{"instances": [{"b64": "@@@"}]}',
            400,
            "Unable to base64 decode",
        ),
        (
            "POST",
            "/v1/models/unet:predict",
            '{"instances": [{"b64": "aGVsbG8="}]}',
            400,
            "Unknown image file format",
        ),
        ("POST", "/v1/models/unet:predict", '{"instances": [7]}', 400, "is not of expected type: string"),
        (
            "POST",
            "/v1/models/unet:predict",
            '{"signature_name": "nope", "instances": [1]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/unet:predict",
            '{"signature_name": "predict_images", "instances": [[1.0, 2.0]]}',
            400,
            "input 'images' of signature 'predict_images' has shape [1, 2], expected [-1,-1,-1,3]",
        ),
        (
            "POST",
            "/v1/models/other:predict",
            '{"instances": [1]}',
            404,
            "Servable not found for request: Latest(other)",
        ),
        (
            "POST",
            "/v1/models/unet/versions/2:predict",
            '{"instances": [1]}',
            404,
            "Servable not found for request: Specific(unet, 2)",
        ),
        ("GET", "/v1/models/unet/versions/3", None, 404, "Servable not found for request: Specific(unet, 3)"),
        (
            "POST",
            "/v1/models/unet:classify",
            '{"examples": []}',
            400,
            "Expected classify signature method_name to be tensorflow/serving/classify",
        ),
    ],
)
def test_tf_serving_rest_errors(
    served_endpoint: str, method: str, path: str, body: str | None, status: int, message: str
) -> None:
    response = requests.request(method, served_endpoint + path, data=body, timeout=60)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_custom_attributes_pick_model_and_version(
    served_endpoint: str, photo: bytes, reference_mask: np.ndarray
) -> None:
    attributes = "X-Amzn-SageMaker-Custom-Attributes"
    same = invocations(
        served_endpoint, photo, **{attributes: "tfs-model-name=unet,tfs-model-version=1,trace=7"}
    )
    np.testing.assert_array_equal(png_array(same.content), reference_mask)
    missing = invocations(served_endpoint, photo, **{attributes: "tfs-model-version=2"})
    assert missing.status_code == 404
    assert "Servable not found for request: Specific(unet, 2)" in missing.json()["error"]

    client = runtime_client(served_endpoint)
    with pytest.raises(ClientError) as err:
        client.invoke_endpoint(
            EndpointName="e", Body=photo, ContentType="image/jpeg", CustomAttributes="tfs-model-name=other"
        )
    assert err.value.response["OriginalStatusCode"] == 404
    assert "Latest(other)" in err.value.response["OriginalMessage"]


BAD_INPUTS = [
    # (id, body, content type, accept, status, message)
    ("empty", b"", "image/jpeg", "image/png", 400, "request body is empty"),
    ("not-an-image", b"hello, not really an image", "image/jpeg", "image/png", 400, "is not an image"),
    ("content-type", b"a,b\n1,2\n", "text/csv", "image/png", 415, "Content-Type 'text/csv' is not supported"),
    ("accept", None, "image/jpeg", "text/html", 406, "Accept 'text/html' is not supported"),
    ("bomb", "bomb", "image/png", "image/png", 413, "refused from its header before decoding"),
    ("json", b'{"instances": "x"}', "application/json", "image/png", 400, 'non-empty "instances" list'),
]
with_bad_inputs = pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)


def bad_body(body: bytes | str | None, photo: bytes, png_header: Callable[[int, int], bytes]) -> bytes:
    """A BAD_INPUTS body: None is the good photo (sent with a bad header), "bomb" a PNG claiming 8.1 GP."""
    if body is None:
        return photo
    return png_header(90000, 90000) if body == "bomb" else body  # type: ignore[return-value]


@with_bad_inputs
def test_bad_input_is_4xx_with_its_message(
    served_endpoint: str,
    photo: bytes,
    reference_mask: np.ndarray,
    png_header: Callable[[int, int], bytes],
    body: bytes | str | None,
    content_type: str,
    accept: str,
    status: int,
    message: str,
) -> None:
    body = bad_body(body, photo, png_header)
    response = invocations(served_endpoint, body, content_type, accept)
    assert response.status_code == status
    answer = response.json()
    assert message in answer["error"] and answer["status"] == status
    assert re.fullmatch(r"[0-9a-f]{32}", answer["request_id"])  # made by the handler: none was sent

    # Through SageMaker Runtime: ModelError (424) carrying the container's status and message.
    with pytest.raises(ClientError) as err:
        runtime_client(served_endpoint).invoke_endpoint(
            EndpointName="carvana-unet", Body=body, ContentType=content_type, Accept=accept
        )
    assert err.value.response["Error"]["Code"] == "ModelError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err.value.response["OriginalStatusCode"] == status
    assert message in json.loads(err.value.response["OriginalMessage"])["error"]
    assert f"Received client error ({status}) from primary" in err.value.response["Error"]["Message"]

    # ...and the server goes on answering.
    assert requests.get(f"{served_endpoint}/ping", timeout=10).status_code == 200
    np.testing.assert_array_equal(png_array(invocations(served_endpoint, photo).content), reference_mask)


@with_bad_inputs
def test_the_aws_container_answers_every_handler_error_500_with_the_document_inside(
    aws_container_endpoint: str,
    photo: bytes,
    png_header: Callable[[int, int], bytes],
    body: bytes | str | None,
    content_type: str,
    accept: str,
    status: int,
    message: str,
) -> None:
    """As python_service.py: 500 and ``{"error": str(e)}``; str(e) is the handler's error document,
    so the status it meant (and the request id from the custom attribute) can be read back."""
    body = bad_body(body, photo, png_header)
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "carvana-request-id=req-9"}
    response = invocations(aws_container_endpoint, body, content_type, accept, **headers)
    assert response.status_code == 500 and set(response.json()) == {"error"}
    document = parse_error_document(response.content)
    assert document is not None and (document.status, document.request_id) == (status, "req-9")
    assert message in document.message

    with pytest.raises(ClientError) as err:
        runtime_client(aws_container_endpoint).invoke_endpoint(
            EndpointName="carvana-unet", Body=body, ContentType=content_type, Accept=accept
        )
    assert err.value.response["OriginalStatusCode"] == 500
    assert "Received server error (500) from primary" in err.value.response["Error"]["Message"]
    inner = parse_error_document(err.value.response["OriginalMessage"])
    assert inner is not None and inner.status == status and message in inner.message


def test_the_aws_container_has_no_size_limit_before_the_handler(
    aws_container_endpoint: str, photo: bytes
) -> None:
    """nginx.conf.template's client_max_body_size 0: a 7 MB body reaches the handler, whose own
    check answers (as 500); SageMaker Runtime's route keeps Runtime's own 6 MB limit."""
    body = photo + bytes(ENDPOINT_PAYLOAD_LIMIT)
    response = invocations(aws_container_endpoint, body)
    document = parse_error_document(response.content)
    assert response.status_code == 500 and document is not None and document.status == 413
    assert f"photo is {len(body)} bytes, over the limit of {ENDPOINT_PAYLOAD_LIMIT} bytes" in document.message
    with pytest.raises(ClientError) as err:
        runtime_client(aws_container_endpoint).invoke_endpoint(
            EndpointName="e", Body=body, ContentType="image/jpeg"
        )
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


@pytest.mark.parametrize("mode", ["carvana", "aws"])
def test_custom_attributes_are_parsed_as_strictly_as_the_container(
    request: pytest.FixtureRequest, mode: str, photo: bytes
) -> None:
    """tfs_utils.py: ``split("=")`` without strip. A value holding '=' fails before the handler (falcon's
    own 500: a JSON title for JSON-accepting clients, else an empty body); a space stays in the name."""
    url = request.getfixturevalue("served_endpoint" if mode == "carvana" else "aws_container_endpoint")
    header = "X-Amzn-SageMaker-Custom-Attributes"
    for accept, expected_body in (
        ("application/json", b'{"title": "500 Internal Server Error"}'),
        ("image/png", b""),
    ):
        bad = invocations(url, photo, accept=accept, **{header: "tfs-model-name=unet=2"})
        if mode == "aws":
            assert (bad.status_code, bad.content) == (500, expected_body)
        else:
            assert bad.status_code == 400
            assert "custom attribute 'tfs-model-name=unet=2' holds more than one '='" in bad.json()["error"]
    spaced = invocations(url, photo, **{header: "tfs-model-name=unet ,tfs-method=predict"})
    document = parse_error_document(spaced.content)
    assert document is not None and document.status == 404 and "Latest(unet )" in document.message
    assert spaced.status_code == (500 if mode == "aws" else 404)


def test_oversized_request_is_413_and_the_server_keeps_serving(
    served_endpoint: str, photo: bytes, reference_mask: np.ndarray
) -> None:
    body = photo + bytes(ENDPOINT_PAYLOAD_LIMIT)
    response = invocations(served_endpoint, body)
    assert response.status_code == 413
    assert f"over the limit of {ENDPOINT_PAYLOAD_LIMIT} bytes" in response.json()["error"]

    with pytest.raises(ClientError) as err:
        runtime_client(served_endpoint).invoke_endpoint(EndpointName="e", Body=body, ContentType="image/jpeg")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert "send large photos through S3" in err.value.response["Error"]["Message"]

    np.testing.assert_array_equal(png_array(invocations(served_endpoint, photo).content), reference_mask)


def test_batching_gives_the_same_masks_and_sigterm_lets_requests_finish(
    tiny_saved_model: Path, endpoint_factory, served_endpoint: str, make_photo, tmp_path: Path
) -> None:
    """A second server, from the model_dir folder (no code/: serving.inference's handlers), batching on."""
    photos = [make_photo(height=48 + 8 * i, width=80 + 4 * i, seed=10 + i) for i in range(4)]
    expected = [png_array(invocations(served_endpoint, p).content) for p in photos]
    env = {
        "SAGEMAKER_TFS_ENABLE_BATCHING": "true",
        "SAGEMAKER_TFS_MAX_BATCH_SIZE": "4",
        "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": "2000000",
    }
    with endpoint_factory(
        tiny_saved_model, "--endpoint-name", "studio-masks", env=env, log_dir=tmp_path
    ) as url:
        client = runtime_client(url)

        def call(body: bytes) -> np.ndarray:
            response = client.invoke_endpoint(
                EndpointName="studio-masks", Body=body, ContentType="image/jpeg", Accept="image/png"
            )
            return png_array(response["Body"].read())

        with ThreadPoolExecutor(4) as pool:
            masks = list(pool.map(call, photos))
        for mask, want in zip(masks, expected, strict=True):
            np.testing.assert_array_equal(mask, want)

        with pytest.raises(ClientError) as err:
            client.invoke_endpoint(EndpointName="other", Body=photos[0], ContentType="image/jpeg")
        assert err.value.response["Error"]["Code"] == "ValidationError"
        assert "Endpoint other not found" in err.value.response["Error"]["Message"]

        log_path = tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log"
        log = log_path.read_text()
        assert "handlers from serving.inference" in log
        assert "batch of 4 requests (4 instances) in one mask_png call" in log
        assert re.search(r'"POST /endpoints/studio-masks/invocations" 200 \d+B in [\d.]+ ms', log)

        # Graceful shutdown: a request waiting in the batcher (alone, it waits the 2 s timeout) when
        # SIGTERM arrives still gets its answer, then the server exits.
        master = int(re.search(r"Listening at: \S+ \((\d+)\)", log).group(1))
        result: dict[str, requests.Response] = {}
        worker = threading.Thread(target=lambda: result.update(r=invocations(url, photos[0])))
        worker.start()
        time.sleep(1.0)
        os.kill(master, signal.SIGTERM)
        worker.join(timeout=60)
        assert result["r"].status_code == 200
        np.testing.assert_array_equal(png_array(result["r"].content), expected[0])
        deadline = time.monotonic() + 60
        while "Shutting down: Master" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/ping", timeout=5)


def test_serve_cli_refuses_bad_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as err:
        server.main(["--model", str(tmp_path / "missing.tar.gz")])
    assert err.value.code == 2
    assert "carvana serve: error: --model" in capsys.readouterr().err
    monkeypatch.setenv("SAGEMAKER_TFS_ENABLE_BATCHING", "maybe")
    with pytest.raises(SystemExit):
        server.main(["--model", str(tmp_path)])
    assert "SAGEMAKER_TFS_ENABLE_BATCHING must be 'true' or 'false'" in capsys.readouterr().err


def test_serve_config_flags_win_over_environment(tmp_path: Path) -> None:
    parser = server.build_parser()
    env = {
        "SAGEMAKER_BIND_TO_PORT": "9090",
        "SAGEMAKER_TFS_ENABLE_BATCHING": "true",
        "SAGEMAKER_TFS_MAX_BATCH_SIZE": "16",
        "SAGEMAKER_GUNICORN_WORKERS": "2",
    }
    config = server.ServeConfig.from_args(parser.parse_args(["--model", str(tmp_path)]), env)
    assert (config.port, config.workers, config.host) == (9090, 2, "127.0.0.1")
    assert config.batching == BatchingConfig(enabled=True, max_batch_size=16, timeout_micros=1000)
    args = parser.parse_args(
        ["--model", str(tmp_path), "--port", "7000", "--no-batching", "--max-batch-size", "2"]
    )
    config = server.ServeConfig.from_args(args, env)
    assert (config.port, config.batching.enabled, config.batching.max_batch_size) == (7000, False, 2)


def test_a_model_that_cannot_load_is_reported_by_ping(endpoint_factory, tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(Path(__file__), arcname="code/inference.py")
    expected = r"cannot serve .*model.tar.gz: .*no SavedModel found"
    with pytest.raises(EndpointStartError, match=expected), endpoint_factory(archive, log_dir=tmp_path):
        pass
