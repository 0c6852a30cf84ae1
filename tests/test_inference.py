"""serving/inference.py: the container's input/output handlers on real JPEG/PNG bytes.

The output handler always gets a real ``requests`` response from a real TF Serving REST call (the
``served_endpoint`` fixture runs ``carvana serve`` on an exported U-Net), as in the container.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from local_aws.endpoint.container import Context
from serving import inference
from serving.inference import (
    check_photo,
    input_handler,
    negotiate_output,
    output_handler,
)
from trainer.wire import (
    MAX_PIXELS,
    MEDIA_CUTOUT_PNG,
    OutputFormat,
    PhotoLimits,
    WireError,
    parse_error_document,
    rle_decode,
)


def context(
    content_type: str = "image/jpeg",
    accept: str = "image/png",
    rest_uri: str = "",
    attributes: str | None = None,
) -> Context:
    """The container's Context as python_service builds it for a request."""
    return Context("unet", None, None, rest_uri, None, None, attributes, content_type, accept, None)


def round_trip(
    url: str, photo: bytes, content_type: str, accept: str, body: Any = None, attributes: str | None = None
) -> tuple[bytes, str]:
    """input_handler -> real POST to TF Serving -> output_handler, as python_service chains them."""
    ctx = context(content_type, accept, f"{url}/v1/models/unet:predict", attributes)
    processed = input_handler(io.BytesIO(photo if body is None else body), ctx)
    return output_handler(requests.post(ctx.rest_uri, data=processed, timeout=60), ctx)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("image/png", OutputFormat.MASK_PNG),
        ("*/*", OutputFormat.MASK_PNG),
        ("application/json", OutputFormat.RLE_JSON),
        ("", OutputFormat.RLE_JSON),
        ("image/png; variant=cutout", OutputFormat.CUTOUT_PNG),
        ('Image/PNG;Variant="cutout"', OutputFormat.CUTOUT_PNG),
        ("text/html, application/json;q=0.5, image/png;q=0.9", OutputFormat.MASK_PNG),
        ("application/json, image/png; variant=cutout", OutputFormat.RLE_JSON),
        ("application/*", OutputFormat.RLE_JSON),
        ("image/png;q=0, image/*;q=0.2", OutputFormat.MASK_PNG),
        ("image/jpeg", OutputFormat.FINISHED_JPEG),
        ("image/png; variant=finished", OutputFormat.FINISHED_PNG),
    ],
)
def test_accept_negotiation(accept: str, expected: OutputFormat) -> None:
    assert negotiate_output(accept) is expected


def test_unsupported_accept_is_406_naming_the_choices() -> None:
    with pytest.raises(WireError) as err:
        negotiate_output("text/html")
    assert err.value.status == 406
    assert "'text/html' is not supported" in str(err.value)
    assert "image/png; variant=cutout" in str(err.value)


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/x-image", "Image/JPEG;x=1"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_input_handler_sends_the_photo_bytes_to_mask_png(make_photo, content_type: str, fmt: str) -> None:
    photo = make_photo(fmt=fmt)
    request = json.loads(input_handler(io.BytesIO(photo), context(content_type)))
    assert request["signature_name"] == "mask_png"
    assert base64.b64decode(request["instances"][0]["image_bytes"]["b64"]) == photo
    assert request["instances"][0]["orientation"] == 1  # no EXIF: as stored


@pytest.mark.parametrize("accept", ["application/json", "image/jpeg", "image/png; variant=finished"])
def test_json_and_finished_photos_ask_alpha_png(make_photo, accept: str) -> None:
    request = json.loads(input_handler(io.BytesIO(make_photo()), context(accept=accept)))
    assert request["signature_name"] == "alpha_png"


