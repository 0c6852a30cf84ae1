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
- strict but whitespace-tolerant base64 (:func:`b64decode`), JSON request bodies and photo header
  sniffing;
- Kaggle RLE (row-major, 1-indexed ``"start length"`` pairs, as in train_masks.csv);
- the cut-out: the photo as RGBA with the mask as alpha and the RGB *zeroed* where alpha is 0, so
  nothing of the studio survives in the file.

Standard library only at import: the Lambda runtime has boto3 but no NumPy or Pillow. The functions
that need NumPy (RLE, masks) or Pillow (PNG) import them when called.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from enum import Enum
from typing import TYPE_CHECKING, Any

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
INPUT_NAME = "image_bytes"

MB = 1024 * 1024
# SageMaker real-time InvokeEndpoint accepts request bodies up to 6 MB (S3 photos included).
ENDPOINT_PAYLOAD_LIMIT = 6 * MB
# A synchronous Lambda invocation carries at most 6 MB each way, the event's JSON included.
LAMBDA_PAYLOAD_LIMIT = 6 * MB
# A 1918x1280 Carvana photo is 2.5 MP; 40 MP covers full-frame cameras. A few KB of PNG can claim
# billions of pixels, so the header is checked against this before anything is decoded.
MAX_PIXELS = 40_000_000

MEDIA_MASK_PNG = "image/png"
MEDIA_RLE_JSON = "application/json"
MEDIA_CUTOUT_PNG = "image/png; variant=cutout"
MEDIA_JSON = "application/json"
# Content types a photo may be sent with; the bytes themselves decide JPEG or PNG.
PHOTO_CONTENT_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image")
PHOTO_SIGNATURES: dict[bytes, str] = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


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
        if media in {"image/png", "image/*", "*/*"}:
            return OutputFormat.MASK_PNG
        if media in {"application/json", "application/*"}:
            return OutputFormat.RLE_JSON
    raise WireError(
        f"Accept {accept!r} is not supported: ask for {MEDIA_MASK_PNG!r} (mask), {MEDIA_RLE_JSON!r} "
        f"(RLE) or {MEDIA_CUTOUT_PNG!r} (RGBA cut-out)",
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


def sniff_photo(photo: bytes) -> str:
    """The photo's real media type from its first bytes; WireError 400 unless JPEG or PNG."""
    for signature, media in PHOTO_SIGNATURES.items():
        if photo.startswith(signature):
            return media
    raise WireError(f"body is not a JPEG or PNG image (it starts with {photo[:8]!r})")


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
    """The ``mask_png`` signature's PNG (0/255) as a uint8 {0, 1} array ``(height, width)``."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        gray = image if image.mode == "L" else image.convert("L")
        return (np.asarray(gray) > 127).astype(np.uint8)


def cutout(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA uint8 ``(H, W, 4)``: alpha 255 on the car (``mask`` non-zero), 0 elsewhere, and the RGB
    zeroed where alpha is 0 -- nothing of the studio survives, and the PNG is about half the size."""
    import numpy as np

    rgb = np.asarray(rgb, dtype=np.uint8)
    car = np.asarray(mask) != 0
    if rgb.shape[:2] != car.shape:
        raise ValueError(f"mask is {car.shape} (height, width) but the photo is {rgb.shape[:2]}")
    return np.dstack([rgb * car[..., None], car.astype(np.uint8) * 255])


def cutout_png(photo: bytes, mask_png: bytes) -> bytes:
    """The cut-out (see :func:`cutout`) of a JPEG/PNG photo and its mask PNG, as PNG bytes."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(photo)) as image:
        rgb = np.asarray(image.convert("RGB"))
    out = io.BytesIO()
    Image.fromarray(cutout(rgb, decode_mask_png(mask_png)), "RGBA").save(out, format="PNG")
    return out.getvalue()
