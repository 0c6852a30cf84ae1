"""The Kaggle-layout reader: what it finds, each bad-input case, --skip-bad, and the split by car."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.layout import (
    DatasetError,
    Photo,
    describe_split,
    parse_size,
    read_mask,
    read_photo,
    scan_dataset,
    split_by_car,
)


@pytest.fixture()
def dataset(sample_data: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic sample that a test may damage."""
    return Path(shutil.copytree(sample_data, tmp_path / "data"))


def first_photo(root: Path) -> Path:
    return sorted((root / "train").glob("*.jpg"))[0]


def test_scan_finds_every_photo_with_its_mask(sample_data: Path) -> None:
    result = scan_dataset(sample_data)
    assert len(result.photos) == 48 and len(result.cars) == 3 and result.skipped == []
    assert result.summary() == "48 photos of 3 cars"
    photo = result.photos[0]
    assert len(photo.car_id) == 12 and photo.angle == 1 and photo.labeled
    assert photo.mask_path == sample_data / "train_masks" / f"{photo.car_id}_01_mask.gif"
    assert sorted(p.angle for p in result.photos if p.car_id == photo.car_id) == list(range(1, 17))


def test_csv_mask_source_gives_the_same_masks(sample_data: Path) -> None:
    gif = scan_dataset(sample_data).photos
    rle = scan_dataset(sample_data, mask_source="csv").photos
    assert [p.name for p in gif] == [p.name for p in rle]
    for a, b in zip(gif[::7], rle[::7], strict=True):
        assert b.mask_path is None and b.mask_rle
        np.testing.assert_array_equal(read_mask(a, (128, 192)), read_mask(b, (128, 192)))


def test_read_photo_and_mask(sample_data: Path) -> None:
    photo = scan_dataset(sample_data).photos[0]
    image = read_photo(photo.image_path)
    assert image.dtype == np.uint8 and image.shape == (128, 192, 3)
    mask = read_mask(photo, image.shape[:2])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}


def test_missing_mask_fails_naming_the_file_or_is_skipped(dataset: Path) -> None:
    photo = first_photo(dataset)
    (dataset / "train_masks" / f"{photo.stem}_mask.gif").unlink()
    with pytest.raises(DatasetError, match=f"{photo.name}: mask missing"):
        scan_dataset(dataset)
    result = scan_dataset(dataset, skip_bad=True)
    assert len(result.photos) == 47
    assert result.skipped == [
        (f"train/{photo.name}", f"mask missing (expected {dataset}/train_masks/{photo.stem}_mask.gif)")
    ]
    assert "skipped 1 bad file(s)" in result.summary()


def test_unreadable_image_fails_naming_the_file_or_is_skipped(dataset: Path) -> None:
    photo = first_photo(dataset)
    photo.write_bytes(b"this is not a JPEG")
    with pytest.raises(DatasetError, match=f"{photo.name}: cannot read image"):
        scan_dataset(dataset)
    result = scan_dataset(dataset, skip_bad=True)
    assert [file for file, _ in result.skipped] == [f"train/{photo.name}"]
    with pytest.raises(DatasetError, match=f"{photo.name}: cannot read image"):
        read_photo(photo)


def test_mask_size_differing_from_photo_fails_naming_the_mask(dataset: Path) -> None:
    photo = first_photo(dataset)
    mask_path = dataset / "train_masks" / f"{photo.stem}_mask.gif"
    Image.open(mask_path).resize((96, 64)).save(mask_path)
    with pytest.raises(
        DatasetError, match=rf"{mask_path.name}: mask is 96x64 \(WxH\), photo {photo.name} is 192x128"
    ):
        scan_dataset(dataset)
    skipped = scan_dataset(dataset, skip_bad=True).skipped
    assert skipped[0][0] == f"train/{photo.name}" and "mask is 96x64" in skipped[0][1]


