"""Request handlers for the SageMaker TensorFlow Serving container (``code/inference.py``).

The container's Python service calls ``input_handler(data, context)``, POSTs what it returns to TF
Serving at ``context.rest_uri``, and hands the ``requests`` response to ``output_handler(response,
context)``, whose ``(body, content_type)`` goes back to the caller. Photos travel as their JPEG/PNG
bytes (a 1918x1280 photo is ~100-500 KB; the decoded tensor would be 7.4 MB, over SageMaker's 6 MB
payload limit) to the ``mask_png`` signature, which answers with a compact PNG mask per photo.

Request body, by ``Content-Type``:
  ``image/jpeg``, ``image/png``, ``application/x-image``   the photo's bytes (JPEG or PNG; the bytes
                                                           decide, not the header)
  ``application/json``   ``{"instances": [{"b64": "..."}]}`` (TF Serving's row format, also with the
                         input named: ``{"image_bytes": {"b64": ...}}``) or ``{"image": "<base64>"}``;
                         one photo per request.

Response, by ``Accept`` (``*/*`` and ``image/*`` mean the mask; no header means JSON, the container's
default):
  ``image/png``                    the mask as a PNG (mode L, 0 = background, 255 = car) at the photo's size
  ``application/json``             ``{"rle": ..., "width": W, "height": H, "car_fraction": f}``, RLE as in
                                   Kaggle's train_masks.csv (row-major, 1-indexed "start length" pairs)
  ``image/png; variant=cutout``    the photo as an RGBA PNG whose alpha channel is the mask (background
                                   transparent and black); answered with that same Content-Type

Bad input raises :class:`RequestError`, whose message says what was wrong and what was expected and
whose ``status_code`` is the HTTP status it deserves (400, 406, 413, 415). Note: the real container
answers *any* handler exception with 500 and ``{"error": str(e)}`` (python_service.py), so on AWS the
message arrives intact but under 500; ``carvana serve`` honours ``status_code``.

Only the standard library, NumPy and Pillow here (``code/requirements.txt``): no TensorFlow in the
container's Python service. Limits come from the environment once, at import (``CARVANA_MAX_IMAGE_BYTES``,
``CARVANA_MAX_PIXELS``), because the container offers no other configuration channel.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import threading
import warnings
from enum import Enum
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.data.rle import rle_encode

SIGNATURE = "mask_png"
INPUT_NAME = "image_bytes"

MEDIA_MASK_PNG = "image/png"
MEDIA_RLE_JSON = "application/json"
MEDIA_CUTOUT_PNG = "image/png; variant=cutout"
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
PHOTO_FORMATS = ("JPEG", "PNG")


class HandlerLimits(NamedTuple):
    """What one request may carry: bytes of the photo, and pixels (checked from the header alone).

    NamedTuple, not a dataclass: the container imports this file with importlib without adding it to
    sys.modules, and dataclasses look their module up there (AttributeError on import).
    """

    # SageMaker real-time endpoints accept 6 MB per request; larger photos go through S3.
    max_image_bytes: int = 6 * 1024 * 1024
    # A 1918x1280 Carvana photo is 2.5 MP; 40 MP covers full-frame cameras. A few KB of PNG can claim
    # billions of pixels, so the header is checked before anything is decoded.
    max_pixels: int = 40_000_000

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> HandlerLimits:
        """Limits from ``CARVANA_MAX_IMAGE_BYTES`` / ``CARVANA_MAX_PIXELS`` (the model's env vars)."""
        env = os.environ if env is None else env
        values = {}
        for field_name, variable in (("max_image_bytes", "CARVANA_MAX_IMAGE_BYTES"),
                                     ("max_pixels", "CARVANA_MAX_PIXELS")):
            if variable in env:
                try:
                    values[field_name] = int(env[variable])
                except ValueError:
                    raise ValueError(f"{variable}={env[variable]!r} is not an integer") from None
        return cls(**values)


LIMITS = HandlerLimits.from_env()


class RequestError(ValueError):
    """The request cannot be answered as sent; ``status_code`` is the HTTP status it deserves."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class OutputFormat(Enum):
    """What the caller asked for in ``Accept``; the value is the response's Content-Type."""

    MASK_PNG = MEDIA_MASK_PNG
    RLE_JSON = MEDIA_RLE_JSON
    CUTOUT_PNG = MEDIA_CUTOUT_PNG


class _Pending(NamedTuple):
    """What ``output_handler`` needs from ``input_handler``: the container keeps no request state."""

    context: Any
    photo: bytes
    output: OutputFormat


# The container calls input_handler, TF Serving and output_handler one after the other on the same
# thread (greenlet under gevent, where threading.local is patched), so a thread-local slot tagged
# with the context object carries the photo across for the cut-out without re-sending it.
_pending = threading.local()


def _media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``"Image/PNG; Variant=Cutout"`` -> ``("image/png", {"variant": "cutout"})``."""
    parts = (header or "").split(";")
    params = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    return parts[0].strip().lower(), params


def negotiate_output(accept: str | None) -> OutputFormat:
    """Pick the response format from an ``Accept`` header (highest q first, then header order)."""
    if not accept or not accept.strip():
        return OutputFormat.RLE_JSON
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, params = _media_type(item)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if media and quality > 0:
            ranges.append((-quality, position, media, params))
    for _, _, media, params in sorted(ranges):
        if media == "image/png" and params.get("variant") == "cutout":
            return OutputFormat.CUTOUT_PNG
        if media in {"image/png", "image/*", "*/*"}:
            return OutputFormat.MASK_PNG
        if media == "application/json":
            return OutputFormat.RLE_JSON
    raise RequestError(
        f"Accept {accept!r} is not supported: ask for {MEDIA_MASK_PNG!r} (mask), {MEDIA_RLE_JSON!r} "
        f"(RLE) or {MEDIA_CUTOUT_PNG!r} (RGBA cut-out)",
        406,
    )


def _b64decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"JSON field {field} must be a base64 string, got {type(value).__name__}")
    text = "".join(value.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"JSON field {field} is not valid base64: {err}") from None


def _photo_from_json(body: bytes) -> bytes:
    """The photo inside ``{"instances": [{"b64": ...}]}`` or ``{"image": "<base64>"}``."""
    expected = 'expected {"instances": [{"b64": "<base64 photo>"}]} or {"image": "<base64 photo>"}'
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"request body is not valid JSON ({err}); {expected}") from None
    if not isinstance(document, dict):
        raise RequestError(f"JSON body must be an object; {expected}")
    if "image" in document:
        return _b64decode(document["image"], '"image"')
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError(f"JSON body has neither \"image\" nor a non-empty \"instances\" list; {expected}")
    if len(instances) != 1:
        raise RequestError(f"send one photo per request, got {len(instances)} instances")
    instance = instances[0]
    if isinstance(instance, dict) and set(instance) == {INPUT_NAME}:
        instance = instance[INPUT_NAME]
    if not (isinstance(instance, dict) and set(instance) == {"b64"}):
        raise RequestError(f"instances[0] must be {{\"b64\": \"<base64 photo>\"}}; {expected}")
    return _b64decode(instance["b64"], '"instances[0].b64"')


def check_photo(photo: bytes, limits: HandlerLimits = LIMITS) -> tuple[str, int, int]:
    """``(format, width, height)`` of a JPEG/PNG photo, read from its header only.

    Raises RequestError for an empty or oversized body, bytes that are no image, formats the model
    cannot decode, and pixel counts over the limit (a decompression bomb is refused before decoding).
    """
    if not photo:
        raise RequestError("request body is empty: send a JPEG or PNG photo")
    if len(photo) > limits.max_image_bytes:
        raise RequestError(
            f"photo is {len(photo)} bytes, over the limit of {limits.max_image_bytes} bytes "
            "(send larger photos through S3)",
            413,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(photo)) as image:
                kind, (width, height) = image.format, image.size
        except Image.DecompressionBombError as err:
            raise RequestError(f"photo refused as a decompression bomb: {err}", 413) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise RequestError(
                f"request body ({len(photo)} bytes, starting {photo[:8]!r}) is not an image: "
                "expected JPEG or PNG bytes"
            ) from None
    if kind not in PHOTO_FORMATS:
        raise RequestError(f"photo format {kind} is not supported: send JPEG or PNG", 415)
    if width * height > limits.max_pixels:
        raise RequestError(
            f"photo is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels} pixels (refused before decoding)",
            413,
        )
    return kind, width, height


def _read(data: Any) -> bytes:
    """The request body: the container passes a stream; bytes are accepted for direct calls."""
    if data is None:
        return b""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return data.read() or b""


def input_handler(data: Any, context: Any) -> str:
    """Validate the photo and build the TF Serving REST request for the ``mask_png`` signature."""
    output = negotiate_output(context.accept_header)
    content_type, _ = _media_type(context.request_content_type)
    body = _read(data)
    if not body:
        raise RequestError(
            "request body is empty: send the photo's bytes (Content-Type image/jpeg or image/png) or "
            'JSON {"instances": [{"b64": "<base64 photo>"}]}'
        )
    if content_type in IMAGE_CONTENT_TYPES:
        photo = body
    elif content_type == JSON_CONTENT_TYPE:
        photo = _photo_from_json(body)
    else:
        raise RequestError(
            f"Content-Type {context.request_content_type!r} is not supported: send "
            f"{', '.join(IMAGE_CONTENT_TYPES)} (the photo's bytes) or {JSON_CONTENT_TYPE} (base64)",
            415,
        )
    check_photo(photo)
    _pending.value = _Pending(context, photo, output)
    return json.dumps(
        {
            "signature_name": SIGNATURE,
            "instances": [{INPUT_NAME: {"b64": base64.b64encode(photo).decode("ascii")}}],
        }
    )


def _prediction(response: Any) -> dict[str, Any]:
    """The first row of TF Serving's answer, or the error TF Serving gave, re-raised."""
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        status = response.status_code if 400 <= response.status_code < 500 else 500
        raise RequestError(f"TF Serving answered {response.status_code}: {message}", status)
    try:
        row = response.json()["predictions"][0]
        return {
            "png": base64.b64decode(row["mask_png_bytes"]["b64"]),
            "height": int(row["height"]),
            "width": int(row["width"]),
            "car_fraction": float(row["car_fraction"]),
        }
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise RuntimeError(f"unexpected TF Serving response for {SIGNATURE!r}: {err!r}") from None


def _mask_image(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image if image.mode == "L" else image.convert("L")


def cutout_png(photo: bytes, mask_png: bytes) -> bytes:
    """The photo as RGBA with the mask as its alpha channel.

    Background pixels are transparent *and* black: nothing of the studio survives in the file, and
    the PNG is about half the size (a 1918x1280 cut-out is ~0.4 MB, well inside Lambda's 6 MB).
    """
    car = np.asarray(_mask_image(mask_png)) > 127
    with Image.open(io.BytesIO(photo)) as image:
        rgb = np.asarray(image.convert("RGB"))
    if rgb.shape[:2] != car.shape:
        raise RuntimeError(f"mask is {car.shape} (height, width) but the photo is {rgb.shape[:2]}")
    rgba = np.dstack([rgb * car[..., None], car.astype(np.uint8) * 255])
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


def output_handler(response: Any, context: Any) -> tuple[bytes, str]:
    """Turn TF Serving's ``mask_png`` answer into the format negotiated in ``input_handler``."""
    pending = getattr(_pending, "value", None)
    _pending.value = None
    if pending is None or pending.context is not context:
        # Not called after input_handler on this thread: negotiate again, no photo for a cut-out.
        pending = _Pending(context, b"", negotiate_output(context.accept_header))
    result = _prediction(response)
    if pending.output is OutputFormat.MASK_PNG:
        return result["png"], MEDIA_MASK_PNG
    if pending.output is OutputFormat.RLE_JSON:
        mask = np.asarray(_mask_image(result["png"]))
        body = {
            "rle": rle_encode(mask > 127),
            "width": result["width"],
            "height": result["height"],
            "car_fraction": result["car_fraction"],
        }
        return json.dumps(body).encode("utf-8"), MEDIA_RLE_JSON
    if not pending.photo:
        raise RuntimeError("the cut-out needs the photo, but input_handler did not run for this request")
    return cutout_png(pending.photo, result["png"]), MEDIA_CUTOUT_PNG
