"""``carvana serve`` under load: bounded admission, per-request deadlines, and TF Serving's REST API
refusing decompression bombs from their headers as ``/invocations`` does.

Timing is made deterministic with the server's own batching: with ``SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS``
at 2 s and a batch size no request fills, every model call waits 2 s for company, so it is known which
request holds the only slot when the others arrive.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from local_aws.endpoint import server
from local_aws.endpoint.admission import AdmissionConfig
from trainer.wire import MAX_PIXELS


def post(url: str, photo: bytes, path: str = "/invocations") -> requests.Response:
    return requests.post(
        f"{url}{path}", data=photo, timeout=60, headers={"Content-Type": "image/jpeg", "Accept": "image/png"}
    )


def mask_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "1"  # 1-bit grey: 0/255 once expanded to 8 bits
    return np.asarray(image.convert("L"))


@pytest.mark.parametrize("prefix", ["", "/tfs"])
@pytest.mark.parametrize(
    "document",
    [
        lambda b64: {"instances": [{"b64": b64}]},
        lambda b64: {
            "signature_name": "mask_png",
            "instances": [{"image_bytes": {"b64": b64}, "orientation": 1}],
        },
        lambda b64: {"inputs": {"image_bytes": [{"b64": b64}]}},
    ],
    ids=["serving_default", "mask_png", "columnar"],
)
def test_tf_serving_rest_refuses_a_png_bomb_from_its_header(
    served_endpoint: str,
    png_header: Callable[[int, int], bytes],
    make_photo: Callable[..., bytes],
    prefix: str,
    document: Callable[[str], dict],
) -> None:
    bomb = png_header(90000, 90000)
    started = time.perf_counter()
    response = requests.post(
        f"{served_endpoint}{prefix}/v1/models/unet:predict",
        timeout=60,
        json=document(base64.b64encode(bomb).decode()),
    )
    assert response.status_code == 413
    message = response.json()["error"]
    assert "instance 0, input 'image_bytes': photo is 90000x90000 = 8100000000 pixels" in message
    assert f"over the limit of {MAX_PIXELS} pixels: refused from its header" in message
    assert time.perf_counter() - started < 5  # nothing was decoded
    good = requests.post(
        f"{served_endpoint}{prefix}/v1/models/unet:predict",
        timeout=60,
        json=document(base64.b64encode(make_photo()).decode()),
    )
    assert good.status_code == 200, good.text


def test_admission_config_from_flags_and_environment(tmp_path: Path) -> None:
    parser = server.build_parser()
    env = {"CARVANA_MAX_INFLIGHT": "3", "CARVANA_MAX_QUEUE": "0", "CARVANA_REQUEST_DEADLINE_SECONDS": "9.5"}
    config = server.ServeConfig.from_args(parser.parse_args(["--model", str(tmp_path)]), env)
    assert config.admission == AdmissionConfig(max_inflight=3, max_queue=0, deadline_s=9.5)
    assert config.gunicorn_threads == 3 + 0 + 2
    flags = ["--max-queue", "4", "--deadline", "2", "--threads", "7"]
    args = parser.parse_args(["--model", str(tmp_path), *flags])
    config = server.ServeConfig.from_args(args, env)
    assert config.admission == AdmissionConfig(max_inflight=3, max_queue=4, deadline_s=2.0)
    assert config.gunicorn_threads == 7
    default = server.ServeConfig.from_args(parser.parse_args(["--model", str(tmp_path)]), {})
    admission = default.admission
    assert (admission.max_inflight, admission.max_queue, default.gunicorn_threads) == (2, 6, 10)
    batching = server.ServeConfig.from_args(parser.parse_args(["--model", str(tmp_path), "--batching"]), {})
    assert batching.admission.max_inflight == 8  # a whole batch (SAGEMAKER_TFS_MAX_BATCH_SIZE) gets in
    with pytest.raises(ValueError, match="CARVANA_MAX_INFLIGHT must be >= 1, got 0"):
        AdmissionConfig.from_env({"CARVANA_MAX_INFLIGHT": "0"})
    with pytest.raises(ValueError, match="CARVANA_REQUEST_DEADLINE_SECONDS must be a number, got 'soon'"):
        AdmissionConfig.from_env({"CARVANA_REQUEST_DEADLINE_SECONDS": "soon"})


def test_more_requests_than_it_holds_get_503_and_the_deadline_504(
    tiny_saved_model: Path, endpoint_factory, make_photo: Callable[..., bytes], tmp_path: Path
) -> None:
    """One slot, two places in the queue, a 3 s deadline; every model call takes 2 s (batching).

    t=0    A runs (its 2 s batch wait), answered 200 at ~2 s
    t=0.3  B and C wait; D and E find the queue full: 503 at once, with Retry-After
    t=2    B or C gets the slot; at ~3.3 s it is past its deadline: 504 (its work ends at ~4 s,
           holding the slot), and the other, still waiting at its deadline: 503
    then   the server answers the next request 200, with the right mask.
    """
    photo = make_photo(height=48, width=64, seed=3)
    env = {
        "SAGEMAKER_TFS_ENABLE_BATCHING": "true",
        "SAGEMAKER_TFS_MAX_BATCH_SIZE": "8",
        "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": "2000000",
    }
    args = ("--max-inflight", "1", "--max-queue", "2", "--deadline", "3")
    with endpoint_factory(tiny_saved_model, *args, env=env, log_dir=tmp_path) as url:
        results: dict[str, requests.Response] = {}

        def send(name: str, path: str = "/invocations") -> threading.Thread:
            thread = threading.Thread(target=lambda: results.update({name: post(url, photo, path)}))
            thread.start()
            return thread

        threads = [send("A")]
        time.sleep(0.3)
        threads += [send("B"), send("C")]
        time.sleep(0.3)
        threads += [send("D"), send("E", "/endpoints/carvana-unet/invocations")]
        for thread in threads:
            thread.join(timeout=60)

        reference = mask_of(results["A"])
        assert reference.shape == (48, 64)
        refused = results["D"]
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "the endpoint is at capacity (1 requests running, 2 waiting" in refused.json()["error"]
        runtime = results["E"]  # SageMaker Runtime relays the container's 503 as a ModelError
        assert (runtime.status_code, runtime.headers["x-amzn-ErrorType"]) == (424, "ModelError")
        assert runtime.json()["OriginalStatusCode"] == 503
        assert "at capacity" in runtime.json()["OriginalMessage"]

        late = sorted((results["B"], results["C"]), key=lambda r: r.status_code)
        assert [r.status_code for r in late] == [503, 504]
        assert "no free slot within the request deadline of 3 s" in late[0].json()["error"]
        assert late[0].headers["Retry-After"] == "1"
        assert "ran past its deadline of 3 s" in late[1].json()["error"]

        assert requests.get(f"{url}/ping", timeout=10).status_code == 200  # never gated
        time.sleep(1.5)  # the abandoned request's work ends at ~4 s and gives its slot back
        np.testing.assert_array_equal(mask_of(post(url, photo)), reference)
        log = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
        assert "ran past its 3 s deadline: answered 504, still running" in log
        assert (
            json.loads(requests.get(f"{url}/v1/models/unet", timeout=10).content)["model_version_status"][0][
                "state"
            ]
            == "AVAILABLE"
        )
