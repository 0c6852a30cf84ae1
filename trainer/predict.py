"""``carvana predict``: masks, cut-outs, finished photos, the review page and a Kaggle submission for a
photo or a folder of many cars, resumable.

The endpoint's offline path, for a studio's day of photos or the Kaggle test set: each photo's bytes go
to the signature the endpoint calls for its JSON answer and finished photos (``alpha_png``: decode,
resize in and back out, the probabilities at full resolution, the ``mask_png`` mask, the flip
disagreement, all in the graph), and the box, the review verdict and the finished photo come from
trainer/studio.py, the module the endpoint's handler runs. So a mask, a finished photo or a review
flag written here is the endpoint's for the same bytes.

For a folder it also writes, rebuilt from every photo's record at the end of each run:

- ``predictions.csv``: per photo its size, car share, box (pixels and relative) and review signals;
- ``cars.json``: per car (Kaggle's ``<id>_<NN>`` names) the views whose area or box strays from the
  turntable sequence (trainer/studio_cars.py);
- ``review/index.html``: a contact sheet of the photos to look at, mask outline drawn
  (trainer/studio_review.py);
- ``submission.csv`` (Kaggle's ``img,rle_mask``) and ``summary.json`` (photos, flagged, time).

Nothing is lost on interruption: every file is written under a temporary name and renamed, and a
photo's record (``.records/<stem>.json``) is written last, after its outputs. A rerun skips the cars
whose photos all have a record made with the same options; a car is the unit, because its views are
framed at one common scale.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer import studio
from trainer.atomic import atomic_path
from trainer.command import CarvanaError, UsageError, run_command
from trainer.saved_model_io import PhotoDecodeError, SegmentationModel, open_model
from trainer.studio_cars import VIEWS, View, car_and_view, check_car, common_content
from trainer.studio_review import write_review_page, write_thumbnail
from trainer.wire import FinishOptions, WireError, cutout_png, decode_mask_png, decode_photo, rle_encode

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
SUBMISSION_NAME = "submission.csv"
PREDICTIONS_NAME = "predictions.csv"
CARS_NAME = "cars.json"
SUMMARY_NAME = "summary.json"
RECORDS = ".records"
REVIEW = "review"
CSV_FIELDS = (
    "photo",
    "car",
    "view",
    "width",
    "height",
    "car_fraction",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
    "box_rel_x",
    "box_rel_y",
    "box_rel_width",
    "box_rel_height",
    "confidence",
    "flip_disagreement",
    "fragments",
    "uncertain",
    "needs_review",
    "car_check",
)


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
    finished: str | None = None  # "jpeg" or "png"
    options: FinishOptions = field(default_factory=FinishOptions)
    restart: bool = False

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
            finished=args.finished,
            options=finish_options(args),
            restart=args.restart,
        )

    def fingerprint(self) -> str:
        """What a photo's outputs depend on: a record made under another fingerprint is redone."""
        options = self.options._replace(backdrop_image=None)
        backdrop = hashlib.sha256(self.options.backdrop_image or b"").hexdigest()[:12]
        keys = (self.cutout, self.masks, self.tta, self.finished, tuple(options), backdrop, str(self.model))
        return hashlib.sha256(repr(keys).encode()).hexdigest()[:16]


def finish_options(args: argparse.Namespace) -> FinishOptions:
    """The finish options from the flags, through the wire's parser (the endpoint's rules and words)."""
    values: dict[str, object] = {"shadow": args.shadow, "margin": args.margin}
    if args.frame:
        values["frame"] = args.frame
    if args.review_threshold is not None:
        values["review_threshold"] = args.review_threshold
    if args.backdrop:
        backdrop = Path(args.backdrop)
        if backdrop.suffix.lower() in PHOTO_SUFFIXES:
            try:
                return FinishOptions.parse(values, "the command line")._replace(
                    backdrop_image=backdrop.read_bytes()
                )
            except OSError as err:
                raise UsageError(
                    f"--backdrop {backdrop}: cannot read the backdrop image ({err.strerror})"
                ) from None
        values["backdrop"] = args.backdrop
    try:
        return FinishOptions.parse(values, "the command line")
    except WireError as err:
        raise UsageError(err.message) from None


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


