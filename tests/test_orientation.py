"""EXIF orientation: photo headers read with the standard library, and masks in display orientation.

A phone stores a portrait photo sideways and tags it (EXIF Orientation 6); every viewer shows it
upright. The header parser (trainer.wire.photo_header) must agree with Pillow's ``exif_transpose``
on all eight orientations, and the exported graph, which turns the decoded photo upright before the
network, must give a tagged photo exactly the mask of the same pixels stored upright.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from trainer.saved_model_io import open_model
from trainer.wire import PhotoHeader, PhotoLimits, WireError, check_photo, orient, photo_header


def encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def stored() -> np.ndarray:
    """A small photo's pixels as stored (not square, so a transpose shows)."""
    return np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_header_and_orient_agree_with_pillows_exif_transpose(
    stored: np.ndarray, with_orientation: Callable[[bytes, int], bytes], fmt: str, orientation: int
) -> None:
    photo = with_orientation(encode(stored, fmt), orientation)
    header = photo_header(photo)
    assert header == PhotoHeader(f"image/{fmt.lower()}", 14, 10, orientation)
    with Image.open(io.BytesIO(photo)) as image:
        as_stored = np.asarray(image.convert("RGB"))
        shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(orient(as_stored, orientation), shown)
    assert header.display_size == (shown.shape[1], shown.shape[0])


def test_headers_pillow_writes_itself(stored: np.ndarray) -> None:
    """Progressive JPEGs, Pillow's own EXIF placement (after JFIF's APP0), little-endian TIFF."""
    exif = Image.Exif()
    exif[0x0112] = 8
    progressive = encode(stored, "JPEG", progressive=True, exif=exif.tobytes())
    assert photo_header(progressive) == PhotoHeader("image/jpeg", 14, 10, 8)
    little_endian = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x03\0\0\0\0\0\0\0"
    jpeg = encode(stored, "JPEG")
    tagged = jpeg[:2] + b"\xff\xe1" + (len(little_endian) + 2).to_bytes(2, "big") + little_endian + jpeg[2:]
    assert photo_header(tagged).orientation == 3
    assert photo_header(encode(stored, "JPEG")).orientation == 1  # no EXIF: as stored


def test_an_unreadable_orientation_counts_as_none(stored: np.ndarray, with_orientation) -> None:
    assert photo_header(with_orientation(encode(stored, "JPEG"), 9)).orientation == 1
    broken = b"Exif\0\0MM\0*\0\0\xff\xff"  # IFD offset past the end
    jpeg = encode(stored, "JPEG")
    tagged = jpeg[:2] + b"\xff\xe1" + (len(broken) + 2).to_bytes(2, "big") + broken + jpeg[2:]
    assert photo_header(tagged) == PhotoHeader("image/jpeg", 14, 10, 1)


@pytest.mark.parametrize(
    ("photo", "status", "message"),
    [
        (b"", 400, "request body is empty"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "JPEG is truncated"),
        (b"\xff\xd8\xff\xda\x00\x02", 400, "before any frame header (SOF)"),
        (b"\x89PNG\r\n\x1a\n\0\0", 400, "PNG is truncated or malformed"),
        (b"GIF89a\x01\x00\x01\x00", 415, "photo format GIF is not supported"),
        (b"RIFF\0\0\0\0WEBPVP8 ", 415, "photo format WEBP is not supported"),
        (b"hello, not a photo", 400, "is not an image: expected JPEG or PNG"),
    ],
)
def test_bad_headers_name_what_is_wrong(photo: bytes, status: int, message: str) -> None:
    with pytest.raises(WireError) as err:
        check_photo(photo, PhotoLimits())
    assert (err.value.status, message in err.value.message) == (status, True), err.value.message


def test_truncated_after_the_header_is_left_to_the_decoder(stored: np.ndarray) -> None:
    jpeg = encode(stored, "JPEG")
    assert check_photo(jpeg[: len(jpeg) // 2], PhotoLimits()).pixels == 140


def test_pixel_limit_is_read_from_the_header(png_header: Callable[[int, int], bytes]) -> None:
    with pytest.raises(WireError, match="90000x90000 = 8100000000 pixels, over the limit of 50") as err:
        check_photo(png_header(90000, 90000), PhotoLimits(max_pixels=50))
    assert err.value.status == 413


def test_the_graph_turns_the_photo_upright_before_the_network(
    tiny_saved_model: Path, make_photo: Callable[..., bytes], with_orientation
) -> None:
    """For every orientation: a lossless photo stored turned and tagged gets, pixel for pixel, the mask
    of the same pixels stored upright; untagged, it gets a mask of its stored shape."""
    upright = np.asarray(Image.open(io.BytesIO(make_photo(height=40, width=60, fmt="PNG", seed=4))))
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # orient(orient(x, o), inverse[o]) == x
    with open_model(tiny_saved_model) as model:
        want = model.masks([encode(upright, "PNG")])[0]
        assert 0 < want.mean() < 1
        for orientation in range(1, 9):
            pixels = orient(upright, inverse[orientation])
            np.testing.assert_array_equal(orient(pixels, orientation), upright)
            photo = encode(pixels, "PNG")
            tagged, untagged = model.masks([with_orientation(photo, orientation), photo])
            np.testing.assert_array_equal(tagged, want, err_msg=f"orientation {orientation}")
            assert untagged.shape == pixels.shape[:2]


def test_the_endpoint_answers_in_display_orientation(
    served_endpoint: str, make_photo: Callable[..., bytes], with_orientation
) -> None:
    """JSON says which orientation; mask, RLE size and cut-out are the displayed photo's."""
    from trainer.wire import MEDIA_CUTOUT_PNG, rle_decode

    photo = with_orientation(make_photo(height=40, width=60, seed=6), 6)

    def post(accept: str) -> requests.Response:
        response = requests.post(
            f"{served_endpoint}/invocations",
            data=photo,
            timeout=60,
            headers={"Content-Type": "image/jpeg", "Accept": accept},
        )
        assert response.status_code == 200, response.text
        return response

    mask = np.asarray(Image.open(io.BytesIO(post("image/png").content)).convert("L"))
    assert mask.shape == (60, 40)  # shown upright: 40 wide, 60 high
    answer = json.loads(post("application/json").content)
    assert (answer["orientation"], answer["exif_orientation"]) == ("display", 6)
    assert (answer["width"], answer["height"]) == (40, 60)
    np.testing.assert_array_equal(rle_decode(answer["rle"], 60, 40) * 255, mask)
    cutout = np.asarray(Image.open(io.BytesIO(post(MEDIA_CUTOUT_PNG).content)))
    np.testing.assert_array_equal(cutout[..., 3], mask)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGB"))
    np.testing.assert_array_equal(cutout[..., :3], np.where(mask[..., None] > 0, shown, 0))