@pytest.mark.parametrize(
    ("attributes", "body_options", "message"),
    [
        (
            "backdrop=pink",
            None,
            "bad finish options in custom attributes: backdrop must be white, black, grey",
        ),
        ("carvana-request-id=r1,shadow=perhaps", None, "custom attributes: shadow must be true or false"),
        (
            None,
            {"margin": 2, "frame": "wide"},
            r'in JSON field "options": margin must be .*; frame must be an aspect',
        ),
        (None, {"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_bad_finish_options_are_400_naming_the_field(
    make_photo, attributes, body_options, message: str
) -> None:
    if body_options is None:
        body, content_type = make_photo(), "image/jpeg"
    else:
        document = {"image": base64.b64encode(make_photo()).decode(), "options": body_options}
        body, content_type = json.dumps(document).encode(), "application/json"
    with pytest.raises(WireError) as err:
        input_handler(io.BytesIO(body), context(content_type, "image/jpeg", attributes=attributes))
    assert err.value.status == 400
    assert re.search(message.replace("[", r"\["), err.value.message)


@pytest.mark.parametrize(
    "document",
    [
        lambda b64: {"instances": [{"b64": b64}]},
        lambda b64: {"instances": [{"image_bytes": {"b64": b64}}]},
        lambda b64: {"image": b64},
        lambda b64: {"image": b64.rstrip("=")},  # unpadded base64 is accepted too
    ],
)
def test_input_handler_reads_base64_json(make_photo, document) -> None:
    photo = make_photo()
    body = json.dumps(document(base64.b64encode(photo).decode())).encode()
    request = json.loads(input_handler(io.BytesIO(body), context("application/json")))
    assert base64.b64decode(request["instances"][0]["image_bytes"]["b64"]) == photo


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("image/jpeg", b"", 400, "request body is empty"),
        ("image/jpeg", b"hello, not a photo", 400, "is not an image: expected JPEG or PNG"),
        ("text/csv", b"1,2,3", 415, "Content-Type 'text/csv' is not supported"),
        ("application/json", b"{not json", 400, "request body is not valid JSON"),
        ("application/json", b"[1, 2]", 400, "JSON body must be an object"),
        ("application/json", b'{"instances": []}', 400, 'neither "image" nor a non-empty "instances"'),
        ("application/json", b'{"instances": [{"b64": "AA"}, {"b64": "AA"}]}', 400, "one photo per request"),
        ("application/json", b'{"image": "***"}', 400, 'JSON field "image" is not valid base64'),
        ("application/json", b'{"image": 42}', 400, 'JSON field "image" must be a base64 string'),
        ("application/json", b'{"instances": [[1, 2]]}', 400, "instances[0] must be"),
    ],
)
def test_bad_requests_name_what_was_wrong(content_type: str, body: bytes, status: int, message: str) -> None:
    with pytest.raises(WireError) as err:
        input_handler(io.BytesIO(body), context(content_type))
    assert err.value.status == status
    assert message in err.value.message
    # str() is what survives the real container's {"error": str(e)}: the whole error document.
    document = parse_error_document(json.dumps({"error": str(err.value)}))
    assert document is not None and document.status == status and message in document.message
    assert document.request_id and len(document.request_id) == 32  # none sent: the handler made one


def test_formats_the_model_cannot_read_are_415(make_photo) -> None:
    with pytest.raises(WireError, match="photo format GIF is not supported") as err:
        input_handler(io.BytesIO(make_photo(fmt="GIF")), context("image/png"))
    assert err.value.status == 415


def test_photo_over_the_byte_limit_is_413(make_photo) -> None:
    photo = make_photo()
    big = photo + bytes(inference.LIMITS.max_image_bytes)
    limit = inference.LIMITS.max_image_bytes
    with pytest.raises(WireError, match=f"over the limit of {limit} bytes") as err:
        input_handler(io.BytesIO(big), context())
    assert err.value.status == 413
    with pytest.raises(WireError, match="over the limit of 100 bytes"):
        check_photo(photo, PhotoLimits(max_image_bytes=100))


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (5000, 4000, f"5000x4000 = 20000000 pixels, over the limit of {MAX_PIXELS}"),
        (60000, 60000, "decompression bomb"),
    ],
)
def test_decompression_bombs_are_refused_from_the_header(
    png_header, width: int, height: int, message: str
) -> None:
    bomb = png_header(width, height)
    assert len(bomb) < 1000
    with pytest.raises(WireError, match=message.replace("[", r"\[")) as err:
        input_handler(io.BytesIO(bomb), context("image/png"))
    assert err.value.status == 413