def group_by_car(photos: Sequence[Path]) -> dict[str, list[Path]]:
    """Photos per car, in name order (Kaggle's ``<id>_<NN>``; any other name is a car of its own)."""
    cars: dict[str, list[Path]] = {}
    for path in photos:
        cars.setdefault(car_and_view(path.stem)[0], []).append(path)
    return cars


def read_bytes(path: Path) -> bytes:
    """The photo file's bytes, as a client would send them; PredictError naming it when unreadable."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise PredictError(f"{path}: cannot read image ({err.strerror})") from None


def write_bytes(data: bytes, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(document: object, path: Path) -> None:
    write_bytes(json.dumps(document, indent=1).encode(), path)


def predict_alphas(
    model: SegmentationModel, paths: Sequence[Path], *, batch_size: int, tta: bool
) -> Iterator[tuple[Path, bytes, dict[str, Any]]]:
    """``(path, photo bytes, alpha_png answer)`` per photo in input order, a few photos per call."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        data = [read_bytes(path) for path in chunk]
        try:
            rows = model.alphas(data, tta=tta)
        except PhotoDecodeError as err:
            raise PredictError(f"{chunk[err.index]}: cannot read image ({err})") from None
        yield from zip(chunk, data, rows, strict=True)


class Run:
    """One ``carvana predict`` over a photo or a folder: the per-car loop and its records."""

    def __init__(self, config: PredictConfig, photos: Sequence[Path]) -> None:
        self.config = config
        self.photos = photos
        self.folder = config.input.is_dir()
        self.records_dir = config.out / RECORDS
        self.fingerprint = config.fingerprint()

    def _record_path(self, path: Path) -> Path:
        return self.records_dir / f"{path.stem}.json"

    def done(self, path: Path) -> dict[str, Any] | None:
        """The photo's record from an earlier run with the same options, else None."""
        if not self.folder or self.config.restart:
            return None
        try:
            record = json.loads(self._record_path(path).read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("fingerprint") == self.fingerprint else None

    def car(self, model: SegmentationModel, paths: Sequence[Path]) -> list[dict[str, Any]]:
        """Every output of one car's photos, then their records (written last)."""
        config, options = self.config, self.config.options
        answers = list(predict_alphas(model, paths, batch_size=config.batch_size, tta=config.tta))
        analyses = [
            studio.analyse(
                row["alpha_png_bytes"], flip_disagreement=row["flip_disagreement"], options=options
            )
            for _, _, row in answers
        ]
        content = common_content([a.box for a in analyses]) if options.frame else None
        records = []
        for (path, photo, row), analysis in zip(answers, analyses, strict=True):
            mask_png = row["mask_png_bytes"]
            # Each decoded once for every output that needs it (full-size JPEG decodes are not cheap).
            rgb = decode_photo(photo) if config.finished or self.folder else None
            mask = decode_mask_png(mask_png) if config.submission is not None or self.folder else None
            if config.masks:
                write_bytes(mask_png, config.out / f"{path.stem}_mask.png")
            if config.cutout:
                write_bytes(cutout_png(photo, mask_png), config.out / f"{path.stem}_cutout.png")
            if rgb is not None and config.finished:
                jpeg = config.finished == "jpeg"
                finished = studio.finish_pixels(rgb, analysis.probabilities, options=options, content=content)
                image = studio.encode_image(finished.image, jpeg=jpeg, quality=options.quality)
                write_bytes(image, config.out / f"{path.stem}_finished.{'jpg' if jpeg else 'png'}")
            car, view = car_and_view(path.stem)
            record = {
                "fingerprint": self.fingerprint,
                "photo": path.name,
                "stem": path.stem,
                "car": car,
                "view": view,
                "width": int(row["width"]),
                "height": int(row["height"]),
                "car_fraction": round(float(row["car_fraction"]), 6),
                **analysis.fields(),
            }
            if mask is not None and config.submission is not None:
                record["rle"] = rle_encode(mask)
            if rgb is not None and mask is not None and self.folder:
                write_thumbnail(rgb, mask, config.out / REVIEW / "thumbs" / f"{path.stem}.jpg")
                write_json(record, self._record_path(path))
            records.append(record)
        return records


def _csv_row(record: dict[str, Any], car_check: list[str]) -> list[object]:
    box = record["box"] or {"relative": {}}
    rel = box["relative"]
    review = record["review"]
    return [
        record["photo"],
        record["car"],
        record["view"] or "",
        record["width"],
        record["height"],
        record["car_fraction"],
        *(box.get(key, "") for key in ("x", "y", "width", "height")),
        *(rel.get(key, "") for key in ("x", "y", "width", "height")),
        review["confidence"],
        review["flip_disagreement"],
        review["fragments"],
        review["uncertain"],
        int(review["needs_review"]),
        "; ".join(car_check),
    ]


def car_report(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``cars.json``: per car its views, the flagged ones (car checks) and the review flags."""
    by_car: dict[str, dict[int, dict[str, Any]]] = {}
    for record in records:
        if record["view"] is not None:
            by_car.setdefault(record["car"], {})[record["view"]] = record
    report = {}
    for car, views in sorted(by_car.items()):
        checked = {
            number: View(
                r["car_fraction"],
                None
                if r["box"] is None
                else (
                    r["box"]["relative"]["x"],
                    r["box"]["relative"]["y"],
                    r["box"]["relative"]["x"] + r["box"]["relative"]["width"],
                    r["box"]["relative"]["y"] + r["box"]["relative"]["height"],
                ),
            )
            for number, r in views.items()
        }
        flags = check_car(checked)
        report[car] = {
            "views": len(views),
            "missing_views": [n for n in range(1, VIEWS + 1) if n not in views],
            "flagged_views": {views[n]["photo"]: reasons for n, reasons in flags.items()},
            "needs_review": sorted(r["photo"] for r in views.values() if r["review"]["needs_review"]),
        }
    return report


def write_reports(
    config: PredictConfig, records: Sequence[dict[str, Any]], seconds: float, skipped: int
) -> dict:
    """predictions.csv, cars.json, the review page, the submission and summary.json, all rebuilt from
    the records (so an interrupted and resumed run ends with the same files as one run)."""
    cars = car_report(records)
    checks = {photo: reasons for car in cars.values() for photo, reasons in car["flagged_views"].items()}
    with atomic_path(config.out / PREDICTIONS_NAME) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for record in records:
            writer.writerow(_csv_row(record, checks.get(record["photo"], [])))
    write_json(cars, config.out / CARS_NAME)
    flagged = [r for r in records if r["review"]["needs_review"] or r["photo"] in checks]
    write_review_page(config.out / REVIEW / "index.html", flagged, checks, total=len(records))
    if config.submission is not None:
        write_submission(config.submission, records)
    summary = {
        "photos": len(records),
        "cars": len({r["car"] for r in records}),
        "needs_review": sum(bool(r["review"]["needs_review"]) for r in records),
        "car_check_flags": len(checks),
        "flagged": len(flagged),
        "skipped_as_done": skipped,
        "seconds": round(seconds, 1),
        "review_page": str(config.out / REVIEW / "index.html"),
    }
    write_json(summary, config.out / SUMMARY_NAME)
    return summary


def write_submission(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Kaggle's ``img,rle_mask`` CSV for ``records``, in their order (written whole, then renamed)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img", "rle_mask"])
        writer.writerows([r["photo"], r["rle"]] for r in records)


def predict(config: PredictConfig) -> dict[str, Any]:
    """Write every requested output for ``config.input``; returns the summary (photos, flagged, ...)."""
    started = time.perf_counter()
    photos = list_photos(config.input)
    config.out.mkdir(parents=True, exist_ok=True)
    run = Run(config, photos)
    records: dict[str, dict[str, Any]] = {}
    skipped = 0
    with tqdm(total=len(photos), desc="predict", unit="img") as bar:
        pending = []
        for paths in group_by_car(photos).values():
            done = [run.done(path) for path in paths]
            if all(done):
                records.update((r["photo"], r) for r in done if r)
                skipped += len(paths)
                bar.update(len(paths))
            else:
                pending.append(paths)
        bar.set_postfix(skipped=skipped)
        if pending:
            with open_model(config.model) as model:
                flagged = 0
                for paths in pending:
                    new = run.car(model, paths)
                    records.update((r["photo"], r) for r in new)
                    flagged += sum(bool(r["review"]["needs_review"]) for r in new)
                    bar.update(len(paths))
                    bar.set_postfix(skipped=skipped, needs_review=flagged)
    ordered = [records[path.name] for path in photos]
    seconds = time.perf_counter() - started
    if not run.folder:
        if config.submission is not None:
            write_submission(config.submission, ordered)
        flagged = sum(bool(r["review"]["needs_review"]) for r in ordered)
        return {
            "photos": len(ordered),
            "flagged": flagged,
            "skipped_as_done": 0,
            "seconds": round(seconds, 1),
        }
    return write_reports(config, ordered, seconds, skipped)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana predict",
        description="Mask PNGs at each photo's original size, optional RGBA cut-outs and finished photos, "
        "and for a folder predictions.csv (box, review flag), cars.json (per-car checks), a review page, "
        "a Kaggle submission CSV and summary.json; an interrupted folder run resumes where it stopped.",
    )
    parser.add_argument("input", help="a photo (JPEG/PNG) or a folder of photos")
    parser.add_argument(
        "--model", required=True, help="SavedModel folder (<model_dir>/unet/1), a model_dir, or model.tar.gz"
    )
    parser.add_argument("--out", required=True, help="folder for <stem>_mask.png, _cutout.png, _finished.jpg")
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
    finished = parser.add_argument_group("finished photos (<stem>_finished.jpg/.png)")
    finished.add_argument("--finished", choices=("jpeg", "png"), help="write finished photos in this format")
    finished.add_argument(
        "--backdrop",
        help="white (default), black, grey, #rrggbb, or a JPEG/PNG file scaled to fill the photo",
    )
    finished.add_argument("--shadow", action="store_true", help="add a ground shadow (contact and drop)")
    finished.add_argument(
        "--frame",
        metavar="ASPECT",
        help="crop/pad to this aspect (4:3, 16:9, 1.5), car centred, one scale per car",
    )
    finished.add_argument(
        "--margin",
        type=float,
        default=FinishOptions().margin,
        help="margin around the car, share of the frame",
    )
    finished.add_argument("--review-threshold", type=float, help="risk above which a photo needs review")
    parser.add_argument("--restart", action="store_true", help="redo every photo, ignoring earlier records")
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    config = PredictConfig.from_args(args)
    if not (config.masks or config.cutout or config.submission or config.finished):
        raise UsageError("nothing to write: --no-masks without --cutout, --finished or --submission")
    summary = predict(config)
    where = f"{config.out}" + (f", submission {config.submission}" if config.submission else "")
    print(
        f"predicted {summary['photos']} photo(s) in {summary['seconds']:.1f}s "
        f"({summary['skipped_as_done']} already done), {summary['flagged']} flagged for review -> {where}"
    )
    if "review_page" in summary:
        print(f"review page: {summary['review_page']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
