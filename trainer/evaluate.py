"""``carvana evaluate``: mean Dice per image at full original resolution, the competition's metric.

Training and validation run on downscaled photos, but a studio (and Kaggle) judges the mask at the
photo's own 1918x1280 size, where a blurry upsampled edge costs Dice. So this command sends each
photo's bytes to the exported SavedModel's ``mask_png`` signature, the one the endpoint calls (the
graph decodes, resizes in and back out and thresholds, so the Dice is measured on the very mask the
endpoint answers with), and scores it against the full-size truth. It writes the
per-image scores (to find the hard angles and cars), a summary, and pictures of the worst cases,
because the mean alone never says *what* goes wrong.

Orientation: the predicted mask is in the orientation a screen shows the photo (the graph turns a
photo with an EXIF Orientation tag upright, as the endpoint does). Truth masks are drawn over the
photo's *stored* pixels (Kaggle's GIFs and RLE are; Kaggle's photos carry no orientation tag, so for
them both are the same), so the truth is turned by the photo's tag before scoring.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from trainer.atomic import atomic_path, write_json
from trainer.command import CarvanaError, UsageError, run_command
from trainer.data.layout import DatasetError, Photo, read_mask, read_photo, scan_dataset
from trainer.model.metrics import dice_numpy
from trainer.saved_model_io import PhotoDecodeError, SegmentationModel, open_model, to_mask
from trainer.wire import ORIENTATIONS, THRESHOLD, exif_orientation, orient

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"
WORST_DIR = "worst"
# Overlay colours for the error panel: what the model added and what it missed.
FALSE_POSITIVE = np.array([255, 40, 40], dtype=np.float32)  # red
FALSE_NEGATIVE = np.array([40, 110, 255], dtype=np.float32)  # blue


class EvaluateError(CarvanaError, ValueError):
    """Bad evaluation input (manifest, split, empty selection); the message names the file."""


@dataclass(frozen=True)
class EvaluateConfig:
    """What to evaluate and where the report goes."""

    model: Path
    data: Path
    out: Path
    split: str = "validation"
    manifest: Path | None = None
    all_photos: bool = False
    tta: bool = False
    worst: int = 8
    batch_size: int = 4
    mask_source: str = "gif"
    skip_bad: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvaluateConfig:
        return cls(
            model=Path(args.model),
            data=Path(args.data),
            out=Path(args.out),
            split=args.split,
            manifest=Path(args.manifest) if args.manifest else None,
            all_photos=args.all,
            tta=args.tta,
            worst=args.worst,
            batch_size=args.batch_size,
            mask_source=args.mask_source,
            skip_bad=args.skip_bad,
        )


@dataclass(frozen=True)
class Case:
    """One scored photo; the predicted mask is kept only for the worst few."""

    photo: Photo
    dice: float


def split_cars(manifest: Path, split: str) -> set[str]:
    """The car ids of ``split`` in a ``carvana convert`` manifest (a file or the folder holding it).

    Evaluating the cars the model never saw is the point, and the manifest is where the training
    split was recorded.
    """
    path = manifest / "manifest.json" if manifest.is_dir() else manifest
    try:
        splits = json.loads(path.read_text())["splits"]
    except FileNotFoundError:
        raise EvaluateError(f"{path}: manifest not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise EvaluateError(f"{path}: not a carvana manifest (expected JSON with 'splits'): {err}") from None
    if split not in splits:
        raise EvaluateError(f"{path}: no split {split!r} (found: {', '.join(sorted(splits))})")
    try:
        return set(splits[split]["cars"])
    except (KeyError, TypeError) as err:
        raise EvaluateError(f"{path}: split {split!r} lists no cars ({err!r})") from None


def select_photos(config: EvaluateConfig) -> list[Photo]:
    """The photos to score: every photo with a mask (``--all``) or those of the split's cars."""
    scan = scan_dataset(config.data, mask_source=config.mask_source, skip_bad=config.skip_bad)
    for name, reason in scan.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    photos = scan.photos
    if not config.all_photos:
        if config.manifest is None:
            raise EvaluateError("give --manifest (to evaluate one split's cars) or --all")
        cars = split_cars(config.manifest, config.split)
        photos = [p for p in photos if p.car_id in cars]
        if not photos:
            raise EvaluateError(
                f"{config.data}: none of the {len(cars)} {config.split} cars listed in "
                f"{config.manifest} has photos there"
            )
    if not photos:
        raise EvaluateError(f"{config.data}: no photos with masks found")
    return sorted(photos, key=lambda p: (p.car_id, p.angle))


