"""The mask PNG alone: bytes and encode time of the endpoint's 1-bit PNG against an 8-bit one.

``trainer.export.encode_mask_png`` (1-bit grey, packed in the graph) and ``tf.io.encode_png`` of
the same mask as 8-bit grey 0/255 at the same zlib level (what the endpoint answered before),
each a ``tf.function``, on the true masks of real Carvana photos (``../shared/carvana/train_masks``,
1918x1280; an ellipse of a car's size where that folder is absent). Both are decoded back and
checked equal to the mask before anything is timed. Timed rounds alternate the two.

Usage: ``python bench/mask_png.py [--masks 16] [--rounds 20]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf
from PIL import Image
from serve import DEFAULT_DATA  # bench/serve.py: where the real photos are (CARVANA_REAL_DATA)

from trainer.export import MASK_PNG_COMPRESSION, encode_mask_png


def load_masks(count: int) -> tuple[list[np.ndarray], str]:
    """Up to ``count`` real true masks as bool arrays, or one synthetic ellipse; and their source."""
    gifs = sorted((DEFAULT_DATA / "train_masks").glob("*_mask.gif"))[:count]
    if gifs:
        return [np.asarray(Image.open(gif)) > 0 for gif in gifs], f"{len(gifs)} masks in {DEFAULT_DATA}"
    rows, cols = np.mgrid[:1280, :1918]
    ellipse = ((cols - 960) / 700) ** 2 + ((rows - 700) / 350) ** 2 < 1
    return [ellipse], f"a synthetic 1918x1280 ellipse ({DEFAULT_DATA} not found)"


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.bool)])
def eight_bit(mask: tf.Tensor) -> tf.Tensor:
    pixels = tf.where(mask, tf.constant(255, tf.uint8), tf.constant(0, tf.uint8))
    return tf.io.encode_png(pixels[..., tf.newaxis], compression=MASK_PNG_COMPRESSION)


one_bit = tf.function(encode_mask_png, input_signature=[tf.TensorSpec([None, None], tf.bool)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/mask_png.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=16, help="real masks to use (default 16)")
    parser.add_argument("--rounds", type=int, default=20, help="timed encodes of each mask (default 20)")
    args = parser.parse_args(argv)

    masks, source = load_masks(args.masks)
    tensors = [tf.constant(mask) for mask in masks]
    encoders = {"8-bit grey (before)": eight_bit, "1-bit grey (encode_mask_png)": one_bit}
    sizes: dict[str, list[int]] = {name: [] for name in encoders}
    for mask, tensor in zip(masks, tensors, strict=True):
        for name, encode in encoders.items():
            png = encode(tensor).numpy()
            decoded = tf.io.decode_png(png, channels=1).numpy()[..., 0]
            if not np.array_equal(decoded, mask.astype(np.uint8) * 255):
                raise SystemExit(f"{name}: the PNG does not decode to the mask")
            sizes[name].append(len(png))
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.rounds):
        for tensor in tensors:
            for name, encode in encoders.items():
                start = time.perf_counter()
                encode(tensor).numpy()
                times[name].append((time.perf_counter() - start) * 1000)

    print(f"{source}; {os.cpu_count()} CPUs; zlib level {MASK_PNG_COMPRESSION}; decoded back equal")
    print()
    print("| mask PNG | mean KB | p50 ms to encode | p95 ms |")
    print("|---|---:|---:|---:|")
    for name in encoders:
        print(
            f"| {name} | {np.mean(sizes[name]) / 1000:.1f} | {np.percentile(times[name], 50):.2f} "
            f"| {np.percentile(times[name], 95):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
