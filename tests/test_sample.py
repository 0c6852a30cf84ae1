"""``carvana make-sample``: Kaggle layout, masks agreeing with the CSV, turntable silhouettes, speed."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.layout import scan_dataset
from trainer.data.sample import main
from trainer.data.synthetic_car import make_cars, render
from trainer.wire import rle_decode


def test_layout_is_kaggles(sample_data: Path) -> None:
    photos = sorted(p.name for p in (sample_data / "train").iterdir())
    masks = sorted(p.name for p in (sample_data / "train_masks").iterdir())
    assert len(photos) == 48 and all(re.fullmatch(r"[0-9a-f]{12}_(0[1-9]|1[0-6])\.jpg", n) for n in photos)
    assert masks == [n.replace(".jpg", "_mask.gif") for n in photos]
    with Image.open(sample_data / "train" / photos[0]) as photo:
        assert (photo.format, photo.mode, photo.size) == ("JPEG", "RGB", (192, 128))
    with Image.open(sample_data / "train_masks" / masks[0]) as mask:
        assert (mask.format, mask.mode, mask.size) == ("GIF", "P", (192, 128))
        assert set(np.unique(np.asarray(mask))) == {0, 1}
        assert mask.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
    metadata = list(csv.reader((sample_data / "metadata.csv").open()))
    assert metadata[0] == ["id", "year", "make", "model", "trim1", "trim2"] and len(metadata) == 4
    assert (sample_data / "metadata.csv").read_text().startswith('"id","year"')
    assert not scan_dataset(sample_data).skipped


def test_csv_rows_encode_the_gifs(sample_data: Path) -> None:
    rows = list(csv.DictReader((sample_data / "train_masks.csv").open()))
    assert [r["img"] for r in rows] == sorted(p.name for p in (sample_data / "train").iterdir())
    for row in rows:
        gif = np.asarray(Image.open(sample_data / "train_masks" / row["img"].replace(".jpg", "_mask.gif")))
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], 128, 192), gif)


def test_silhouette_changes_with_the_turntable_angle() -> None:
    spec = make_cars(1, seed=5)[0]
    widths, heights = {}, {}
    for angle in (1, 3, 5, 9, 13):
        _, mask = render(spec, angle, 256, 384)
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        widths[angle], heights[angle] = cols[-1] - cols[0], rows[-1] - rows[0]
    assert widths[5] > 1.8 * widths[1] and widths[13] > 1.8 * widths[9]  # side long, front/back short
    assert widths[1] < widths[3] < widths[5]


def test_car_pixels_are_car_and_background_is_backdrop() -> None:
    spec = make_cars(1, seed=1)[0]
    photo, mask = render(spec, 3, 256, 384)
    assert photo.shape == (256, 384, 3) and mask.shape == (256, 384) and set(np.unique(mask)) == {0, 1}
    assert 0.05 < mask.mean() < 0.6
    corner = photo[:20, :20].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(corner, spec.backdrop, atol=20)


def test_some_cars_have_the_backdrop_colour() -> None:
    cars = make_cars(8, seed=0)
    same = [c for c in cars if c.paint == c.backdrop]
    assert len(same) == 2
    photo, mask = render(same[0], 5, 256, 384)
    # The hard case: most of the body (glass and tyres aside) is within a few levels of the wall.
    body = np.percentile(photo[mask == 1].astype(float), 75, axis=0)
    wall = photo[:20, :20].reshape(-1, 3).mean(axis=0)
    assert np.abs(body - wall).max() < 40


def test_varied_shapes_and_colours_and_deterministic_ids() -> None:
    cars = make_cars(12, seed=3)
    assert len({c.model for c in cars}) >= 4 and len({c.paint for c in cars}) >= 5
    assert len({c.car_id for c in cars}) == 12
    assert [c.car_id for c in make_cars(12, seed=3)] == [c.car_id for c in cars]


@pytest.mark.slow
def test_full_size_car_in_kaggle_layout(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--cars", "1", "--workers", "1"]) == 0
    photo = next((tmp_path / "train").glob("*_05.jpg"))
    assert Image.open(photo).size == (1918, 1280)
    assert len(list((tmp_path / "train").glob("*.jpg"))) == 16
    masks = sorted((tmp_path / "train_masks").glob("*_mask.gif"))
    assert [m.name.removesuffix("_mask.gif") for m in masks] == sorted(
        p.stem for p in (tmp_path / "train").glob("*.jpg")
    )


def test_cli_rejects_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--size", "big"]) == 2
    assert capsys.readouterr().err == (
        "carvana make-sample: error: --size: size must be HEIGHTxWIDTH, e.g. 1280x1918, got 'big'\n"
    )
    assert not (tmp_path / "train").exists()
