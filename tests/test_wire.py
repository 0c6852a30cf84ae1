"""trainer/wire.py, the wire contract: negotiation, errors, base64, sniffing, the cut-out, and Kaggle
RLE (the exact string format, round trips, speed, and the real train_masks.csv)."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from trainer import wire
from trainer.wire import (
    ErrorDocument,
    HandlerError,
    OutputFormat,
    WireError,
    custom_attribute,
    error_document,
    parse_error_document,
    rle_decode,
    rle_encode,
)


def test_importing_the_wire_contract_imports_no_numpy_or_pillow() -> None:
    """The Lambda runtime has neither: the module must import, and negotiate, on the stdlib alone."""
    code = (
        "import sys\n"
        "from trainer import wire\n"
        "wire.negotiate('image/png; variant=cutout', wire.OutputFormat.MASK_PNG)\n"
        "wire.b64decode('aGk=', 'x'); wire.sniff_photo(b'\\xff\\xd8\\xff')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'PIL', 'tensorflow'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, OutputFormat.RLE_JSON, OutputFormat.RLE_JSON),
        ("  ", OutputFormat.MASK_PNG, OutputFormat.MASK_PNG),
        ("*/*", OutputFormat.RLE_JSON, OutputFormat.MASK_PNG),
        ("application/*", OutputFormat.MASK_PNG, OutputFormat.RLE_JSON),
        ('Image/PNG; Variant="Cutout"', OutputFormat.MASK_PNG, OutputFormat.CUTOUT_PNG),
        ("image/png;q=0.4, application/json", OutputFormat.MASK_PNG, OutputFormat.RLE_JSON),
        ("application/json;q=0, image/*", OutputFormat.RLE_JSON, OutputFormat.MASK_PNG),
        ("text/html, image/png; variant=cutout;q=0.1", OutputFormat.MASK_PNG, OutputFormat.CUTOUT_PNG),
    ],
)
def test_negotiation(accept: str | None, default: OutputFormat, expected: OutputFormat) -> None:
    assert wire.negotiate(accept, default) is expected


def test_unacceptable_accept_is_406_with_vary_and_the_choices() -> None:
    with pytest.raises(WireError) as err:
        wire.negotiate("text/html, application/json;q=0", OutputFormat.MASK_PNG)
    assert (err.value.status, err.value.headers) == (406, {"Vary": "Accept"})
    assert err.value.message == (
        "Accept 'text/html, application/json;q=0' is not supported: ask for 'image/png' (mask), "
        "'application/json' (RLE) or 'image/png; variant=cutout' (RGBA cut-out)"
    )


def test_query_names() -> None:
    assert [f.query for f in OutputFormat] == ["png", "json", "cutout"]
    assert OutputFormat.from_query("cutout") is OutputFormat.CUTOUT_PNG
    with pytest.raises(WireError, match=r"format must be one of png, json, cutout; got 'gif'") as err:
        OutputFormat.from_query("gif")
    assert err.value.status == 400


def test_base64_is_strict_but_tolerates_whitespace_and_missing_padding() -> None:
    data = bytes(range(256))
    text = base64.b64encode(data).decode()
    assert wire.b64decode(text, "x") == data
    assert wire.b64decode(text.rstrip("="), "x") == data
    assert wire.b64decode("\n".join(text[i : i + 76] for i in range(0, len(text), 76)), "x") == data
    with pytest.raises(WireError, match=r'^"image_b64" is not valid base64: ') as err:
        wire.b64decode("***", '"image_b64"')
    assert err.value.status == 400
    with pytest.raises(WireError, match=r'^"image_b64" must be a base64 string, got int$'):
        wire.b64decode(42, '"image_b64"')


def test_photo_sniffing() -> None:
    assert wire.sniff_photo(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert wire.sniff_photo(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    with pytest.raises(WireError, match=r"body is not a JPEG or PNG image \(it starts with b'GIF89a'\)"):
        wire.sniff_photo(b"GIF89a")


def test_cutout_zeroes_everything_under_alpha_zero() -> None:
    rgb = np.full((2, 3, 3), 200, np.uint8)
    rgb[0, 0] = (10, 20, 30)
    mask = np.array([[1, 0, 255], [0, 0, 1]], np.uint8)
    rgba = wire.cutout(rgb, mask)
    assert rgba.dtype == np.uint8 and rgba.shape == (2, 3, 4)
    assert rgba[..., 3].tolist() == [[255, 0, 255], [0, 0, 255]]
    assert rgba[0, 0].tolist() == [10, 20, 30, 255]
    assert rgba[rgba[..., 3] == 0].tolist() == [[0, 0, 0, 0]] * 3  # nothing of the studio left
    with pytest.raises(ValueError, match=r"mask is \(3, 2\) \(height, width\) but the photo is \(2, 3\)"):
        wire.cutout(rgb, mask.T)


def test_cutout_png_of_a_photo_and_its_mask_png() -> None:
    photo = np.random.default_rng(0).integers(1, 256, (4, 5, 3), dtype=np.uint8)
    png, mask_png = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:4] = 255
    Image.fromarray(mask).save(mask_png, format="PNG")
    assert wire.decode_mask_png(mask_png.getvalue()).tolist() == (mask // 255).tolist()
    with Image.open(io.BytesIO(wire.cutout_png(png.getvalue(), mask_png.getvalue()))) as image:
        assert image.mode == "RGBA"
        rgba = np.asarray(image)
    np.testing.assert_array_equal(rgba[..., 3], mask)
    np.testing.assert_array_equal(rgba[..., :3], np.where(mask[..., None] > 0, photo, 0))


def test_encode_is_row_major_one_indexed_start_length_pairs() -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.uint8)
    # flat (C order): 0 1 1 | 1 0 0 | 0 0 1 -> runs start at pixel 2 (length 3) and pixel 9 (length 1)
    assert rle_encode(mask) == "2 3 9 1"


def test_empty_and_full_masks() -> None:
    assert rle_encode(np.zeros((4, 5), np.uint8)) == ""
    assert rle_encode(np.ones((4, 5), np.uint8)) == "1 20"
    assert rle_decode("", 4, 5).sum() == 0
    np.testing.assert_array_equal(rle_decode("1 20", 4, 5), np.ones((4, 5), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 96), (128, 191)])
def test_round_trip_random_masks(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.5, 0.95):
        mask = (rng.random(shape) < density).astype(np.uint8)
        decoded = rle_decode(rle_encode(mask), *shape)
        assert decoded.dtype == np.uint8 and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask)


def test_nonzero_values_count_as_car() -> None:
    assert rle_encode(np.array([[0, 255, 7, 0]])) == "2 2"
    assert rle_encode(np.array([[False, True]])) == "2 1"


def test_malformed_rle_is_rejected() -> None:
    with pytest.raises(ValueError, match="odd number"):
        rle_decode("1 2 3", 2, 2)
    with pytest.raises(ValueError, match="outside"):
        rle_decode("3 5", 2, 2)
    with pytest.raises(ValueError, match="non-integer"):
        rle_decode("1 x", 2, 2)
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 1)))


def test_encode_full_size_mask_is_fast() -> None:
    height, width = 1280, 1918
    yy, xx = np.mgrid[:height, :width]
    mask = (((xx - 960) / 800) ** 2 + ((yy - 700) / 380) ** 2 < 1).astype(np.uint8)
    rle_encode(mask)  # warm-up
    best = min(_timed(rle_encode, mask) for _ in range(5))
    assert best < 0.05, f"encode took {best * 1000:.1f} ms"


def _timed(func, *args) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def test_real_csv_rows_match_the_gifs(real_data) -> None:
    with (real_data / "train_masks.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((real_data / "train").glob("*.jpg")))
    for row in rows[:: max(len(rows) // 8, 1)]:
        gif = real_data / "train_masks" / row["img"].replace(".jpg", "_mask.gif")
        truth = np.asarray(Image.open(gif))
        height, width = truth.shape
        assert (height, width) == (1280, 1918)
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], height, width), truth)
        assert rle_encode(truth) == row["rle_mask"]


def test_json_bodies_must_be_one_object() -> None:
    assert wire.json_object(b'{"s3_uri": "s3://b/k"}') == {"s3_uri": "s3://b/k"}
    with pytest.raises(WireError, match=r"^request body is not valid JSON \(Expecting .*\); send JSON$"):
        wire.json_object(b"{not json", "send JSON")
    with pytest.raises(WireError, match=r"^JSON body must be an object, got list$") as err:
        wire.json_object(b"[1, 2]")
    assert err.value.status == 400


# ---- error documents (what survives the real container) -----------------------------------------


def test_handler_errors_str_is_the_error_document() -> None:
    error = HandlerError("photo is too big", 413, "req-1", {"Retry-After": "1"})
    assert json.loads(str(error)) == {"error": "photo is too big", "status": 413, "request_id": "req-1"}
    assert (error.message, error.status, error.headers) == ("photo is too big", 413, {"Retry-After": "1"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # carvana serve's flat document
        ('{"error": "bad", "status": 415, "request_id": "r"}', ErrorDocument("bad", 415, "r")),
        # the real container's {"error": str(e)} around it, as text and as bytes
        (json.dumps({"error": error_document("bad", 413, "r2")}), ErrorDocument("bad", 413, "r2")),
        (json.dumps({"error": error_document("bad", 400)}).encode(), ErrorDocument("bad", 400, None)),
        # a plain error (TF Serving, an older handler): the message, no status
        ('{"error": "Servable not found"}', ErrorDocument("Servable not found")),
        ('{"error": "{not json"}', ErrorDocument("{not json")),
        # statuses that are not HTTP error statuses are not trusted
        ('{"error": "x", "status": 200}', ErrorDocument("x")),
        ('{"error": "x", "status": true}', ErrorDocument("x")),
        ("<html>502 Bad Gateway</html>", None),
        ('["error"]', None),
        ("", None),
    ],
    ids=[
        "flat",
        "wrapped",
        "wrapped-bytes",
        "plain",
        "inner-not-json",
        "status-200",
        "status-bool",
        "html",
        "list",
        "empty",
    ],
)
def test_error_documents_are_read_back_through_any_wrapping(
    text: str | bytes, expected: ErrorDocument | None
) -> None:
    assert parse_error_document(text) == expected


def test_custom_attribute_reads_one_name() -> None:
    header = "tfs-model-name=unet, carvana-request-id=abc-1,other"
    assert custom_attribute(header, "carvana-request-id") == "abc-1"
    assert custom_attribute(header, "missing") is None and custom_attribute(None, "x") is None
