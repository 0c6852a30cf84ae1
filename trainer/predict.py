"""``carvana predict``: masks, cut-outs and a Kaggle submission for a photo or a folder of photos.

The endpoint's offline path, for a studio's batch of photos or the Kaggle test set: each photo's
bytes go to the same SavedModel signature the endpoint calls (``mask_png``: decode, resize in and
back out, threshold, PNG encode, all in the graph), so a mask written here is the endpoint's mask
for the same bytes, pixel for pixel, at the photo's own size. Outputs are what people use: the 0/255
mask PNG per photo, optionally the RGBA cut-out (background transparent and black, the endpoint's
cut-out), and for a folder the ``img,rle_mask`` CSV that Kaggle scores; the RLE and the cut-out
come from trainer/wire.py, the module the endpoint and the Lambda use.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from trainer.atomic import atomic_path
from trainer.command import CarvanaError, UsageError, run_command
from trainer.saved_model_io import PhotoDecodeError, open_model
from trainer.wire import cutout_png, decode_mask_png, rle_encode

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
SUBMISSION_NAME = "submission.csv"


class PredictError(CarvanaError, ValueError):
    """Bad ``carvana predict`` input; the message names the path."""


@dataclass(frozen=True)
class PredictConfig:
    """What to segment and which outputs to write."""

    model: Path
    input: Path
    out: Path
    cutout: bool = False
    masks: bool = True
    submission: Path | None = None
    tta: bool = False
    batch_size: int = 4

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictConfig:
        source = Path(args.input)
        out = Path(args.out)
        # A folder is a batch to submit: its CSV goes beside the masks unless put elsewhere.
        submission = Path(args.submission) if args.submission else None
        if submission is None and source.is_dir():
            submission = out / SUBMISSION_NAME
        return cls(
            model=Path(args.model),
            input=source,
            out=out,
            cutout=args.cutout,
            masks=not args.no_masks,
            submission=submission,
            tta=args.tta,
            batch_size=args.batch_size,
        )


def list_photos(source: Path) -> list[Path]:
    """The photo itself, or the folder's JPEG/PNG files in name order (the submission's row order)."""
    if source.is_file():
        return [source]
    if not source.exists():
        raise PredictError(f"{source}: no such file or directory (expected a photo or a folder of photos)")
    photos = sorted(
        p
        for p in source.iterdir()
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
    )
    if not photos:
        raise PredictError(f"{source}: no photos in the folder (expected {', '.join(PHOTO_SUFFIXES)} files)")
    return photos


def read_bytes(path: Path) -> bytes:
    """The photo file's bytes, as a client would send them; PredictError naming it when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise PredictError(f"{path}: cannot read image ({err.strerror})") from None


def write_bytes(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def predict_masks(config: PredictConfig, photos: Sequence[Path]) -> Iterator[tuple[Path, bytes, bytes]]:
    """``(path, photo bytes, mask PNG)`` per photo in input order, a few photos per model call."""
    with open_model(config.model) as model, tqdm(total=len(photos), desc="predict", unit="img") as bar:
        for start in range(0, len(photos), config.batch_size):
            chunk = photos[start : start + config.batch_size]
            data = [read_bytes(path) for path in chunk]
            try:
                pngs = model.mask_pngs(data, tta=config.tta)
            except PhotoDecodeError as err:
                raise PredictError(f"{chunk[err.index]}: cannot read image ({err})") from None
            yield from zip(chunk, data, pngs, strict=True)
            bar.update(len(chunk))


@contextlib.contextmanager
def submission_writer(path: Path | None) -> Iterator[Callable[[list[str]], object] | None]:
    """A ``writerow`` for ``img,rle_mask`` rows (None when no submission is wanted).

    Rows stream to a temporary file, so the 100k-photo test set never sits in memory, and the CSV
    appears only once every photo is done.
    """
    if path is None:
        yield None
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img", "rle_mask"])
        yield writer.writerow


def predict(config: PredictConfig) -> int:
    """Write every requested output for ``config.input``; returns the number of photos."""
    photos = list_photos(config.input)
    config.out.mkdir(parents=True, exist_ok=True)
    with submission_writer(config.submission) as write_row:
        for path, photo, mask_png in predict_masks(config, photos):
            if config.masks:
                write_bytes(mask_png, config.out / f"{path.stem}_mask.png")
            if config.cutout:
                write_bytes(cutout_png(photo, mask_png), config.out / f"{path.stem}_cutout.png")
            if write_row is not None:
                write_row([path.name, rle_encode(decode_mask_png(mask_png))])
    return len(photos)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana predict",
        description="Mask PNGs at each photo's original size, optional RGBA cut-outs, and for a folder a "
        "Kaggle submission CSV (img,rle_mask).",
    )
    parser.add_argument("input", help="a photo (JPEG/PNG) or a folder of photos")
    parser.add_argument(
        "--model", required=True, help="SavedModel folder (<model_dir>/unet/1), a model_dir, or model.tar.gz"
    )
    parser.add_argument("--out", required=True, help="folder for <stem>_mask.png (and <stem>_cutout.png)")
    parser.add_argument(
        "--cutout", action="store_true", help="also write RGBA cut-outs, background transparent and black"
    )
    parser.add_argument("--no-masks", action="store_true", help="skip the mask PNGs (e.g. only a submission)")
    parser.add_argument(
        "--submission",
        help=f"Kaggle CSV to write (default for a folder: <out>/{SUBMISSION_NAME}; none for a single photo)",
    )
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped photo")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="photos per model call (default: %(default)s)"
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    config = PredictConfig.from_args(args)
    if not (config.masks or config.cutout or config.submission):
        raise UsageError("nothing to write: --no-masks without --cutout or --submission")
    started = time.perf_counter()
    count = predict(config)
    where = f"{config.out}" + (f", submission {config.submission}" if config.submission else "")
    print(f"predicted {count} photo(s) in {time.perf_counter() - started:.1f}s -> {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