def image_dice(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the thresholded prediction against the truth (1 when both are empty)."""
    return float(dice_numpy(to_mask(probabilities), truth))


# Per-image Dice levels whose share of photos the summary reports: what a studio reads as "needs no
# touch-up" (0.995), "good" (0.99) and the floor the quality goal sets for 95 % of photos (0.985).
SHARE_LEVELS = (0.985, 0.99, 0.995)


def summarize(dice: Sequence[float]) -> dict[str, Any]:
    """Mean, median, minimum and 5th percentile (linear between ranks) of per-image Dice, and the
    share of photos at or above each of SHARE_LEVELS: the mean is the metric, the rest its spread,
    since one bad photo costs a studio an editor's time however good the mean is."""
    if not dice:
        raise EvaluateError("no images were scored")
    return {
        "mean": float(statistics.fmean(dice)),
        "median": float(statistics.median(dice)),
        "min": float(min(dice)),
        "p5": float(np.percentile(dice, 5)),
        "share_at_least": {f"{level:g}": sum(d >= level for d in dice) / len(dice) for level in SHARE_LEVELS},
        "count": len(dice),
    }


class WorstCases:
    """The ``n`` lowest-Dice photos seen so far, with their predicted masks (bounded memory)."""

    def __init__(self, n: int) -> None:
        self.n = n
        # Max-heap on Dice via negation; the counter breaks ties without comparing arrays.
        self._heap: list[tuple[float, int, Case, np.ndarray]] = []
        self._counter = itertools.count()

    def offer(self, case: Case, prediction: np.ndarray) -> None:
        if self.n <= 0:
            return
        item = (-case.dice, next(self._counter), case, prediction)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        elif case.dice < -self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def worst_first(self) -> list[tuple[Case, np.ndarray]]:
        return [(case, pred) for _, _, case, pred in sorted(self._heap, key=lambda item: -item[0])]


def error_overlay(photo: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The photo dimmed, false positives in red and false negatives in blue (uint8 RGB)."""
    overlay = photo.astype(np.float32) * 0.4
    overlay[(prediction == 1) & (truth == 0)] = FALSE_POSITIVE
    overlay[(prediction == 0) & (truth == 1)] = FALSE_NEGATIVE
    return overlay.astype(np.uint8)


def render_case(path: Path, photo: np.ndarray, truth: np.ndarray, prediction: np.ndarray, title: str) -> None:
    """Save photo, truth, prediction and errors as a 2x2 grid PNG, each panel near full size.

    Panels stay large (480 to 960 px wide) because the errors worth seeing are a few pixels thick
    along the car's outline; a thumbnail would hide them.
    """
    panels = [
        ("photo", photo, None),
        ("truth", truth, "gray"),
        ("prediction", prediction, "gray"),
        (
            "errors: red = false positive, blue = false negative",
            error_overlay(photo, truth, prediction),
            None,
        ),
    ]
    height, width = truth.shape
    panel_width = min(max(width, 480), 960) / 100  # inches at 100 dpi
    fig = Figure(figsize=(2 * panel_width, 2 * panel_width * height / width + 0.6), dpi=100)
    for ax, (name, image, cmap) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        if cmap:
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=2.2 * panel_width)
        ax.axis("off")
    fig.suptitle(title, fontsize=2.6 * panel_width)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def write_per_image(path: Path, cases: Sequence[Case]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "angle", "dice"])
        writer.writerows([c.photo.car_id, c.photo.angle, f"{c.dice:.6f}"] for c in cases)


def display_truth(photo: Photo, orientation: int, shown: tuple[int, int]) -> np.ndarray:
    """The truth mask in display orientation: read at the stored size, turned by the EXIF tag.

    ``shown`` is the predicted mask's (height, width), the displayed size.
    """
    stored = (shown[1], shown[0]) if ORIENTATIONS[orientation][2] else shown  # [2]: transposed
    return orient(read_mask(photo, stored), orientation)


def _photo_bytes(photo: Photo) -> bytes:
    try:
        return photo.image_path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{photo.image_path}: cannot read image ({err.strerror})") from None


def score_photos(
    model: SegmentationModel, photos: Sequence[Photo], config: EvaluateConfig, worst: WorstCases
) -> list[Case]:
    """Score every photo at full size, a few per model call, with a progress bar.

    The photo's bytes go to the graph as the endpoint sends them (``--tta``: the graph averages the
    photo with its mirror image), so the mask scored is the endpoint's mask.
    """
    cases: list[Case] = []
    with tqdm(total=len(photos), desc="evaluate", unit="img") as bar:
        for start in range(0, len(photos), config.batch_size):
            chunk = photos[start : start + config.batch_size]
            data = [_photo_bytes(p) for p in chunk]
            try:
                masks = model.masks(data, tta=config.tta)
            except PhotoDecodeError as err:
                raise DatasetError(f"{chunk[err.index].image_path}: cannot read image ({err})") from None
            for photo, photo_bytes, mask in zip(chunk, data, masks, strict=True):
                truth = display_truth(photo, exif_orientation(photo_bytes), mask.shape)
                case = Case(photo, float(dice_numpy(mask, truth)))
                cases.append(case)
                worst.offer(case, mask)
            bar.update(len(chunk))
    return cases


def evaluate(config: EvaluateConfig) -> dict:
    """Run the evaluation and write the report under ``config.out``; returns the summary."""
    started = time.perf_counter()
    photos = select_photos(config)
    worst = WorstCases(config.worst)
    with open_model(config.model) as model:
        cases = score_photos(model, photos, config, worst)
    config.out.mkdir(parents=True, exist_ok=True)
    write_per_image(config.out / PER_IMAGE_CSV, cases)
    # Pictures from an earlier run into the same folder would pass for this run's worst cases.
    for stale in (config.out / WORST_DIR).glob("[0-9][0-9]_*.png"):
        stale.unlink()
    worst_files = []
    for rank, (case, prediction) in enumerate(worst.worst_first(), start=1):
        photo = case.photo
        name = f"{rank:02d}_{photo.car_id}_{photo.angle:02d}.png"
        orientation = exif_orientation(_photo_bytes(photo))
        image = orient(read_photo(photo.image_path), orientation)
        truth = display_truth(photo, orientation, prediction.shape)
        title = f"#{rank}  {photo.image_path.name}  Dice {case.dice:.4f}"
        render_case(config.out / WORST_DIR / name, image, truth, prediction, title)
        worst_files.append(f"{WORST_DIR}/{name}")
    summary = {
        **summarize([c.dice for c in cases]),
        "tta": config.tta,
        "model": str(config.model),
        "split": "all" if config.all_photos else config.split,
        "threshold": THRESHOLD,
        "seconds": round(time.perf_counter() - started, 2),
        "worst": worst_files,
    }
    write_json(config.out / SUMMARY_JSON, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana evaluate",
        description="Mean Dice per image at full original resolution, with per-image scores, a summary "
        "and pictures of the worst cases.",
    )
    parser.add_argument(
        "--model", required=True, help="SavedModel folder (<model_dir>/unet/1), a model_dir, or model.tar.gz"
    )
    parser.add_argument("--data", required=True, help="Kaggle-layout folder (train/, train_masks/)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--manifest", help="manifest.json from carvana convert (or its folder): lists each split's cars"
    )
    which.add_argument("--all", action="store_true", help="score every photo that has a mask")
    parser.add_argument(
        "--split", default="validation", help="split of --manifest to score (default: %(default)s)"
    )
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped photo")
    parser.add_argument(
        "--worst", type=int, default=8, help="how many worst cases to draw (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="photos per model call (default: %(default)s)"
    )
    parser.add_argument(
        "--mask-source",
        choices=["gif", "csv"],
        default="gif",
        help="where truth masks come from (default: %(default)s)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable photos or masks")
    parser.add_argument("--out", required=True, help="report folder")
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.worst < 0:
        raise UsageError("--batch-size must be >= 1 and --worst >= 0")
    summary = evaluate(EvaluateConfig.from_args(args))
    print(
        f"mean Dice {summary['mean']:.5f} (median {summary['median']:.5f}, 5th percentile "
        f"{summary['p5']:.5f}, min {summary['min']:.5f}; "
        + ", ".join(f"{share:.1%} >= {level}" for level, share in summary["share_at_least"].items())
        + f") over {summary['count']} images in {summary['seconds']:.1f}s; report in {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
