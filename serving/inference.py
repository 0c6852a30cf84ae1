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
  ``image/png``                    the mask as a 1-bit grey PNG (0 = background, 1 = car: 255 once
                                   expanded to 8 bits, as viewers and libpng do) at the photo's size
  ``application/json``             ``{"rle": ..., "width": W, "height": H, "car_fraction": f,
                                   "orientation": "display", "exif_orientation": o}``, RLE as in
                                   Kaggle's train_masks.csv (row-major, 1-indexed "start length" pairs)

Every answer is in the orientation a screen shows the photo: the handler reads the EXIF Orientation
tag from the JPEG's APP1 (or PNG's eXIf) header with the standard library and sends it with the bytes
to ``mask_png``, whose graph turns the decoded photo upright before the network; the cut-out turns
the photo by the same tag (trainer.wire.orient). ``width``/``height`` are the displayed size;
``exif_orientation`` is the tag that was applied (1: stored as shown).
  ``image/png; variant=cutout``    the photo as an RGBA PNG whose alpha channel is the mask (background
                                   transparent and black); answered with that same Content-Type
  ``image/jpeg``, ``image/png; variant=finished``   the finished photo (trainer/studio.py: new backdrop,
                                   soft decontaminated edge, optional ground shadow and framing)

The JSON answer also carries the car's ``box`` (pixels and relative) and the ``review`` verdict
(``needs_review``, ``confidence`` and its signals); it and the finished photos come from the
``alpha_png`` signature (probabilities at full resolution, mask, flip disagreement), the PNG mask and
the cut-out from ``mask_png`` as before. Finish options (trainer.wire.FinishOptions: ``backdrop``,
``shadow``, ``frame``, ``margin``, ``quality``, ``review_threshold``) come from the custom attributes
header (``X-Amzn-SageMaker-Custom-Attributes: backdrop=white,shadow=1,frame=4:3``, split on ``,`` and
``=`` as the container does) or a JSON body's ``"options"`` object, which alone can carry a
``backdrop_image`` (base64); JSON fields win over the header's.

Bad input raises :class:`trainer.wire.HandlerError`, whose message says what was wrong and what was
expected and whose ``status`` is the HTTP status it deserves (400, 406, 413, 415). The real container
answers *any* handler exception with 500 and ``{"error": str(e)}`` (python_service.py), so str() of
the error is itself the JSON document ``{"error": ..., "status": 413, "request_id": ...}``
(trainer.wire.error_document): on AWS the status travels inside the 500's body, where the Lambda reads
it back; ``carvana serve`` answers it as the status. The request id is the caller's
``carvana-request-id`` custom attribute (the Lambda sends its own), else one made here.

Media types, negotiation, base64, limits, RLE and the cut-out are trainer/wire.py's, vendored as
``code/trainer/wire.py``: the Lambda and the offline tools run the same code. Only the standard
library, NumPy and Pillow here (``code/requirements.txt``, or unpacked under ``code/lib`` by
``carvana package --offline``): no TensorFlow in the container's Python service. Limits come from the
environment once, at import (``CARVANA_MAX_IMAGE_BYTES``, ``CARVANA_MAX_PIXELS``; trainer.wire's
PhotoLimits), because the container offers no other configuration channel; they are checked from the
photo's header alone (trainer.wire.check_photo) before anything is decoded.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from trainer import studio
from trainer.wire import (
    ALPHA_SIGNATURE,
    INPUT_NAME,
    MEDIA_JSON,
    ORIENTATION_INPUT,
    PHOTO_CONTENT_TYPES,
    REQUEST_ID_ATTRIBUTE,
    SIGNATURE,
    FinishOptions,
    HandlerError,
    OutputFormat,
    PhotoHeader,
    PhotoLimits,
    WireError,
    b64decode,
    b64encode,
    custom_attribute,
    cutout_png,
    decode_mask_png,
    finish_options_from_attributes,
    json_object,
    media_type,
    negotiate,
    rle_encode,
)
from trainer.wire import check_photo as _check_photo

# Without an Accept header the container answers JSON (python_service.py's default).
DEFAULT_OUTPUT = OutputFormat.RLE_JSON
# This endpoint's limits, from the model's environment (the container offers no other channel).
LIMITS = PhotoLimits.from_env()


