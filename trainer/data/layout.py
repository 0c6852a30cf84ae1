"""Reader for the Kaggle Carvana layout, and the split by car.

Layout (Kaggle's own)::

    <root>/train/<id>_<NN>.jpg                 photos, <id> = 12 hex chars, NN = 01..16 (turntable angle)
    <root>/train_masks/<id>_<NN>_mask.gif      palette GIF, values {0, 1}
    <root>/train_masks.csv                     img,rle_mask (the same masks as Kaggle RLE)
    <root>/metadata.csv                        id,year,make,model,trim1,trim2
    <root>/test/<id>_<NN>.jpg                  unlabeled photos

Every photo either makes it into the result or is reported: bad input raises DatasetError naming
the file, or with ``skip_bad`` lands in ``ScanResult.skipped`` as ``(file, reason)`` so the caller
can list it. Scanning reads image headers only (fast on 5,088 photos); full decoding happens where
the pixels are needed (read_photo / read_mask), which raise the same DatasetError.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.command import CarvanaError
from trainer.wire import rle_decode

PHOTO_NAME = re.compile(r"^(?P<car>[0-9a-f]{12})_(?P<angle>\d{2})\.jpg$")
ANGLES = range(1, 17)
MASK_SOURCES = ("gif", "csv")
SPLITS = ("train", "test")
CSV_NAME = "train_masks.csv"


class DatasetError(CarvanaError, ValueError):
    """Bad input data; the message names the file and what was expected."""


@dataclass(frozen=True)
class Photo:
    """One turntable photo and where its mask comes from (GIF file, RLE string, or none for test/)."""

    car_id: str
    angle: int
    image_path: Path
    mask_path: Path | None = None
    mask_rle: str | None = None

    @property
    def name(self) -> str:
        """Kaggle's image name, e.g. ``0795e132d090_01.jpg`` (the key of train_masks.csv)."""
        return self.image_path.name

    @property
    def labeled(self) -> bool:
        return self.mask_path is not None or self.mask_rle is not None


@dataclass(frozen=True)
class ScanResult:
    """The photos found and the files left out (only non-empty with ``skip_bad``)."""

    photos: list[Photo]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cars(self) -> list[str]:
        return sorted({p.car_id for p in self.photos})

    def summary(self) -> str:
        """One line of counts for the console, so nothing is dropped without the user seeing it."""
        text = f"{len(self.photos)} photos of {len(self.cars)} cars"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} bad file(s)"
        return text


def scan_dataset(
    root: str | Path, *, mask_source: str = "gif", skip_bad: bool = False, split: str = "train"
) -> ScanResult:
    """List the photos of ``root/<split>`` with their masks, checking each one.

    Checks: file name pattern and angle, photo readable, mask present (GIF file or CSV row),
    mask readable, mask size equal to the photo size (GIF), RLE runs inside the photo (CSV).
    ``split="test"`` reads the unlabeled ``test/`` folder (no masks expected).
    """
    root = Path(root)
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found (expected the Kaggle layout {split}/<id>_<NN>.jpg)")

    labeled = split == "train"
    rles = _read_rle_csv(root / CSV_NAME) if labeled and mask_source == "csv" else {}
    photos: list[Photo] = []
    bad: list[tuple[Path, str]] = []
    # Masks of every photo file, good or bad, so a bad photo's mask is not also called an orphan.
    claimed = {f"{path.stem}_mask.gif" for path in folder.iterdir()}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):  # .DS_Store and friends are not photos
            continue
        try:
            photo = _check_photo(path, root, labeled=labeled, mask_source=mask_source, rles=rles)
        except DatasetError as exc:
            bad.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        photos.append(photo)

    if labeled and mask_source == "gif" and (root / "train_masks").is_dir():
        bad += [
            (mask, "mask without a photo (expected train/<id>_<NN>.jpg beside it)")
            for mask in sorted((root / "train_masks").iterdir())
            if not mask.name.startswith(".") and mask.name not in claimed
        ]

    if bad and not skip_bad:
        lines = [f"  {path}: {reason}" for path, reason in bad[:10]]
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DatasetError(
            f"{len(bad)} bad file(s) in {root} (use --skip-bad to skip and list them):\n"
            + "\n".join(lines)
            + more
        )
    skipped = [(_relative(path, root), reason) for path, reason in bad]
    return ScanResult(photos=photos, skipped=skipped)


