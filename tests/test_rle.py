"""Kaggle RLE: the exact string format, round trips, speed, and the real train_masks.csv."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from PIL import Image

from trainer.data.rle import rle_decode, rle_encode


def test_encode_is_row_major_one_indexed_start_length_pairs() -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.uint8)
    # flat (C order): 0 1 1 | 1 0 0 | 0 0 1 -> runs start at pixel 2 (length 3) and pixel 9 (length 1)
    assert rle_encode(mask) == "2 3 9 1"


def test_empty_and_full_masks() -> None:
    assert rle_encode(np.zeros((4, 5), np.uint8)) == ""
    assert rle_encode(np.ones((4, 5), np.uint8)) == "1 20"
    assert rle_decode("", 4, 5).sum() == 0
    np.testing.assert_array_equal(rle_decode("1 20", 4, 5), np.ones((4, 5), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 96), (128, 191)])
def test_round_trip_random_masks(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.5, 0.95):
        mask = (rng.random(shape) < density).astype(np.uint8)
        decoded = rle_decode(rle_encode(mask), *shape)
        assert decoded.dtype == np.uint8 and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask)


def test_nonzero_values_count_as_car() -> None:
    assert rle_encode(np.array([[0, 255, 7, 0]])) == "2 2"
    assert rle_encode(np.array([[False, True]])) == "2 1"


def test_malformed_rle_is_rejected() -> None:
    with pytest.raises(ValueError, match="odd number"):
        rle_decode("1 2 3", 2, 2)
    with pytest.raises(ValueError, match="outside"):
        rle_decode("3 5", 2, 2)
    with pytest.raises(ValueError, match="non-integer"):
        rle_decode("1 x", 2, 2)
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 1)))


def test_encode_full_size_mask_is_fast() -> None:
    height, width = 1280, 1918
    yy, xx = np.mgrid[:height, :width]
    mask = (((xx - 960) / 800) ** 2 + ((yy - 700) / 380) ** 2 < 1).astype(np.uint8)
    rle_encode(mask)  # warm-up
    best = min(_timed(rle_encode, mask) for _ in range(5))
    assert best < 0.05, f"encode took {best * 1000:.1f} ms"


def _timed(func, *args) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def test_real_csv_rows_match_the_gifs(real_data) -> None:
    with (real_data / "train_masks.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((real_data / "train").glob("*.jpg")))
    for row in rows[:: max(len(rows) // 8, 1)]:
        gif = real_data / "train_masks" / row["img"].replace(".jpg", "_mask.gif")
        truth = np.asarray(Image.open(gif))
        height, width = truth.shape
        assert (height, width) == (1280, 1918)
        np.testing.assert_array_equal(rle_decode(row["rle_mask"], height, width), truth)
        assert rle_encode(truth) == row["rle_mask"]
