"""The wire contract: what a car photo and its mask look like between every side that handles them.

One module, because the same rules run in five places that used to keep their own copies and
drifted apart: the container's handlers (serving/inference.py, which gets this file vendored as
``code/trainer/wire.py`` of model.tar.gz), the Lambda (lambda/, which gets it copied into its
package by lambda/Makefile), the local endpoint and gateway (local_aws/), and the offline tools
(``carvana predict`` / ``carvana evaluate``). It owns:

- the model's name, the signatures the endpoint and the offline tools call, and the threshold;
- media types and ``Accept`` negotiation (:func:`negotiate`), and the HTTP error type
  :class:`WireError` whose ``status`` every server answers with;
- the payload and pixel limits of the AWS services in the chain;
- strict but whitespace-tolerant base64 (:func:`b64decode`), JSON request bodies, and photo headers
  read with the standard library (:func:`photo_header`: type, pixel size from JPEG SOF / PNG IHDR,
  EXIF orientation from JPEG APP1 / PNG eXIf) and checked against the limits (:func:`check_photo`)
  before anything is decoded;
- EXIF orientation: every mask, RLE and cut-out is in the orientation a screen shows
  (:data:`ORIENTATIONS`, :func:`orient`; the exported graph turns the photo upright before the
  network with the same table);
- Kaggle RLE (row-major, 1-indexed ``"start length"`` pairs, as in train_masks.csv);
- the cut-out: the photo as RGBA with the mask as alpha and the RGB *zeroed* where alpha is 0, so
  nothing of the studio survives in the file;
- the finished photo's media types and options (:class:`FinishOptions`, read from custom attributes,
  a query string or JSON) and the review flag's threshold; trainer/studio.py does the pixels.

Standard library only at import: the Lambda runtime has boto3 but no NumPy or Pillow. The functions
that need NumPy (RLE, masks) or Pillow (PNG) import them when called.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    import numpy as np

# TF Serving model name (the folder above the version in model.tar.gz).
MODEL_NAME = "unet"
# Probabilities strictly above THRESHOLD are car: the exported graph's "mask" output uses it.
THRESHOLD = 0.5
# The SavedModel signature the endpoint calls with the photo's bytes, its input, and its
# mirror-averaged twin for test-time augmentation (same input and outputs).
SIGNATURE = "mask_png"
TTA_SIGNATURE = "mask_png_tta"
# Same inputs; answers the full-resolution probabilities as an 8-bit PNG (the soft edge of a finished
# photo), the mask_png mask, and how much the photo and its mirror image disagree (the review flag).
ALPHA_SIGNATURE = "alpha_png"
ALPHA_TTA_SIGNATURE = "alpha_png_tta"
INPUT_NAME = "image_bytes"
# Their second input: each photo's EXIF orientation (1..8), read here from the bytes' header, so the
# graph turns the photo upright before the network (the U-Net was trained on upright photos).
ORIENTATION_INPUT = "orientation"

MB = 1024 * 1024
# SageMaker real-time InvokeEndpoint accepts request bodies up to 6 MB (S3 photos included).
ENDPOINT_PAYLOAD_LIMIT = 6 * MB
# A synchronous Lambda invocation carries at most 6 MB each way, the event's JSON included.
LAMBDA_PAYLOAD_LIMIT = 6 * MB
# A 1918x1280 Carvana photo is 2.5 MP, a phone photo 12 MP. A few KB of PNG can claim billions of
# pixels, so the header is checked against this before anything is decoded. Sized for memory and
# time with 8 concurrent clients (bench/load.py --largest, README "Limits and concurrency"): 8
# concurrent 16 MP photos add 0.8 GB to the worker (1.4 GB peak, an ml.c5.large has 4 GiB) and
# answer within 12 s p99 on 2 cores; at 40 MP it was +1.5 GB and 28 s p99, near SageMaker's 60 s.
MAX_PIXELS = 16_000_000

MEDIA_MASK_PNG = "image/png"
MEDIA_RLE_JSON = "application/json"
MEDIA_CUTOUT_PNG = "image/png; variant=cutout"
# The finished photo (see "Finished photos" below): JPEG, or PNG asked for with this variant.
MEDIA_FINISHED_JPEG = "image/jpeg"
MEDIA_FINISHED_PNG = "image/png; variant=finished"
MEDIA_JSON = "application/json"
# Content types a photo may be sent with; the bytes themselves decide JPEG or PNG.
PHOTO_CONTENT_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image")
PHOTO_SIGNATURES: dict[bytes, str] = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}
# Image formats people send that the model cannot decode: 415 rather than "not an image".
OTHER_IMAGE_SIGNATURES: dict[bytes, str] = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\0": "TIFF",
    b"MM\0*": "TIFF",
}
# EXIF Orientation (tag 0x0112) -> how the stored pixels become what a screen shows: flip left-right,
# then flip top-bottom, then transpose (swap rows and columns), each if set. 6 is a phone held
# upright (stored sideways, shown turned 90 degrees clockwise), 3 is upside down.
ORIENTATIONS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False),
    2: (True, False, False),
    3: (True, True, False),
    4: (False, True, False),
    5: (False, False, True),
    6: (False, True, True),
    7: (True, True, True),
    8: (True, False, True),
}
EXIF_ORIENTATION_TAG = 0x0112


class WireError(ValueError):
    """A request that cannot be answered as sent: ``status`` is the HTTP status it deserves.

    The message says what was wrong and what was expected; ``headers`` are added to the answer
    (``Vary: Accept`` on a 406, ``Allow`` on a 405).
    """

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = dict(headers or {})


class OutputFormat(Enum):
    """What a caller may ask for; the value is the answer's Content-Type."""

    MASK_PNG = MEDIA_MASK_PNG
    RLE_JSON = MEDIA_RLE_JSON
    CUTOUT_PNG = MEDIA_CUTOUT_PNG
    FINISHED_JPEG = MEDIA_FINISHED_JPEG
    FINISHED_PNG = MEDIA_FINISHED_PNG

    @property
    def finished(self) -> bool:
        """A finished photo (new backdrop, soft edge, optional shadow and framing)."""
        return self in (OutputFormat.FINISHED_JPEG, OutputFormat.FINISHED_PNG)

    @property
    def query(self) -> str:
        """The ``?format=`` name of the format (``png``, ``json``, ``cutout``)."""
        return _QUERY_NAMES[self]

    @classmethod
    def from_query(cls, name: str) -> OutputFormat:
        """The format ``?format=name`` asks for; WireError 400 naming the choices otherwise."""
        for member, query in _QUERY_NAMES.items():
            if query == name:
                return member
        raise WireError(f"format must be one of {', '.join(_QUERY_NAMES.values())}; got {name!r}")