def test_limits_come_from_the_environment() -> None:
    limits = PhotoLimits.from_env({"CARVANA_MAX_IMAGE_BYTES": "1000", "CARVANA_MAX_PIXELS": "50"})
    assert limits == PhotoLimits(max_image_bytes=1000, max_pixels=50)
    assert PhotoLimits.from_env({}) == PhotoLimits()
    with pytest.raises(ValueError, match="CARVANA_MAX_PIXELS='lots' is not an integer"):
        PhotoLimits.from_env({"CARVANA_MAX_PIXELS": "lots"})


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_mask_rle_and_cutout_agree_at_the_photos_size(served_endpoint: str, make_photo, fmt: str) -> None:
    photo = make_photo(height=70, width=110, fmt=fmt, seed=3)
    content_type = f"image/{fmt.lower()}"

    png, png_type = round_trip(served_endpoint, photo, content_type, "image/png")
    assert png_type == "image/png"
    mask_image = Image.open(io.BytesIO(png))
    assert (mask_image.mode, mask_image.size) == ("1", (110, 70))
    mask = np.asarray(mask_image.convert("L"))
    assert set(np.unique(mask)) <= {0, 255}

    body, json_type = round_trip(served_endpoint, photo, content_type, "application/json")
    assert json_type == "application/json"
    answer = json.loads(body)
    assert (answer["width"], answer["height"]) == (110, 70)
    np.testing.assert_array_equal(rle_decode(answer["rle"], 70, 110), mask // 255)
    assert answer["car_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-6)

    cutout, cutout_type = round_trip(served_endpoint, photo, content_type, MEDIA_CUTOUT_PNG)
    assert cutout_type == MEDIA_CUTOUT_PNG
    rgba = Image.open(io.BytesIO(cutout))
    assert (rgba.mode, rgba.size) == ("RGBA", (110, 70))
    pixels = np.asarray(rgba)
    np.testing.assert_array_equal(pixels[..., 3], mask)
    rgb = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    np.testing.assert_array_equal(pixels[..., :3], np.where(mask[..., None] > 0, rgb, 0))


def test_json_input_gives_the_same_mask_as_raw_bytes(served_endpoint: str, make_photo) -> None:
    photo = make_photo(seed=5)
    raw, _ = round_trip(served_endpoint, photo, "image/jpeg", "image/png")
    document = json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}]}).encode()
    via_json, _ = round_trip(served_endpoint, photo, "application/json", "image/png", body=document)
    assert via_json == raw


def test_tf_serving_errors_reach_the_caller_with_their_status(served_endpoint: str) -> None:
    ctx = context(rest_uri=f"{served_endpoint}/v1/models/unet/versions/7:predict")
    response = requests.post(ctx.rest_uri, data=json.dumps({"instances": [{"b64": "AA=="}]}), timeout=60)
    expected = r"TF Serving answered 404: Servable not found for request: Specific\(unet, 7\)"
    with pytest.raises(WireError, match=expected) as err:
        output_handler(response, ctx)
    assert err.value.status == 404


def test_finished_photos_and_json_box_and_review_are_the_offline_ones(
    served_endpoint: str, tiny_saved_model, make_photo
) -> None:
    from trainer import studio
    from trainer.saved_model_io import open_model
    from trainer.wire import FinishOptions

    photo = make_photo(height=70, width=110, seed=3)
    with open_model(tiny_saved_model) as model:
        (offline,) = model.alphas([photo])
    probabilities = studio.decode_alpha_png(offline["alpha_png_bytes"])

    body, media = round_trip(served_endpoint, photo, "image/jpeg", "application/json")
    answer = json.loads(body)
    analysis = studio.analyse(
        offline["alpha_png_bytes"], flip_disagreement=offline["flip_disagreement"], options=FinishOptions()
    )
    assert answer["box"] == analysis.fields()["box"]
    assert answer["review"] == pytest.approx(analysis.fields()["review"], abs=1e-4)
    assert set(answer["review"]) == {
        "needs_review",
        "confidence",
        "flip_disagreement",
        "fragments",
        "uncertain",
    }

    attributes = "backdrop=0a3cc8,shadow=1,frame=4:3,tfs-model-name=unet"
    finished, media = round_trip(
        served_endpoint, photo, "image/jpeg", "image/png; variant=finished", attributes=attributes
    )
    assert media == "image/png; variant=finished"
    options = FinishOptions(backdrop=(10, 60, 200), shadow=True, frame=4 / 3)
    assert finished == studio.finish(photo, probabilities, options=options, jpeg=False)
    image = np.asarray(Image.open(io.BytesIO(finished)))
    if answer["box"] is not None:
        assert image.shape[1] / image.shape[0] == pytest.approx(4 / 3, abs=0.02)

    document = {"image": base64.b64encode(photo).decode(), "options": {"backdrop": "white", "quality": 90}}
    jpeg, media = round_trip(
        served_endpoint,
        photo,
        "application/json",
        "image/jpeg",
        body=json.dumps(document).encode(),
        attributes="backdrop=black,shadow=1",
    )
    assert media == "image/jpeg" and jpeg.startswith(b"\xff\xd8")
    # The JSON's white wins over the header's black; the header's shadow stays.
    expected = studio.finish(photo, probabilities, options=FinishOptions(shadow=True, quality=90), jpeg=True)
    assert jpeg == expected