def test_unreadable_mask_and_orphan_mask_and_bad_name(dataset: Path) -> None:
    photos = sorted((dataset / "train").glob("*.jpg"))
    (dataset / "train_masks" / f"{photos[0].stem}_mask.gif").write_bytes(b"GIF? no")
    photos[1].rename(dataset / "train" / "not-a-carvana-name.jpg")
    with pytest.raises(DatasetError) as error:
        scan_dataset(dataset)
    message = str(error.value)
    assert "3 bad file(s)" in message
    assert f"{photos[0].stem}_mask.gif: cannot read mask" in message
    assert "not-a-carvana-name.jpg: name does not match" in message
    assert f"{photos[1].stem}_mask.gif: mask without a photo" in message
    result = scan_dataset(dataset, skip_bad=True)
    # Nothing dropped silently: every file is either a photo found or listed as skipped.
    assert len(result.photos) + len(result.skipped) == 48 + 1


def test_csv_mask_source_reports_missing_and_malformed_rows(dataset: Path) -> None:
    csv_path = dataset / "train_masks.csv"
    lines = csv_path.read_text().splitlines()
    name0 = lines[1].split(",")[0]
    name1 = lines[2].split(",")[0]
    lines = [lines[0], f"{name1},1 2 3", *lines[3:]]
    csv_path.write_text("\n".join(lines) + "\n")
    result = scan_dataset(dataset, mask_source="csv", skip_bad=True)
    reasons = dict(result.skipped)
    assert reasons[f"train/{name0}"].startswith(f"no row for {name0}")
    assert "malformed RLE" in reasons[f"train/{name1}"]
    csv_path.write_text("img,rle\n")
    with pytest.raises(DatasetError, match=r"train_masks\.csv: expected header 'img,rle_mask'"):
        scan_dataset(dataset, mask_source="csv")


def test_unlabeled_test_folder(dataset: Path) -> None:
    (dataset / "test").mkdir()
    for path in sorted((dataset / "train").glob("*.jpg"))[:5]:
        shutil.copy(path, dataset / "test" / path.name)
    result = scan_dataset(dataset, split="test")
    assert len(result.photos) == 5 and not any(p.labeled for p in result.photos)
    with pytest.raises(DatasetError, match="no mask"):
        read_mask(result.photos[0], (128, 192))


def test_missing_folder_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path}/train: folder not found"):
        scan_dataset(tmp_path)
    with pytest.raises(ValueError, match="mask_source"):
        scan_dataset(tmp_path, mask_source="png")
    assert parse_size("256x384") == (256, 384)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("256")


def fake_photos(cars: int) -> list[Photo]:
    return [
        Photo(f"{car:012x}", angle, Path(f"train/{car:012x}_{angle:02d}.jpg"))
        for car in range(cars)
        for angle in range(1, 17)
    ]


def test_split_by_car_keeps_all_views_of_a_car_together() -> None:
    photos = fake_photos(20)
    splits = split_by_car(photos, val_fraction=0.15, seed=0)
    train_cars = {p.car_id for p in splits["train"]}
    val_cars = {p.car_id for p in splits["validation"]}
    assert not train_cars & val_cars
    assert len(val_cars) == 3 and len(train_cars) == 17
    assert len(splits["train"]) + len(splits["validation"]) == 320
    assert describe_split(splits) == "train: 272 photos of 17 cars, validation: 48 photos of 3 cars"


def test_split_is_deterministic_and_depends_on_seed() -> None:
    photos = fake_photos(20)
    first = split_by_car(photos, val_fraction=0.2, seed=1)
    again = split_by_car(list(reversed(photos)), val_fraction=0.2, seed=1)
    assert first == again
    others = {
        frozenset(p.car_id for p in split_by_car(photos, val_fraction=0.2, seed=s)["validation"])
        for s in range(5)
    }
    assert len(others) > 1


def test_split_edge_cases() -> None:
    assert len({p.car_id for p in split_by_car(fake_photos(2), val_fraction=0.01)["validation"]}) == 1
    assert split_by_car(fake_photos(3), val_fraction=0.0)["validation"] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_car(fake_photos(3), val_fraction=1.0)


def test_real_data_layout(real_data: Path) -> None:
    result = scan_dataset(real_data)
    assert len(result.photos) == 768 and len(result.cars) == 48 and not result.skipped
    splits = split_by_car(result.photos, val_fraction=0.15, seed=0)
    assert len({p.car_id for p in splits["validation"]}) == 7