class _Pending(NamedTuple):
    """What ``output_handler`` needs from ``input_handler``: the container keeps no request state."""

    context: Any
    photo: bytes
    output: OutputFormat
    orientation: int | None = None
    options: FinishOptions = FinishOptions()


# The container calls input_handler, TF Serving and output_handler one after the other on the same
# thread (greenlet under gevent, where threading.local is patched), so a thread-local slot tagged
# with the context object carries the photo across for the cut-out without re-sending it.
_pending = threading.local()


def negotiate_output(accept: str | None) -> OutputFormat:
    """The answer's format from ``Accept`` (trainer.wire's negotiation; no header means JSON)."""
    return negotiate(accept, DEFAULT_OUTPUT)


def _photo_from_json(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The photo inside ``{"instances": [{"b64": ...}]}`` or ``{"image": "<base64>"}``, and the
    body's ``"options"`` object (finish options; empty when absent)."""
    expected = 'expected {"instances": [{"b64": "<base64 photo>"}]} or {"image": "<base64 photo>"}'
    document = json_object(body, expected)
    options = document.get("options", {})
    if not isinstance(options, dict):
        raise WireError(f'JSON field "options" must be an object, got {type(options).__name__}')
    if "image" in document:
        return b64decode(document["image"], 'JSON field "image"'), options
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
        raise WireError(f'JSON body has neither "image" nor a non-empty "instances" list; {expected}')
    if len(instances) != 1:
        raise WireError(f"send one photo per request, got {len(instances)} instances")
    instance = instances[0]
    if isinstance(instance, dict) and set(instance) == {INPUT_NAME}:
        instance = instance[INPUT_NAME]
    if not (isinstance(instance, dict) and set(instance) == {"b64"}):
        raise WireError(f'instances[0] must be {{"b64": "<base64 photo>"}}; {expected}')
    return b64decode(instance["b64"], 'JSON field "instances[0].b64"'), options


def check_photo(photo: bytes, limits: PhotoLimits = LIMITS) -> PhotoHeader:
    """The photo's header (type, stored size, EXIF orientation), read without decoding anything.

    trainer.wire.check_photo under this endpoint's limits: WireError for an empty or oversized body,
    bytes that are no image, formats the model cannot decode, and pixel counts over the limit (a
    decompression bomb is refused from its header).
    """
    return _check_photo(photo, limits)


def _read(data: Any) -> bytes:
    """The request body: the container passes a stream; bytes are accepted for direct calls."""
    if data is None:
        return b""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return data.read() or b""


_Result = TypeVar("_Result")


def _documented_errors(handler: Callable[[Any, Any], _Result]) -> Callable[[Any, Any], _Result]:
    """Re-raise any failure of ``handler`` as a HandlerError (str() = the JSON error document), with
    the status a WireError meant (500 for anything else) and the request's id."""

    @functools.wraps(handler)
    def wrapped(data: Any, context: Any) -> _Result:
        try:
            return handler(data, context)
        except Exception as err:
            attributes = getattr(context, "custom_attributes", None)
            request_id = custom_attribute(attributes, REQUEST_ID_ATTRIBUTE) or uuid.uuid4().hex
            if isinstance(err, WireError):
                raise HandlerError(err.message, err.status, request_id, err.headers) from err
            raise HandlerError(f"{type(err).__name__}: {err}", 500, request_id) from err

    return wrapped


@_documented_errors
def input_handler(data: Any, context: Any) -> str:
    """Validate the photo and build the TF Serving REST request for the ``mask_png`` signature."""
    output = negotiate_output(context.accept_header)
    content_type, _ = media_type(context.request_content_type)
    body = _read(data)
    if not body:
        raise WireError(
            "request body is empty: send the photo's bytes (Content-Type image/jpeg or image/png) or "
            'JSON {"instances": [{"b64": "<base64 photo>"}]}'
        )
    json_options: dict[str, Any] = {}
    if content_type in PHOTO_CONTENT_TYPES:
        photo = body
    elif content_type == MEDIA_JSON:
        photo, json_options = _photo_from_json(body)
    else:
        raise WireError(
            f"Content-Type {context.request_content_type!r} is not supported: send "
            f"{', '.join(PHOTO_CONTENT_TYPES)} (the photo's bytes) or {MEDIA_JSON} (base64)",
            415,
        )
    options = finish_options_from_attributes(getattr(context, "custom_attributes", None))
    if json_options:
        from_json = FinishOptions.parse(json_options, 'JSON field "options"')
        options = options._replace(**{key: getattr(from_json, key) for key in json_options})
    header = check_photo(photo)
    _pending.value = _Pending(context, photo, output, header.orientation, options)
    studio_answer = output is OutputFormat.RLE_JSON or output.finished
    return json.dumps(
        {
            "signature_name": ALPHA_SIGNATURE if studio_answer else SIGNATURE,
            "instances": [{INPUT_NAME: {"b64": b64encode(photo)}, ORIENTATION_INPUT: header.orientation}],
        }
    )


def _prediction(response: Any) -> dict[str, Any]:
    """The first row of TF Serving's answer (``mask_png`` or ``alpha_png``), or the error TF Serving
    gave, re-raised."""
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        status = response.status_code if 400 <= response.status_code < 500 else 500
        raise WireError(f"TF Serving answered {response.status_code}: {message}", status)
    try:
        row = response.json()["predictions"][0]
        result = {
            "png": b64decode(row["mask_png_bytes"]["b64"], "mask_png_bytes"),
            "height": int(row["height"]),
            "width": int(row["width"]),
            "car_fraction": float(row["car_fraction"]),
        }
        if "alpha_png_bytes" in row:
            result["alpha"] = b64decode(row["alpha_png_bytes"]["b64"], "alpha_png_bytes")
            result["flip_disagreement"] = float(row["flip_disagreement"])
        return result
    except (ValueError, KeyError, IndexError, TypeError) as err:  # WireError is a ValueError
        raise RuntimeError(f"unexpected TF Serving response for {SIGNATURE!r}: {err!r}") from None


def json_answer(result: dict[str, Any], orientation: int | None, analysis: studio.Studio) -> dict[str, Any]:
    """The JSON answer: RLE, size, car fraction, orientation, and the studio's box and review."""
    return {
        "rle": rle_encode(decode_mask_png(result["png"])),
        "width": result["width"],
        "height": result["height"],
        "car_fraction": result["car_fraction"],
        # The graph turned the photo upright: mask, RLE, size and box are as a screen shows it.
        "orientation": "display",
        "exif_orientation": orientation,
        **analysis.fields(),
    }


@_documented_errors
def output_handler(response: Any, context: Any) -> tuple[bytes, str]:
    """Turn TF Serving's answer into the format negotiated in ``input_handler``."""
    pending = getattr(_pending, "value", None)
    _pending.value = None
    if pending is None or pending.context is not context:
        # Not called after input_handler on this thread: negotiate again, no photo for a cut-out.
        pending = _Pending(context, b"", negotiate_output(context.accept_header))
    result = _prediction(response)
    if pending.output is OutputFormat.MASK_PNG:
        return result["png"], OutputFormat.MASK_PNG.value
    if pending.output is OutputFormat.RLE_JSON:
        if "alpha" not in result:
            raise RuntimeError(
                "the JSON answer needs the alpha_png signature's outputs; input_handler did not run"
            )
        analysis = studio.analyse(
            result["alpha"], flip_disagreement=result["flip_disagreement"], options=pending.options
        )
        body = json_answer(result, pending.orientation, analysis)
        return json.dumps(body).encode("utf-8"), OutputFormat.RLE_JSON.value
    if not pending.photo:
        raise RuntimeError(
            f"the {pending.output.query} answer needs the photo, but input_handler did not run"
        )
    if pending.output.finished:
        probabilities = studio.decode_alpha_png(result["alpha"])
        jpeg = pending.output is OutputFormat.FINISHED_JPEG
        return studio.finish(
            pending.photo, probabilities, options=pending.options, jpeg=jpeg
        ), pending.output.value
    return cutout_png(pending.photo, result["png"]), OutputFormat.CUTOUT_PNG.value
