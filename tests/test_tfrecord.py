"""The Example schema: what encode_example writes is what parse_example / decode_example read."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.data.tfrecord import (
    FEATURES,
    decode_example,
    encode_example,
    encode_jpeg,
    encode_mask_png,
    parse_example,
)


def test_round_trip() -> None:
    rng = np.random.default_rng(0)
    image = np.full((24, 40, 3), 180, np.uint8)
    mask = (rng.random((24, 40)) > 0.5).astype(np.uint8)
    serialized = encode_example(
        image_jpeg=encode_jpeg(image),
        mask_png=encode_mask_png(mask),
        car_id="0123456789ab",
        angle=7,
        height=24,
        width=40,
        original_height=1280,
        original_width=1918,
    )
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
