"""How much full-resolution Dice a mask at the model's size can hold, cut at 0.5 or as coverage.

The network works at ``--size`` (192x288 by default), 6.7 times smaller than a 1918x1280 photo on
each side, and its mask is resized back to the photo before it is scored. This takes each true
mask of the validation cars down to ``--size`` by area average (what ``carvana convert`` stores:
``mask/coverage``, the share of each pixel the car covers), then back up as the exported graph
does (bilinear, threshold at 0.5), and scores it against the truth with ``carvana evaluate``'s
Dice per photo, three ways:

* ``cut``: the coverage cut at 0.5 first, the {0, 1} mask the network was trained on before soft
  masks: its edge can only fall between model pixels.
* ``coverage as probabilities``: the coverage resized as it is.
* ``coverage as logits``: resized as the graph resizes a network's output, as log-odds (the
  shares clipped to [1/255, 254/255], as the records' 8 bits would).

A perfect network trained on the cut masks is bounded by the first; one trained on coverage, by
the other two. Prints a Markdown row per way: mean / min / 5th percentile Dice.

Usage::

    python bench/coverage.py --records runs/real-192x288 --data ../shared/carvana [--size 192x288]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from recipes import add_data_arguments  # bench/recipes.py: the same records and photos
from tqdm import tqdm

from trainer.data.layout import read_mask
from trainer.evaluate import EvaluateConfig, select_photos
from trainer.model.metrics import dice_numpy
from trainer.training.config import parse_size

WAYS = ("cut", "coverage as probabilities", "coverage as logits")


def round_trip(truth: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The {0, 1} ``truth`` (H, W) down to ``size`` and back, thresholded at 0.5, each of WAYS."""
    full = truth.shape
    share = tf.image.resize(tf.constant(truth, tf.float32)[None, ..., None], size, method="area")
    share = tf.round(share * 255) / 255  # the 8 bits mask/coverage keeps

    def back(small: tf.Tensor, threshold: float) -> np.ndarray:
        return (tf.image.resize(small, full, method="bilinear")[0, ..., 0] > threshold).numpy()

    clipped = tf.clip_by_value(share, 1 / 255, 254 / 255)
    return {
        "cut": back(tf.cast(share >= 0.5, tf.float32), 0.5),
        "coverage as probabilities": back(share, 0.5),
        "coverage as logits": back(tf.math.log(clipped / (1 - clipped)), 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--size", type=parse_size, default=(192, 288), help="the model's HEIGHTxWIDTH")
    parser.add_argument("--split", default="validation", help="the records manifest's split to score")
    args = parser.parse_args(argv)
    selection = EvaluateConfig(
        model=Path(), data=args.data, out=Path(), split=args.split, manifest=args.records / "manifest.json"
    )
    photos = select_photos(selection)
    scores: dict[str, list[float]] = {way: [] for way in WAYS}
    for photo in tqdm(photos, desc=f"masks to {args.size[0]}x{args.size[1]} and back", unit="photo"):
        with Image.open(photo.image_path) as image:  # the size alone, from the header
            truth = read_mask(photo, (image.height, image.width))
        for way, mask in round_trip(truth, args.size).items():
            scores[way].append(dice_numpy(mask, truth))
    print(f"| mask at {args.size[0]}x{args.size[1]} ({len(photos)} photos) | mean | min | 5th percentile |")
    print("|---|---|---|---|")
    for way, values in scores.items():
        print(f"| {way} | {np.mean(values):.5f} | {np.min(values):.5f} | {np.percentile(values, 5):.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
