"""local_aws/endpoint/tfs_json.py: TF Serving's REST JSON (rows, columns, b64 in and out, error texts)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from local_aws.endpoint.tfs_json import InputSpec, format_predict_response, parse_predict_request
from trainer.wire import WireError

STRING = InputSpec(np.dtype(object), (None,))
IMAGES = InputSpec(np.dtype(np.float32), (None, None, None, 3))
SIGNATURES = {"": {"image_bytes": STRING}, "two": {"a": IMAGES, "b": InputSpec(np.dtype(np.int32), (None,))}}


def parse(document: object) -> object:
    def specs(name: str) -> dict[str, InputSpec]:
        if name not in SIGNATURES:
            raise WireError(f"no signature {name}")
        return SIGNATURES[name]

    return parse_predict_request(json.dumps(document).encode(), specs)


def test_rows_and_columns_with_b64() -> None:
    b64 = base64.b64encode(b"\xff\xd8photo").decode()
    for document in (
        {"instances": [{"b64": b64}]},
        {"instances": [{"image_bytes": {"b64": b64}}]},
        {"inputs": [{"b64": b64}]},
        {"inputs": {"image_bytes": [{"b64": b64}]}},
    ):
        request = parse(document)
        assert request.inputs["image_bytes"].tolist() == [b"\xff\xd8photo"]
        assert request.row_format == ("instances" in document)
    request = parse({"signature_name": "two", "instances": [{"a": [[[0.5, 0, 1]]], "b": 3}] * 2})
    assert request.inputs["a"].shape == (2, 1, 1, 3) and request.inputs["a"].dtype == np.float32
    assert request.inputs["b"].tolist() == [3, 3]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"instances": ["x", ["y"]]}, "Expecting shape [] but got: [1]"),
        (
            {"signature_name": "two", "instances": [1]},
            "instances is a plain list, but expecting list of objects",
        ),
        ({"signature_name": "two", "instances": [{"a": [[[1, 2, 3]]]}]}, "must only have keys: a,b"),
        (
            {"signature_name": "two", "inputs": {"a": [[[[1, 2, 3]]]]}},
            "Missing named input: b in 'inputs' object.",
        ),
        (
            {"signature_name": "two", "instances": [{"a": [[[1, 2, 3]]], "b": 1.5}]},
            "is not of expected type: int32",
        ),
        ({"instances": [{"b64": "***"}]}, "Unable to base64 decode"),
        ({"signature_name": 3, "instances": [1]}, "'signature_name' key must be a string value."),
        ({"signature_name": "none", "instances": [1]}, "no signature none"),
        ({"signature_name": "two", "instances": [{"a": [[[1], 2]], "b": 1}]}, "found at incorrect level"),
    ],
)
def test_malformed_requests_get_tf_servings_messages(document: object, message: str) -> None:
    with pytest.raises(WireError) as err:
        parse(document)
    assert message in str(err.value)
    assert err.value.status == 400


def test_responses_row_and_columnar() -> None:
    outputs = {
        "mask_png_bytes": np.array([b"\x89PNG one", b"\x89PNG two"], dtype=object),
        "car_fraction": np.array([0.1, 1.0], dtype=np.float32),
        "height": np.array([4, 5], dtype=np.int32),
    }
    rows = json.loads(format_predict_response(outputs, row_format=True))["predictions"]
    assert rows[1] == {
        "mask_png_bytes": {"b64": base64.b64encode(b"\x89PNG two").decode()},
        "car_fraction": 1.0,
        "height": 5,
    }
    text = format_predict_response(
        {"p": np.array([[0.1, np.nan]], dtype=np.float32)}, row_format=False
    ).decode()
    assert text == '{"outputs": [[0.1,NaN]]}'  # float32 0.1 written short, as TF Serving does
    single = json.loads(
        format_predict_response({"labels": np.array([b"car"], dtype=object)}, row_format=True)
    )
    assert single == {"predictions": ["car"]}
