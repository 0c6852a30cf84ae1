"""``carvana make-sample``: a synthetic Carvana dataset in exactly Kaggle's layout.

Why synthetic: Kaggle's photos may not be redistributed, yet the demo and the tests need a dataset
on a bare machine. The cars are drawn by :mod:`trainer.data.synthetic_car`; this module writes them
as Kaggle does (``train/``, ``train_masks/`` GIFs, ``train_masks.csv``, ``metadata.csv``), one car per
worker.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.atomic import atomic_path
from trainer.command import UsageError, run_command
from trainer.data.layout import parse_size
from trainer.data.synthetic_car import ANGLES, CarSpec, draw, make_cars, studio_backdrop
from trainer.wire import rle_encode


@dataclass(frozen=True)
class SampleConfig:
    """What ``carvana make-sample`` writes: where, how many cars, photo size, seed, worker count."""

    out: Path
    cars: int = 4
    height: int = 1280
    width: int = 1918
    seed: int = 0
    workers: int = 0  # 0 = all cores

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SampleConfig:
        height, width = parse_size(args.size)
        return cls(Path(args.out), args.cars, height, width, args.seed, args.workers)


def make_sample(
    out: str | Path, cars: int = 4, height: int = 1280, width: int = 1918, seed: int = 0, *, workers: int = 0
) -> Path:
    """Write ``cars`` x 16 photos, GIF masks, train_masks.csv and metadata.csv under ``out``.

    ``workers=0`` uses every core (one car per task); ``workers=1`` draws in this process.
    Returns ``out``.
    """
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train_masks").mkdir(parents=True, exist_ok=True)
    specs = make_cars(cars, seed)
    tasks = [(spec, height, width, out) for spec in specs]
    workers = min(workers or os.cpu_count() or 1, len(tasks)) or 1
    if workers == 1:
        rows = [row for task in tasks for row in _write_car(task)]
    else:
        # spawn: the caller may already run TensorFlow threads, which fork would copy mid-flight.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = [row for rows in pool.imap(_write_car, tasks) for row in rows]
    _write_csv(out / "train_masks.csv", ["img", "rle_mask"], sorted(rows))
    meta = [(s.car_id, str(s.year), s.make, s.model, s.model, "Studio") for s in specs]
    _write_csv(out / "metadata.csv", ["id", "year", "make", "model", "trim1", "trim2"], meta, quote_all=True)
    return out


def _write_car(task: tuple[CarSpec, int, int, Path]) -> list[tuple[str, str]]:
    """Draw and save the 16 views of one car; returns its ``(img, rle_mask)`` CSV rows."""
    spec, height, width, out = task
    backdrop = studio_backdrop(spec, height, width)
    rows = []
    for angle in range(1, ANGLES + 1):
        name = f"{spec.car_id}_{angle:02d}"
        photo, mask = draw(spec, angle, height, width, backdrop)
        with atomic_path(out / "train" / f"{name}.jpg") as tmp:
            photo.save(tmp, format="JPEG", quality=92)
        with atomic_path(out / "train_masks" / f"{name}_mask.gif") as tmp:
            mask.save(tmp, format="GIF")
        rows.append((f"{name}.jpg", rle_encode(np.asarray(mask))))
    return rows


def _write_csv(path: Path, header: list[str], rows: list, *, quote_all: bool = False) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        # Kaggle quotes metadata.csv fully.
        writer = csv.writer(
            handle, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator="\n"
        )
        writer.writerow(header)
        writer.writerows(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana make-sample",
        description="Write a synthetic dataset in the Kaggle Carvana layout (train/, train_masks/, "
        "train_masks.csv, metadata.csv): 16 turntable views per car.",
    )
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--cars", type=int, default=4, help="number of cars (16 photos each)")
    parser.add_argument("--size", default="1280x1918", help="photo size HEIGHTxWIDTH (default Kaggle's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    return parser


def _command(args: argparse.Namespace) -> int:
    try:
        config = SampleConfig.from_args(args)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from None
    if config.cars < 1:
        raise UsageError(f"--cars must be at least 1, got {config.cars}")
    start = time.perf_counter()
    make_sample(config.out, config.cars, config.height, config.width, config.seed, workers=config.workers)
    print(
        f"wrote {config.cars * ANGLES} photos of {config.cars} cars ({config.width}x{config.height}) "
        f"to {config.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
