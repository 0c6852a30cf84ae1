"""Images per second: the tf.data pipeline vs a plain PIL loader, same photos, same output size.

What is timed (one run, both on this machine, one after the other):

* tf.data: ``trainer.data.pipeline.make_dataset(..., training=False)`` over TFRecords holding the
  ORIGINAL JPEG bytes (``carvana convert`` without ``--size``, done first and not timed): read,
  parse, decode JPEG + PNG mask, resize to the output size, to float32, batch, prefetch; AUTOTUNE
  decides the parallelism. One warm-up batch is taken first (graph tracing), then one full pass.
* (also, unless ``--no-resized``) the same pipeline over TFRecords converted with ``--size`` equal
  to the output size, the recommended training input: the photos are decoded small every epoch.
* PIL: a plain single-process loop over the original files: open the JPEG and the GIF, resize (the
  photo bilinear, the mask nearest), convert to float32 NumPy arrays.

Usage: ``python bench/pipeline.py [--data ../shared/carvana] [--size 256x384] [--count 0]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.convert import ConvertConfig, ConvertOptions, convert
from trainer.data.layout import Photo, parse_size, scan_dataset
from trainer.data.pipeline import PipelineConfig, make_dataset

DEFAULT_DATA = Path(
    os.environ.get("CARVANA_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "carvana")
)


def _mask_path(photo: Photo) -> Path:
    """The benchmark reads labeled photos only (scan_dataset of a train/ folder with its masks)."""
    if photo.mask_path is None:
        raise SystemExit(f"{photo.image_path}: no mask (the benchmark needs train_masks/)")
    return photo.mask_path


def pil_loader(photos: list[Photo], size: tuple[int, int]) -> float:
    """Seconds to load every photo and mask with PIL into float32 arrays at ``size``."""
    height, width = size
    start = time.perf_counter()
    for photo in photos:
        with Image.open(photo.image_path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            x = np.asarray(rgb, np.float32) / 255.0
        with Image.open(_mask_path(photo)) as mask:
            y = np.asarray(mask.resize((width, height), Image.Resampling.NEAREST), np.float32)[..., None]
        assert x.shape == (height, width, 3) and y.shape == (height, width, 1)
    return time.perf_counter() - start


def tf_pipeline(folder: Path, size: tuple[int, int], batch_size: int) -> tuple[float, int]:
    """Seconds for one full pass of the pipeline (after one warm-up batch), and the images seen."""
    dataset = make_dataset(folder, PipelineConfig(image_size=size, batch_size=batch_size), training=False)
    next(iter(dataset))
    start = time.perf_counter()
    seen = sum(int(images.shape[0]) for images, _ in dataset)
    return time.perf_counter() - start, seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kaggle-layout folder (real photos)")
    parser.add_argument("--size", default="256x384", help="output size HEIGHTxWIDTH")
    parser.add_argument("--count", type=int, default=0, help="photos to use (0 = all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--resized",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the pipeline on TFRecords converted with --size (the recommended training input)",
    )
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    photos = scan_dataset(args.data).photos
    photos = photos[: args.count] if args.count else photos
    print(
        f"{len(photos)} photos from {args.data}, output {size[0]}x{size[1]}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        # The bench's own subset: a Kaggle-layout folder of links, converted without resizing.
        subset = Path(tmp, "data")
        for folder in ("train", "train_masks"):
            (subset / folder).mkdir(parents=True)
        for photo in photos:
            os.symlink(photo.image_path.resolve(), subset / "train" / photo.image_path.name)
            mask = _mask_path(photo)
            os.symlink(mask.resolve(), subset / "train_masks" / mask.name)
        shards = max(os.cpu_count() or 1, 2)
        original, resized = Path(tmp, "original"), Path(tmp, "resized")
        convert(
            ConvertConfig(subset, str(original), ConvertOptions(val_fraction=0.0, shards_per_split=shards))
        )
        tf_seconds, seen = tf_pipeline(original / "train", size, args.batch_size)
        if args.resized:
            options = ConvertOptions(size=size, val_fraction=0.0, shards_per_split=shards)
            convert(ConvertConfig(subset, str(resized), options))
            small_seconds, small_seen = tf_pipeline(resized / "train", size, args.batch_size)
    pil_seconds = pil_loader(photos, size)
    tf_rate, pil_rate = seen / tf_seconds, len(photos) / pil_seconds
    lines = [
        ("tf.data pipeline (TFRecords of the original JPEGs)", tf_rate, seen, tf_seconds),
        ("PIL loader (original JPEG + GIF files)", pil_rate, len(photos), pil_seconds),
    ]
    if args.resized:
        lines.append(
            (
                f"tf.data pipeline (TFRecords made with --size {args.size})",
                small_seen / small_seconds,
                small_seen,
                small_seconds,
            )
        )
    print()
    for name, rate, count, seconds in lines:
        print(f"{name:<56} {rate:7.1f} images/s ({count} in {seconds:.1f} s)")
    print(f"ratio tf.data / PIL (same original photos): {tf_rate / pil_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
