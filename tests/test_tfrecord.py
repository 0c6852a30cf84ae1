"""The Example schema: what encode_example writes is what parse_example / decode_example read."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.data.tfrecord import (
    FEATURES,
    decode_example,
    encode_coverage_png,
    encode_example,
    encode_jpeg,
    encode_mask_png,
    parse_example,
)


def example(image: np.ndarray, mask: np.ndarray, **extra) -> bytes:
    """A serialized Example of car 0123456789ab, angle 7, from a 1280x1918 photo."""
    return encode_example(
        image_jpeg=encode_jpeg(image),
        mask_png=encode_mask_png(mask),
        car_id="0123456789ab",
        angle=7,
        height=image.shape[0],
        width=image.shape[1],
        original_height=1280,
        original_width=1918,
        **extra,
    )


def test_round_trip() -> None:
    rng = np.random.default_rng(0)
    image = np.full((24, 40, 3), 180, np.uint8)
    mask = (rng.random((24, 40)) > 0.5).astype(np.uint8)
    serialized = example(image, mask)
    features = {k: v.numpy() for k, v in parse_example(tf.constant(serialized)).items()}
    assert set(features) == set(FEATURES)
    assert features["image/id"] == b"0123456789ab" and features["image/format"] == b"jpeg"
    assert (features["image/angle"], features["image/height"], features["image/width"]) == (7, 24, 40)
    assert (features["image/original_height"], features["image/original_width"]) == (1280, 1918)
    decoded_image, decoded_mask = decode_example(tf.constant(serialized))
    assert decoded_image.dtype == tf.uint8 and decoded_image.shape == (24, 40, 3)
    assert np.abs(decoded_image.numpy().astype(int) - 180).max() <= 2
    np.testing.assert_array_equal(decoded_mask.numpy()[..., 0], mask)  # PNG: the mask is exact


def test_mask_png_holds_zero_and_one() -> None:
    png = encode_mask_png(np.array([[0, 255], [3, 0]]))
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy()[..., 0], [[0, 1], [1, 0]])


def test_coverage_travels_beside_the_mask_and_defaults_to_it() -> None:
    """``mask/coverage`` holds round(255 x share); records without it read their {0, 1} mask x255."""
    mask, image = np.array([[0, 0], [1, 1]], np.uint8), np.full((2, 2, 3), 90, np.uint8)
    with_coverage = example(image, mask, coverage_png=encode_coverage_png(np.array([[0, 0.25], [0.5, 1]])))
    _, levels = decode_example(tf.constant(with_coverage), coverage=True)
    np.testing.assert_array_equal(levels.numpy()[..., 0], [[0, 64], [128, 255]])
    _, exact = decode_example(tf.constant(with_coverage))
    np.testing.assert_array_equal(exact.numpy()[..., 0], mask)  # the {0, 1} mask is unchanged
    _, fallback = decode_example(tf.constant(example(image, mask)), coverage=True)
    np.testing.assert_array_equal(fallback.numpy()[..., 0], [[0, 0], [255, 255]])