_QUERY_NAMES = {
    OutputFormat.MASK_PNG: "png",
    OutputFormat.RLE_JSON: "json",
    OutputFormat.CUTOUT_PNG: "cutout",
    OutputFormat.FINISHED_JPEG: "jpeg",
    OutputFormat.FINISHED_PNG: "finished-png",
}


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``"Image/PNG; Variant=Cutout"`` -> ``("image/png", {"variant": "cutout"})``."""
    parts = (header or "").split(";")
    params = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key.strip():
            params[key.strip().lower()] = value.strip().strip('"').lower()
    return parts[0].strip().lower(), params


def negotiate(accept: str | None, default: OutputFormat) -> OutputFormat:
    """The answer's format from an ``Accept`` header: highest ``q`` first, then header order.

    ``default`` answers a missing or blank header (the container defaults to JSON, the Lambda to
    the PNG mask). ``q=0`` means "not this one". WireError 406 when nothing acceptable is offered.
    """
    if not accept or not accept.strip():
        return default
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, params = media_type(item)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if media and quality > 0:
            ranges.append((-quality, position, media, params))
    for _, _, media, params in sorted(ranges):
        if media == "image/png" and params.get("variant") == "cutout":
            return OutputFormat.CUTOUT_PNG
        if media == "image/png" and params.get("variant") == "finished":
            return OutputFormat.FINISHED_PNG
        if media in {"image/jpeg", "image/jpg"}:
            return OutputFormat.FINISHED_JPEG
        if media in {"image/png", "image/*", "*/*"}:
            return OutputFormat.MASK_PNG
        if media in {"application/json", "application/*"}:
            return OutputFormat.RLE_JSON
    raise WireError(
        f"Accept {accept!r} is not supported: ask for {MEDIA_MASK_PNG!r} (mask), {MEDIA_RLE_JSON!r} "
        f"(RLE), {MEDIA_CUTOUT_PNG!r} (RGBA cut-out), {MEDIA_FINISHED_JPEG!r} or {MEDIA_FINISHED_PNG!r} "
        "(finished photo)",
        406,
        {"Vary": "Accept"},
    )


def b64decode(value: object, field: str) -> bytes:
    """Strict base64 of ``value``, tolerating whitespace (line breaks) and missing padding.

    ``field`` names the value in the error (e.g. ``'"image_b64"'``): WireError 400.
    """
    if not isinstance(value, str):
        raise WireError(f"{field} must be a base64 string, got {type(value).__name__}")
    text = "".join(value.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise WireError(f"{field} is not valid base64: {err}") from None


def json_object(body: bytes, expected: str = "") -> dict[str, Any]:
    """A request body that must hold one JSON object; WireError 400 saying what was expected."""
    hint = f"; {expected}" if expected else ""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireError(f"request body is not valid JSON ({err}){hint}") from None
    if not isinstance(document, dict):
        raise WireError(f"JSON body must be an object, got {type(document).__name__}{hint}")
    return document


def b64encode(data: bytes) -> str:
    """Standard base64 text of ``data`` (what JSON bodies and proxy responses carry)."""
    return base64.b64encode(data).decode("ascii")


class PhotoLimits(NamedTuple):
    """What one photo may be: bytes on the wire, and pixels (checked from the header alone).

    NamedTuple, not a dataclass: the container imports code/inference.py with importlib without
    adding it to sys.modules, and dataclasses look their module up there. The one place the
    ``CARVANA_MAX_IMAGE_BYTES`` / ``CARVANA_MAX_PIXELS`` variables are read (the endpoint's handler
    and ``carvana serve``'s TF Serving REST side both apply these).
    """

    # SageMaker real-time endpoints accept 6 MB per request; larger photos go through S3.
    max_image_bytes: int = ENDPOINT_PAYLOAD_LIMIT
    max_pixels: int = MAX_PIXELS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PhotoLimits:
        """Limits from ``CARVANA_MAX_IMAGE_BYTES`` / ``CARVANA_MAX_PIXELS`` (the model's env vars)."""
        env = os.environ if env is None else env
        values = {}
        for field_name, variable in (
            ("max_image_bytes", "CARVANA_MAX_IMAGE_BYTES"),
            ("max_pixels", "CARVANA_MAX_PIXELS"),
        ):
            if variable in env:
                try:
                    values[field_name] = int(env[variable])
                except ValueError:
                    raise ValueError(f"{variable}={env[variable]!r} is not an integer") from None
        return cls(**values)


class PhotoHeader(NamedTuple):
    """What a photo's header says: type, stored pixel size and EXIF orientation (1 = as stored)."""

    media_type: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` as a screen shows the photo (swapped by orientations 5..8)."""
        return (self.height, self.width) if ORIENTATIONS[self.orientation][2] else (self.width, self.height)


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag of a TIFF structure's first IFD (EXIF's layout); 1 if absent or odd.

    Viewers ignore an orientation they cannot read, and so does this: a bad tag never fails a photo.
    """
    orders: dict[bytes, Literal["little", "big"]] = {b"II*\0": "little", b"MM\0*": "big"}
    order = orders.get(tiff[:4])
    if order is None or len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order) if ifd + 2 <= len(tiff) else 0
    for start in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[start : start + 2], order) == EXIF_ORIENTATION_TAG:
            kind = int.from_bytes(tiff[start + 2 : start + 4], order)
            value = int.from_bytes(tiff[start + 8 : start + 10], order)
            return value if kind == 3 and value in ORIENTATIONS else 1  # 3: SHORT
    return 1


# Start-of-frame markers (baseline, progressive, lossless...): C0..CF but DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])


def _jpeg_header(data: bytes) -> PhotoHeader:
    """Walk the JPEG's marker segments up to the frame header (SOF): its size, and APP1 Exif's
    orientation on the way (APPn segments precede the frame). Only headers are read."""
    truncated = WireError(
        f"JPEG is truncated: its {len(data)} bytes end before the frame header (SOF) that gives its size"
    )
    orientation, position = 1, 2
    while True:
        if position >= len(data):
            raise truncated
        if data[position] != 0xFF:
            raise WireError(
                f"JPEG is malformed: expected a marker at byte {position}, found {data[position]:#04x}"
            )
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            continue
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise WireError("JPEG is malformed: image data (SOS) or its end before any frame header (SOF)")
        length = int.from_bytes(data[position : position + 2], "big")
        if position + max(length, 2) > len(data):
            raise truncated
        if length < 2:
            raise WireError(f"JPEG is malformed: segment length {length} at byte {position}")
        segment = data[position + 2 : position + length]
        if marker in _JPEG_SOF:
            if length < 7:
                raise WireError("JPEG is malformed: its frame header (SOF) is too short")
            height, width = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
            if not (width and height):
                raise WireError(f"JPEG frame header claims a {width}x{height} image: expected both sides > 0")
            return PhotoHeader("image/jpeg", width, height, orientation)
        if marker == 0xE1 and orientation == 1 and segment.startswith(b"Exif\0\0"):
            orientation = _tiff_orientation(segment[6:])
        position += length


def _png_header(data: bytes) -> PhotoHeader:
    """IHDR's size, and the orientation of an eXIf chunk before the image data (IDAT)."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise WireError("PNG is truncated or malformed: expected its IHDR chunk (the size) first")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not (width and height):
        raise WireError(f"PNG header claims a {width}x{height} image: expected both sides > 0")
    orientation, position = 1, 8
    while position + 8 <= len(data):
        length, kind = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if kind == b"IDAT":
            break
        if kind == b"eXIf":
            orientation = _tiff_orientation(data[position + 8 : position + 8 + length])
            break
        position += 12 + length
    return PhotoHeader("image/png", width, height, orientation)


def photo_header(photo: bytes) -> PhotoHeader:
    """Type, stored size and EXIF orientation of a JPEG or PNG photo, from its header alone.

    Standard library only (the Lambda runtime and the container's Python have no Pillow to spare for
    this), and nothing is decoded: a PNG of a few KB claiming billions of pixels costs microseconds.
    WireError 415 for other image formats, 400 for bytes that are no image or a header cut short.
    """
    if photo.startswith(b"\xff\xd8\xff"):
        return _jpeg_header(photo)
    if photo.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header(photo)
    other = next((kind for magic, kind in OTHER_IMAGE_SIGNATURES.items() if photo.startswith(magic)), None)
    if photo[:4] == b"RIFF" and photo[8:12] == b"WEBP":
        other = "WEBP"
    elif photo[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        other = "HEIF"
    if other:
        raise WireError(f"photo format {other} is not supported: send JPEG or PNG", 415)
    raise WireError(
        f"request body ({len(photo)} bytes, starting {photo[:8]!r}) is not an image: "
        "expected JPEG or PNG bytes"
    )


def check_photo(photo: bytes, limits: PhotoLimits) -> PhotoHeader:
    """The photo's header once it is within ``limits``; WireError otherwise, before any decoding.

    400 for an empty body or bytes that are no JPEG/PNG, 415 for other image formats, 413 for a
    photo over the byte limit or whose header claims more pixels than ``limits.max_pixels``.
    """
    if not photo:
        raise WireError("request body is empty: send a JPEG or PNG photo")
    if len(photo) > limits.max_image_bytes:
        raise WireError(
            f"photo is {len(photo)} bytes, over the limit of {limits.max_image_bytes} bytes "
            "(send larger photos through S3)",
            413,
        )
    header = photo_header(photo)
    if header.pixels > limits.max_pixels:
        raise WireError(
            f"photo is {header.width}x{header.height} = {header.pixels} pixels, over the limit of "
            f"{limits.max_pixels} pixels: refused from its header before decoding (a decompression "
            "bomb claims billions)",
            413,
        )
    return header


def exif_orientation(photo: bytes) -> int:
    """The photo's EXIF orientation, 1 when it has none or its header cannot be read (the offline
    tools then let the graph's decoder report the bad photo, as the endpoint would)."""
    try:
        return photo_header(photo).orientation
    except WireError:
        return 1


def sniff_photo(photo: bytes) -> str:
    """The photo's real media type from its first bytes; WireError 400 unless JPEG or PNG."""
    for signature, media in PHOTO_SIGNATURES.items():
        if photo.startswith(signature):
            return media
    raise WireError(f"body is not a JPEG or PNG image (it starts with {photo[:8]!r})")


# ---- errors that survive the real container (issue 9) --------------------------------------------
# The real SageMaker TF Serving container answers *any* exception from input_handler/output_handler
# with HTTP 500 and the body {"error": str(exception)} (aws/deep-learning-containers,
# tensorflow/inference/docker/build_artifacts/sagemaker/python_service.py): the status the handler
# meant is lost, only str() survives. So the handler raises errors whose str() is itself a JSON
# error document carrying the status and the request id; SageMaker Runtime relays the body as
# ModelError's OriginalMessage, and the Lambda reads the status back from it. ``carvana serve``
# answers the same document as the body, under the status itself.

# The custom attribute the Lambda sends its request id in (X-Amzn-SageMaker-Custom-Attributes reaches
# the handler as context.custom_attributes; the container itself only reads the tfs-* ones).
REQUEST_ID_ATTRIBUTE = "carvana-request-id"


class ErrorDocument(NamedTuple):
    """What an error body says: the message, the HTTP status meant, and whose request it was."""

    message: str
    status: int | None = None
    request_id: str | None = None


def error_body(message: str, status: int, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one error body shape: ``{"error": message, "status": 413, "request_id": ..., **extra}``."""
    return {"error": message, "status": status, "request_id": request_id, **extra}


def error_document(message: str, status: int, request_id: str | None = None) -> str:
    """:func:`error_body` as JSON text: what the handler's exception's str() is."""
    return json.dumps(error_body(message, status, request_id))


def parse_error_document(text: str | bytes | None) -> ErrorDocument | None:
    """Read an error body back, whichever side wrapped it: ``carvana serve``'s flat document, or the
    real container's ``{"error": "<that document as text>"}``. None when ``text`` is no JSON object
    with an ``"error"`` (an HTML page from a proxy, say); ``status`` is None when no valid status is
    given (a plain ``{"error": "..."}`` from TF Serving or an older handler)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        document = json.loads(text or "")
    except ValueError:
        return None
    for _ in range(3):  # the document itself, the container's wrapper, one spare level
        if not isinstance(document, dict) or "error" not in document:
            return None
        status, request_id = document.get("status"), document.get("request_id")
        if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
            return ErrorDocument(
                str(document["error"]), status, None if request_id is None else str(request_id)
            )
        inner = document["error"]
        try:
            nested = json.loads(inner) if isinstance(inner, str) and inner.lstrip().startswith("{") else None
        except ValueError:
            nested = None
        if not (isinstance(nested, dict) and "error" in nested):
            return ErrorDocument(str(inner))
        document = nested
    return None


class HandlerError(WireError):
    """A WireError whose str() is its :func:`error_document`, so it survives the real container's
    ``{"error": str(exception)}``; ``message`` and ``status`` stay as they were."""

    def __init__(
        self, message: str, status: int, request_id: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, status, headers)
        self.request_id = request_id

    def __str__(self) -> str:
        return error_document(self.message, self.status, self.request_id)


def custom_attribute(header: str | None, name: str) -> str | None:
    """``name``'s value in an ``X-Amzn-SageMaker-Custom-Attributes`` header (``a=1,b=2``), else None."""
    for item in (header or "").split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None


# ---- Kaggle RLE --------------------------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any dtype; non-zero = car) as Kaggle RLE; an empty mask is ``""``.

    Vectorised: the run boundaries are the places where the padded flat mask changes value, so one
    ``np.diff`` finds every start and end at once (a 1918x1280 mask takes a few milliseconds).
    """
    import numpy as np

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask (height, width), got shape {mask.shape}")
    flat = np.zeros(mask.size + 2, dtype=np.int8)
    flat[1:-1] = mask.ravel(order="C") != 0
    # Positions where the value changes: starts (0->1) and ends (1->0), alternating, 1-indexed by
    # construction because of the leading pad.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if changes.size == 0:
        return ""
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return " ".join(runs.ravel().astype(str).tolist())


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode Kaggle RLE into a ``(height, width)`` uint8 mask of {0, 1}.

    Raises ValueError for a malformed string (odd number of fields, non-integers, runs outside the
    image) rather than returning a silently wrong mask.
    """
    import numpy as np

    size = height * width
    fields = (rle or "").split()
    if len(fields) % 2:
        raise ValueError(f"RLE has an odd number of fields ({len(fields)}); expected 'start length' pairs")
    flat = np.zeros(size + 1, dtype=np.int32)
    if fields:
        try:
            pairs = np.asarray(fields, dtype=np.int64).reshape(-1, 2)
        except ValueError as exc:
            raise ValueError(f"RLE holds a non-integer field: {exc}") from None
        starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
        ends = starts + lengths
        if (starts < 0).any() or (lengths < 0).any() or (ends > size).any():
            raise ValueError(f"RLE run outside a {height}x{width} image (starts are 1-indexed, size {size})")
        # Mark +1 at each start and -1 at each end; the running sum is 1 inside runs.
        np.add.at(flat, starts, 1)
        np.add.at(flat, ends, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(height, width)


# ---- masks and the cut-out -----------------------------------------------------------------------


def decode_mask_png(png: bytes) -> np.ndarray:
    """The ``mask_png`` signature's PNG (1-bit grey; an 8-bit 0/255 one too) as a uint8 {0, 1} array
    ``(height, width)``."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        gray = image if image.mode == "L" else image.convert("L")
        return (np.asarray(gray) > 127).astype(np.uint8)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H, W[, C]) as stored -> as shown for EXIF ``orientation`` (:data:`ORIENTATIONS`).

    The exported graph applies the same table to the decoded photo before the network; this turns
    the photo itself upright for the cut-out, and a stored-orientation truth mask for ``evaluate``.
    """
    import numpy as np

    flip_lr, flip_ud, transpose = ORIENTATIONS.get(orientation, ORIENTATIONS[1])
    pixels = np.asarray(pixels)
    if flip_lr:
        pixels = pixels[:, ::-1]
    if flip_ud:
        pixels = pixels[::-1]
    if transpose:
        pixels = pixels.swapaxes(0, 1)
    return np.ascontiguousarray(pixels)


def cutout(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA uint8 ``(H, W, 4)``: alpha 255 on the car (``mask`` non-zero), 0 elsewhere, and the RGB
    zeroed where alpha is 0 -- nothing of the studio survives, and the PNG is about half the size."""
    import numpy as np

    rgb = np.asarray(rgb, dtype=np.uint8)
    car = np.asarray(mask) != 0
    if rgb.shape[:2] != car.shape:
        raise ValueError(f"mask is {car.shape} (height, width) but the photo is {rgb.shape[:2]}")
    return np.dstack([rgb * car[..., None], car.astype(np.uint8) * 255])


def decode_photo(photo: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 RGB [H, W, 3] as a screen shows it: turned by its EXIF orientation
    with :func:`orient`, the table the graph uses, so the photo and the graph's masks line up."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(photo)) as image:
        return orient(np.asarray(image.convert("RGB")), exif_orientation(photo))


def cutout_png(photo: bytes, mask_png: bytes) -> bytes:
    """The cut-out (see :func:`cutout`) of a JPEG/PNG photo and its mask PNG, as PNG bytes.

    The mask is in display orientation (the graph turned the photo upright), so the photo is turned
    by its EXIF orientation too before the two meet.
    """
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(cutout(decode_photo(photo), decode_mask_png(mask_png)), "RGBA").save(out, format="PNG")
    return out.getvalue()


# ---- Finished photos: media types above (MEDIA_FINISHED_*), options and the review flag ---------
# One options type for the three callers: the endpoint reads it from the custom attributes header
# (``backdrop=white,shadow=1,frame=4:3``) or a JSON body's "options" object, the Lambda from
# ``?backdrop=...`` or its JSON "options" and passes it on as custom attributes, ``carvana predict``
# from its flags. trainer/studio.py does the pixels.

# A photo needs review when its risk (trainer.studio.review_risk: flip disagreement + fragments +
# uncertain edge pixels) is over this. Calibrated by bench/review_flag.py on the 8 validation cars
# (128 photos of 1918x1280) with the default recipe at 192x288: the largest threshold that flags
# >= 90 % of the photos below Dice 0.985 (18 of 20), approving 73.4 % (worst approved Dice 0.9843).
# The uncertain share scales with the upsampling factor: recalibrate for another model size.
REVIEW_THRESHOLD = 0.0193
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}


def _colour(text: str) -> tuple[int, int, int]:
    """``white`` / ``#rrggbb`` / ``rrggbb`` -> (r, g, b); ValueError otherwise."""
    text = text.strip().lower()
    if text in NAMED_COLOURS:
        return NAMED_COLOURS[text]
    digits = text.removeprefix("#")
    if len(digits) != 6 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def _aspect(text: str) -> float:
    """``4:3`` / ``16:9`` / ``1.5`` -> width / height (> 0); ValueError otherwise."""
    width, colon, height = text.strip().partition(":")
    value = float(width) / float(height) if colon else float(width)
    if not 0.1 <= value <= 10:
        raise ValueError
    return value


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError


def _fraction(value: object, low: float, high: float) -> float:
    number = float(value)  # type: ignore[arg-type]
    if not low <= number <= high:
        raise ValueError
    return number


class FinishOptions(NamedTuple):
    """How a finished photo looks. NamedTuple, not a dataclass (see :class:`PhotoLimits`).

    ``backdrop_image`` (JPEG/PNG bytes, scaled to fill) replaces ``backdrop`` when given; it comes
    from a JSON body or a file, never from the custom attributes header (1024 characters at most).
    ``frame`` is the width/height of a crop centred on the car with ``margin`` (a fraction of the
    frame) around it; None keeps the photo's size.
    """

    backdrop: tuple[int, int, int] = (255, 255, 255)
    backdrop_image: bytes | None = None
    shadow: bool = False
    frame: float | None = None
    margin: float = 0.08
    quality: int = 92
    review_threshold: float = REVIEW_THRESHOLD

    @classmethod
    def parse(cls, values: Mapping[str, object], source: str) -> FinishOptions:
        """Options from string (or JSON) values; WireError 400 naming *every* bad field at once.

        ``source`` says where they came from in the message (``"custom attributes"``, ``"query"``).
        """
        rules: dict[str, tuple[str, Any]] = {
            "backdrop": ("white, black, grey, or #rrggbb", lambda v: _colour(str(v))),
            "backdrop_image": ("a base64 JPEG or PNG", lambda v: b64decode(v, "backdrop_image")),
            "shadow": ("true or false (1/0, yes/no)", _flag),
            "frame": (
                "an aspect width:height such as 4:3, or a number in [0.1, 10]",
                lambda v: _aspect(str(v)),
            ),
            "margin": ("a number in [0, 0.45]", lambda v: _fraction(v, 0.0, 0.45)),
            "quality": (
                "an integer JPEG quality in [50, 100]",
                lambda v: int(_fraction(int(str(v)), 50, 100)),
            ),
            "review_threshold": ("a number in [0, 1]", lambda v: _fraction(v, 0.0, 1.0)),
        }
        parsed: dict[str, Any] = {}
        problems = []
        for key, value in values.items():
            if key not in rules:
                problems.append(f"unknown option {key!r} (options: {', '.join(rules)})")
                continue
            expected, convert = rules[key]
            try:
                parsed[key] = convert(value)
            except (ValueError, TypeError):
                problems.append(f"{key} must be {expected}; got {value!r}")
        if problems:
            raise WireError(f"bad finish options in {source}: " + "; ".join(problems))
        return cls(**parsed)

    def attributes(self) -> str:
        """These options as a custom attributes header (``key=value`` pairs joined by commas, the
        container's own parsing); the backdrop image cannot travel there and is refused."""
        if self.backdrop_image is not None:
            raise WireError("backdrop_image cannot be sent as custom attributes: send a JSON body")
        defaults = FinishOptions()
        pairs = []
        for key in ("backdrop", "shadow", "frame", "margin", "quality", "review_threshold"):
            value = getattr(self, key)
            if value == getattr(defaults, key):
                continue
            text = (
                "{:02x}{:02x}{:02x}".format(*value)
                if key == "backdrop"
                else str(int(value) if key == "shadow" else value)
            )
            pairs.append(f"{key}={text}")
        return ",".join(pairs)


def finish_options_from_attributes(header: str | None) -> FinishOptions:
    """Finish options from a custom attributes header (``backdrop=white,shadow=1``, read with
    :func:`custom_attribute`). Only the option names are read: ``tfs-*`` pairs are the container's,
    and callers put other things there too (the Lambda's request id, a trace id)."""
    values = {name: custom_attribute(header, name) for name in FinishOptions._fields}
    return FinishOptions.parse({k: v for k, v in values.items() if v is not None}, "custom attributes")