def split_by_car(
    photos: Iterable[Photo], *, val_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[Photo]]:
    """Split photos into ``{"train", "validation"}`` by car id, all 16 views of a car on one side.

    The views of one car are near-duplicates, so a split by photo would leak. The car ids are sorted
    and shuffled with ``seed``, so the same ids and seed always give the same split. With at least
    two cars and ``0 < val_fraction < 1`` each side gets at least one car.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    photos = list(photos)
    cars = sorted({p.car_id for p in photos})
    n_val = round(len(cars) * val_fraction)
    if val_fraction > 0 and len(cars) >= 2:
        n_val = min(max(n_val, 1), len(cars) - 1)
    order = np.random.default_rng(seed).permutation(len(cars))
    val_cars = {cars[i] for i in order[:n_val]}
    key = lambda p: (p.car_id, p.angle)  # noqa: E731 - a sort key, named for readability
    return {
        "train": sorted((p for p in photos if p.car_id not in val_cars), key=key),
        "validation": sorted((p for p in photos if p.car_id in val_cars), key=key),
    }


def describe_split(splits: dict[str, list[Photo]]) -> str:
    """Counts per split (photos and cars), the line the CLI prints after splitting."""
    return ", ".join(
        f"{name}: {len(items)} photos of {len({p.car_id for p in items})} cars"
        for name, items in splits.items()
    )


def read_photo(path: str | Path) -> np.ndarray:
    """Decode a photo to uint8 RGB ``(H, W, 3)``; DatasetError naming the file when it cannot."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from None


def read_mask(photo: Photo, size: tuple[int, int]) -> np.ndarray:
    """The photo's mask as uint8 {0, 1} ``(H, W)``, checked against the photo size ``(H, W)``.

    Non-zero GIF indices count as car (Kaggle's GIFs hold exactly 0 and 1).
    """
    height, width = size
    if photo.mask_rle is not None:
        try:
            return rle_decode(photo.mask_rle, height, width)
        except ValueError as exc:
            raise DatasetError(f"{CSV_NAME} row {photo.name}: {exc}") from None
    if photo.mask_path is None:
        raise DatasetError(f"{photo.image_path}: no mask (unlabeled photo)")
    try:
        with Image.open(photo.mask_path) as image:
            mask = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{photo.mask_path}: cannot read mask ({exc})") from None
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != (height, width):
        raise DatasetError(
            f"{photo.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH), photo is {width}x{height}"
        )
    return (mask != 0).astype(np.uint8)


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x1918"`` -> ``(1280, 1918)``: height x width, the order NumPy and TF use."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be HEIGHTxWIDTH, e.g. 1280x1918, got {text!r}") from None
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16, got {text!r}")
    return height, width


def _check_photo(path: Path, root: Path, *, labeled: bool, mask_source: str, rles: dict[str, str]) -> Photo:
    """Validate one photo file (and its mask); DatasetError ``"<file>: <reason>"`` on failure."""
    match = PHOTO_NAME.match(path.name)
    if match is None:
        raise DatasetError(f"{path}: name does not match <12 hex chars>_<NN>.jpg")
    angle = int(match["angle"])
    if angle not in ANGLES:
        raise DatasetError(f"{path}: angle {angle} outside 01..16")
    width, height = _image_size(path, "image")
    photo = Photo(car_id=match["car"], angle=angle, image_path=path)
    if not labeled:
        return photo
    if mask_source == "csv":
        rle = rles.get(path.name)
        if rle is None:
            raise DatasetError(f"{path}: no row for {path.name} in {root / CSV_NAME}")
        _check_rle_fits(rle, height * width, path.name)
        return Photo(photo.car_id, angle, path, mask_rle=rle)
    mask_path = root / "train_masks" / f"{path.stem}_mask.gif"
    if not mask_path.is_file():
        raise DatasetError(f"{path}: mask missing (expected {mask_path})")
    mask_size = _image_size(mask_path, "mask")
    if mask_size != (width, height):
        raise DatasetError(
            f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} (WxH), photo {path.name} is {width}x{height}"
        )
    return Photo(photo.car_id, angle, path, mask_path=mask_path)


def _image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc})") from None


def _check_rle_fits(rle: str, size: int, name: str) -> None:
    """Cheap scan-time check of a CSV mask: well-formed pairs whose last run ends inside the photo."""
    fields = rle.split()
    if len(fields) % 2 or not all(f.isdigit() for f in fields[-2:]):
        raise DatasetError(f"{CSV_NAME} row {name}: malformed RLE (expected 'start length' pairs)")
    if fields and int(fields[-2]) + int(fields[-1]) - 1 > size:
        raise DatasetError(f"{CSV_NAME} row {name}: RLE runs past the end of the photo ({size} pixels)")


def _read_rle_csv(path: Path) -> dict[str, str]:
    """``img -> rle_mask`` from train_masks.csv (rows for photos not on disk are simply unused)."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found (needed for --mask-source csv)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"img", "rle_mask"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected header 'img,rle_mask', got {reader.fieldnames}")
        return {row["img"]: row["rle_mask"] or "" for row in reader}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
