"""The tf.data pipeline: shapes, dtypes, value ranges, determinism, and image/mask alignment."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer.data.layout import DatasetError
from trainer.data.pipeline import (
    PipelineConfig,
    augment,
    count_examples,
    list_shards,
    make_dataset,
    resize_pair,
)
from trainer.data.tfrecord import (
    decode_example,
    encode_coverage_png,
    encode_example,
    encode_jpeg,
    encode_mask_png,
)

SIZE = (64, 96)


def batches(folder: Path, training: bool, **overrides) -> list[tuple[np.ndarray, np.ndarray]]:
    config = PipelineConfig(image_size=SIZE, batch_size=8, deterministic=True, **overrides)
    return [(x.numpy(), y.numpy()) for x, y in make_dataset(folder, config, training=training)]


def test_list_shards_and_count(sample_tfrecords: Path, tmp_path: Path) -> None:
    shards = list_shards(sample_tfrecords / "train")
    assert [Path(s).name for s in shards] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert count_examples(sample_tfrecords / "train") == 32
    assert count_examples(sample_tfrecords / "validation") == 16
    # A SageMaker channel holds the split folder alone: no manifest, so the records are counted.
    channel = shutil.copytree(sample_tfrecords / "validation", tmp_path / "validation")
    assert count_examples(channel) == 16
    with pytest.raises(DatasetError, match=f"{tmp_path}: no \\*.tfrecord shards"):
        list_shards(tmp_path)


@pytest.mark.parametrize("training", [True, False])
def test_batches_have_the_contracted_shapes_and_values(sample_tfrecords: Path, training: bool) -> None:
    result = batches(sample_tfrecords / "train", training)
    assert [len(x) for x, _ in result] == [8, 8, 8, 8]
    for image, mask in result:
        assert image.dtype == np.float32 and image.shape[1:] == (*SIZE, 3)
        assert mask.dtype == np.float32 and mask.shape[1:] == (*SIZE, 1)
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.mean() > 0.02


def in_batch_order(folder: Path) -> list[tf.Tensor]:
    """The records of a two-shard split in the order evaluation batches hold them: interleave
    alternates between the two shards (cycle 2, block 1)."""
    records = [record for shard in list_shards(folder) for record in tf.data.TFRecordDataset(shard)]
    half = len(records) // 2
    return [records[i] for pair in zip(range(half), range(half, 2 * half), strict=True) for i in pair]


def test_evaluation_batches_are_the_resized_records_in_order(sample_tfrecords: Path) -> None:
    folder = sample_tfrecords / "validation"
    got = [(x, y) for xb, yb in batches(folder, training=False) for x, y in zip(xb, yb, strict=True)]
    assert len(got) == 16
    for (x, y), record in zip(got, in_batch_order(folder), strict=True):
        image, mask = resize_pair(*decode_example(record), SIZE)
        np.testing.assert_allclose(x, image.numpy() / 255.0, atol=1e-6)
        np.testing.assert_array_equal(y, mask.numpy())


def test_soft_masks_are_the_share_of_each_pixel_the_car_covers(sample_tfrecords: Path) -> None:
    """Full-size records shrunk 2x: each mask pixel is the mean of its 2x2 block of the record's
    mask (to the 1/255 it is kept at), and cut at 0.5 it is the default {0, 1} mask."""
    folder = sample_tfrecords / "validation"
    soft = [y for _, yb in batches(folder, training=False, soft_masks=True) for y in yb]
    exact = [y for _, yb in batches(folder, training=False) for y in yb]
    partial = 0
    for record, got, cut in zip(in_batch_order(folder), soft, exact, strict=True):
        full = decode_example(record)[1].numpy()[..., 0].astype(np.float32)
        share = full.reshape(SIZE[0], 2, SIZE[1], 2).mean(axis=(1, 3))
        np.testing.assert_allclose(got[..., 0], share, atol=0.5 / 255)
        np.testing.assert_array_equal(got >= 0.5, cut == 1)
        partial += np.count_nonzero((got > 0) & (got < 1))
    assert partial > 100


def test_soft_masks_come_from_the_records_coverage(tmp_path: Path) -> None:
    """Records converted with --size carry mask/coverage: at their own size it is the mask as is."""
    coverage = np.tile(np.linspace(0, 1, SIZE[1], dtype=np.float32), (SIZE[0], 1))
    levels = np.rint(coverage * 255)
    folder = tmp_path / "records"
    folder.mkdir()
    with tf.io.TFRecordWriter(str(folder / "r-00000-of-00001.tfrecord")) as writer:
        writer.write(
            encode_example(
                image_jpeg=encode_jpeg(np.full((*SIZE, 3), 120, np.uint8)),
                mask_png=encode_mask_png(levels >= 128),
                coverage_png=encode_coverage_png(coverage),
                car_id="0123456789ab",
                angle=1,
                height=SIZE[0],
                width=SIZE[1],
                original_height=4 * SIZE[0],
                original_width=4 * SIZE[1],
            )
        )
    [(_, soft)] = batches(folder, training=False, soft_masks=True)
    np.testing.assert_allclose(soft[0, ..., 0], levels / 255, atol=1e-6)
    [(_, exact)] = batches(folder, training=False)
    np.testing.assert_array_equal(exact[0, ..., 0], levels >= 128)


def test_deterministic_mode_repeats_order_and_augmentation(sample_tfrecords: Path) -> None:
    first = batches(sample_tfrecords / "train", training=True)
    second = batches(sample_tfrecords / "train", training=True)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    plain = batches(sample_tfrecords / "train", training=True, augment=False)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, plain, strict=True))


def test_repeat_and_cache(sample_tfrecords: Path) -> None:
    config = PipelineConfig(image_size=SIZE, batch_size=5, repeat=True, cache=True, seed=3)
    ds = make_dataset(sample_tfrecords / "validation", config, training=True)
    seen = list(ds.take(7))  # 35 examples from a split of 16: it repeats
    assert len(seen) == 7 and all(x.shape == (5, *SIZE, 3) for x, _ in seen)


def encoded_mask_dataset(tmp_path: Path, count: int = 12) -> Path:
    """Records whose photo *is* the mask (car white, background dark) so alignment can be checked."""
    folder = tmp_path / "aligned"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(folder / "aligned-00000-of-00001.tfrecord")) as writer:
        for i in range(count):
            yy, xx = np.mgrid[:128, :192]
            cx, cy, rx, ry = (
                rng.uniform(50, 140),
                rng.uniform(40, 90),
                rng.uniform(20, 50),
                rng.uniform(10, 30),
            )
            mask = ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) < 1) | ((xx > 150) & (yy < 30))
            image = np.repeat(np.where(mask, 200, 50).astype(np.uint8)[..., None], 3, axis=2)
            png = tf.io.encode_png(image).numpy()  # lossless, so photo and mask agree exactly
            writer.write(
                encode_example(
                    image_jpeg=png,
                    mask_png=encode_mask_png(mask),
                    car_id=f"{i:012x}",
                    angle=1,
                    height=128,
                    width=192,
                    original_height=128,
                    original_width=192,
                )
            )
    return folder


def edge_band(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of the mask's edge."""
    padded = np.pad(mask, 1, mode="edge")
    shifted = [
        padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ]
    return np.any(shifted, axis=0) & ~np.all(shifted, axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("soft", [False, True])
def test_augmentation_keeps_image_and_mask_aligned(tmp_path: Path, soft: bool) -> None:
    folder = encoded_mask_dataset(tmp_path)
    plain = np.concatenate([y for _, y in batches(folder, training=False, soft_masks=soft)])
    augmented = batches(folder, training=True, soft_masks=soft)
    images = np.concatenate([x for x, _ in augmented])
    masks = np.concatenate([y for _, y in augmented])
    if soft:  # resampled bilinearly: shares of pixels, some partial
        assert masks.min() >= 0.0 and masks.max() <= 1.0 and np.any((masks > 0) & (masks < 1))
    else:
        assert set(np.unique(masks)) <= {0.0, 1.0}
    moved = 0
    for image, mask, original in zip(images, masks, plain, strict=True):
        grey = image.mean(axis=-1)
        # Brightness/contrast/saturation are monotonic, so the photo still separates at mid-range.
        from_photo = grey > (grey.min() + grey.max()) / 2
        car = mask[..., 0] > 0.5
        # On the edge itself bilinear (photo) and nearest (mask) sampling may round differently;
        # everywhere else a misaligned pair (a flip or shift applied to one only) would disagree.
        disagree = np.mean((from_photo != car) & ~edge_band(car))
        assert disagree < 0.001, f"image and mask disagree on {disagree:.2%} of the pixels off the edge"
        moved += not np.array_equal(mask, original)
    assert moved >= len(images) // 2  # the geometric augmentation did move most masks


def test_augment_flips_both_together() -> None:
    image = tf.constant(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3)
    mask = tf.constant(np.tile((np.arange(6) < 2).astype(np.uint8), (4, 1))[..., None])
    flipped = 0
    for seed in range(20):
        out_image, out_mask = augment(image, mask, tf.constant([seed, 7], tf.int64))
        assert out_image.dtype == tf.float32 and out_mask.dtype == tf.float32
        left = out_mask.numpy()[:, :2].mean()
        flipped += left < 0.5
    assert 0 < flipped < 20


def test_random_crops_are_windows_of_the_photo_cut_with_their_mask(tmp_path: Path) -> None:
    """Progressive resizing's crop mode: each example is a window of the photo at the model size,
    its mask the same window, the windows in different places."""
    folder = encoded_mask_dataset(tmp_path)
    plain = [(x, y) for xb, yb in batches(folder, training=False) for x, y in zip(xb, yb, strict=True)]
    crops = [
        (x, y)
        for xb, yb in batches(folder, training=True, augment=False, crop_size=(32, 48))
        for x, y in zip(xb, yb, strict=True)
    ]
    assert len(crops) == len(plain) == 12
    offsets = set()
    for image, mask in crops:
        assert image.shape == (32, 48, 3) and mask.shape == (32, 48, 1)
        found = []
        for photo, photo_mask in plain:
            windows = np.lib.stride_tricks.sliding_window_view(photo, (32, 48, 3))[..., 0, :, :, :]
            for y, x in np.argwhere(np.all(windows == image, axis=(-3, -2, -1))):
                if np.array_equal(photo_mask[y : y + 32, x : x + 48], mask):
                    found.append((int(y), int(x)))
        assert found, "a crop is no window of any photo with its own mask"
        offsets.add(found[0])
    assert len(offsets) > 3
