"""The TFRecord Example schema, in one place: what ``carvana convert`` writes and every reader parses.

Features (tf.train.Example):
    image/encoded   bytes  JPEG (the original bytes when not resized, else re-encoded at quality 95)
    image/format    bytes  b"jpeg"
    mask/encoded    bytes  PNG, mode L, values {0, 1}, same height and width as the image
    mask/coverage   bytes  optional (written when conversion resizes): PNG, mode L, 0..255 = the
                           share of each pixel the car covers, x255, before the 0.5 cut that gives
                           mask/encoded; empty in records without it
    image/id        bytes  car id (12 hex chars)
    image/angle     int64  turntable angle 1..16
    image/height, image/width                    int64  stored image size
    image/original_height, image/original_width  int64  photo size before any --size resize

Masks travel as PNG rather than JPEG because JPEG would blur the {0, 1} edge; PNG keeps it exact.
The coverage is what a mask shrunk to the model's size loses when it is cut at 0.5: where the edge
lies inside the pixel. Trained on it, the network's probabilities place the edge inside a model
pixel, and the upsampled mask follows the car's outline at full resolution (the true masks taken to 192x288
and back score 0.9987 from their coverage against 0.9953 from the cut masks: bench/coverage.py).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

JPEG_QUALITY = 95
# Bump when what `carvana convert` writes changes, so a re-run rewrites shards of the older schema.
SCHEMA_VERSION = 2

FEATURES: dict[str, tf.io.FixedLenFeature] = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "mask/encoded": tf.io.FixedLenFeature([], tf.string),
    "mask/coverage": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/angle": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/original_height": tf.io.FixedLenFeature([], tf.int64),
    "image/original_width": tf.io.FixedLenFeature([], tf.int64),
}


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A {0, 1} mask ``(H, W)`` as a mode-L PNG holding exactly those values.

    zlib level 1: a full-size mask decodes about 3x faster than at the default level 6 (4 vs 13 ms,
    which the pipeline pays every epoch) for ~10 KB more, small beside the photo's JPEG.
    """
    buffer = io.BytesIO()
    mask = (np.asarray(mask) != 0).astype(np.uint8)
    Image.fromarray(mask, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_coverage_png(coverage: np.ndarray) -> bytes:
    """A coverage map ``(H, W)`` of floats in [0, 1] as a mode-L PNG of ``round(255 * coverage)``."""
    buffer = io.BytesIO()
    levels = np.rint(np.clip(np.asarray(coverage, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(levels, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 ``(H, W, 3)`` array as JPEG bytes (used when conversion resizes the photo)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def encode_example(
    *,
    image_jpeg: bytes,
    mask_png: bytes,
    car_id: str,
    angle: int,
    height: int,
    width: int,
    original_height: int,
    original_width: int,
    coverage_png: bytes = b"",
) -> bytes:
    """One serialized tf.train.Example with the features listed in the module docstring."""

    def data(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def number(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        "image/encoded": data(image_jpeg),
        "image/format": data(b"jpeg"),
        "mask/encoded": data(mask_png),
        "mask/coverage": data(coverage_png),
        "image/id": data(car_id.encode()),
        "image/angle": number(angle),
        "image/height": number(height),
        "image/width": number(width),
        "image/original_height": number(original_height),
        "image/original_width": number(original_width),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialized Example into a dict of scalar tensors keyed as in FEATURES."""
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_example(serialized: tf.Tensor, *, coverage: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized Example -> (image uint8 ``(H, W, 3)``, mask uint8 ``(H, W, 1)`` of {0, 1}); with
    ``coverage``, the mask is the car's coverage in 0..255 instead: ``mask/coverage`` where the record
    has it, else the {0, 1} mask x255 (a full-size mask is its own coverage)."""
    features = parse_example(serialized)
    # TF's default decoder on purpose: the exported serving graph decodes with it too (tf.io.decode_image),
    # so training and serving see the same pixels (Pillow's differ by a few levels at edges).
    image = tf.io.decode_jpeg(features["image/encoded"], channels=3)

    def cut_mask() -> tf.Tensor:
        return tf.io.decode_png(features["mask/encoded"], channels=1)

    if not coverage:
        return image, cut_mask()
    stored = features["mask/coverage"]  # one PNG decoded per record: the cut mask only without it
    return image, tf.cond(
        tf.strings.length(stored) > 0, lambda: tf.io.decode_png(stored, channels=1), lambda: cut_mask() * 255
    )
