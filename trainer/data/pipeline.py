"""The tf.data input pipeline: TFRecord shards in a folder -> batches of (image, mask).

A split folder is all it needs, so the same code reads ``<out>/train`` locally and a SageMaker
channel (``SM_CHANNEL_TRAIN``). Steps, with AUTOTUNE throughout:

    shards (shuffled when training) -> interleave -> [cache] -> [shuffle] -> [repeat]
    -> parse + decode + resize to the model size -> [random crop] -> [augment image and mask
    together] -> batch -> prefetch

Augmentation draws its random numbers from stateless ops seeded per element (a seed pair from
``Dataset.random``), so ``deterministic=True`` gives the same order and the same augmentation on
every run, and the image and its mask always get the same geometric transform. Only horizontal
flips: a turntable photo mirrored is still a plausible photo; upside down it is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from trainer.data.layout import DatasetError
from trainer.data.tfrecord import decode_example

AUTOTUNE = tf.data.AUTOTUNE
MAX_SCALE = 0.1  # zoom in/out by up to 10 %
MAX_SHIFT = 0.05  # shift by up to 5 % of the height / width
BRIGHTNESS = 0.1
CONTRAST = (0.8, 1.2)
SATURATION = (0.8, 1.2)


@dataclass(frozen=True)
class PipelineConfig:
    """How batches are made: model input size (H, W), batch size, augmentation and ordering.

    ``image_size`` has no default: it is the model's input size, which the caller (training, preview,
    benchmark) owns; a second default here would silently disagree with it. ``crop_size``: training
    batches are random windows of that size cut from the photo at ``image_size`` (the car at the
    scale the model sees in use, at a fraction of a step's cost). ``soft_masks``: the mask is the
    share of each pixel the car covers (``mask/coverage``, or the area average of a larger mask),
    not that share cut at 0.5.
    """

    image_size: tuple[int, int]
    crop_size: tuple[int, int] | None = None
    batch_size: int = 8
    augment: bool = True
    shuffle_buffer: int = 256
    deterministic: bool = False
    seed: int = 0
    repeat: bool = False
    cache: bool = False
    soft_masks: bool = False


def list_shards(folder: str | Path) -> list[str]:
    """The ``*.tfrecord`` files in ``folder``, sorted; DatasetError naming the folder when none."""
    folder = Path(folder)
    # Hidden names are shards still being written (trainer.atomic's temporary files).
    found = folder.glob("*.tfrecord") if folder.is_dir() else []
    shards = sorted(str(p) for p in found if not p.name.startswith("."))
    if not shards:
        raise DatasetError(f"{folder}: no *.tfrecord shards (expected the output of 'carvana convert')")
    return shards


def count_examples(folder: str | Path) -> int:
    """Examples in a split folder: from manifest.json (beside or above it) when present, else counted."""
    folder = Path(folder)
    shards = list_shards(folder)
    for manifest_path in (folder / "manifest.json", folder.parent / "manifest.json"):
        if manifest_path.is_file():
            entry = json.loads(manifest_path.read_text()).get("splits", {}).get(folder.name)
            if entry and {Path(s["name"]).name for s in entry["shards"]} == {Path(s).name for s in shards}:
                return int(entry["count"])
    return sum(1 for _ in tf.data.TFRecordDataset(shards))


def make_dataset(folder: str | Path, config: PipelineConfig, *, training: bool) -> tf.data.Dataset:
    """Batches of (image float32 (B,H,W,3) in [0,1], mask float32 (B,H,W,1) in {0,1}, or in [0, 1]
    with ``soft_masks``).

    ``training=False``: no augmentation and no shuffling (validation, evaluation, preview).
    """
    shards = list_shards(folder)
    shuffle = training and config.shuffle_buffer > 1
    files = tf.data.Dataset.from_tensor_slices(shards)
    if shuffle:
        files = files.shuffle(
            len(shards), seed=config.seed, reshuffle_each_iteration=not config.deterministic
        )
    ordered = config.deterministic or not training
    ds = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(shards), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=ordered,
    )
    soft = config.soft_masks
    load = lambda record: _load(record, config.image_size, soft)  # noqa: E731
    if config.cache:  # decoded at model size, uint8: the cheapest form to keep in memory
        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=ordered).cache()
    if shuffle:
        ds = ds.shuffle(
            config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=not config.deterministic
        )
    if config.repeat:
        ds = ds.repeat()
    if not config.cache:
        ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=ordered)
    crop = config.crop_size if training else None
    if training and (config.augment or crop):
        seeds = tf.data.Dataset.random(
            seed=config.seed, rerandomize_each_iteration=not config.deterministic
        ).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, seed: _random_view(
                pair[0], pair[1], seed, crop=crop, augment_=config.augment, soft=soft
            ),
            num_parallel_calls=AUTOTUNE,
            deterministic=ordered,
        )
    else:
        ds = ds.map(
            lambda image, mask: _to_float(image, mask, soft),
            num_parallel_calls=AUTOTUNE,
            deterministic=ordered,
        )
    return ds.batch(config.batch_size, num_parallel_calls=AUTOTUNE, deterministic=ordered).prefetch(AUTOTUNE)


def resize_pair(
    image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int], *, soft: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resize to the model size: the photo antialiased, the mask area-averaged then cut at 0.5 so it
    stays {0, 1} with its edge where the car covers half a pixel. With ``soft`` the mask is a
    coverage in 0..255 (``decode_example(coverage=True)``) and stays one: area-averaged, not cut.
    Returns uint8 tensors."""
    height, width = size
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    mask = tf.image.resize(tf.cast(mask, tf.float32), size, method="area")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    mask = tf.cast(tf.round(mask), tf.uint8) if soft else tf.cast(mask >= 0.5, tf.uint8)
    return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width, 1))


def random_crop(
    image: tf.Tensor, mask: tf.Tensor, size: tuple[int, int], seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The same random ``size`` window of the image and its mask (``seed``: an int64 pair)."""
    stacked = tf.concat([image, tf.cast(mask, image.dtype)], axis=-1)
    window = tf.image.stateless_random_crop(stacked, [*size, stacked.shape[-1]], tf.cast(seed, tf.int64))
    return window[..., :3], tf.cast(window[..., 3:], mask.dtype)


def _random_view(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    *,
    crop: tuple[int, int] | None,
    augment_: bool,
    soft: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
    """A training example: cropped (``crop``) and/or augmented, with independent random numbers
    (without a crop, the augmentation's are those of ``seed`` itself, as before crops existed)."""
    if crop:
        crop_seed, seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        image, mask = random_crop(image, mask, crop, crop_seed)
    return augment(image, mask, seed, soft=soft) if augment_ else _to_float(image, mask, soft)


def augment(
    image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, *, soft: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, scale and shift applied to image and mask together; brightness, contrast and
    saturation to the image only. uint8 in, float32 in [0, 1] out; ``seed`` is an int64 pair. A
    ``soft`` mask (coverage 0..255) is resampled bilinearly, a {0, 1} one by its nearest pixel."""
    image, mask = _to_float(image, mask, soft)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    height, width = image.shape[0], image.shape[1]

    flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
    scale = tf.random.stateless_uniform([], seeds[1], 1 - MAX_SCALE, 1 + MAX_SCALE)
    shift = tf.random.stateless_uniform([2], seeds[2], -MAX_SHIFT, MAX_SHIFT) * [width, height]
    # Output pixel (x, y) samples input (a0*x + a1*y + a2, b0*x + b1*y + b2): flip about the centre,
    # zoom about the centre by `scale`, then shift.
    cx, cy = (width - 1) / 2, (height - 1) / 2
    sign = tf.where(flip, -1.0, 1.0)
    a0, b1 = sign / scale, 1 / scale
    transform = tf.stack(
        [a0, 0.0, cx - a0 * cx - shift[0] / scale, 0.0, b1, cy - b1 * cy - shift[1] / scale, 0.0, 0.0]
    )[None]

    def warp(tensor: tf.Tensor, interpolation: str) -> tf.Tensor:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=tensor[None],
            transforms=transform,
            output_shape=[height, width],
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="NEAREST",
        )[0]

    image = warp(image, "BILINEAR")
    mask = warp(mask, "BILINEAR" if soft else "NEAREST")
    image = tf.image.stateless_random_brightness(image, BRIGHTNESS, seeds[3])
    image = tf.image.stateless_random_contrast(image, *CONTRAST, seeds[4])
    image = tf.image.stateless_random_saturation(image, *SATURATION, seeds[5])
    return tf.clip_by_value(image, 0.0, 1.0), mask


def _load(record: tf.Tensor, size: tuple[int, int], soft: bool) -> tuple[tf.Tensor, tf.Tensor]:
    image, mask = decode_example(record, coverage=soft)
    return resize_pair(image, mask, size, soft=soft)


def _to_float(image: tf.Tensor, mask: tf.Tensor, soft: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 image and mask -> float32 in [0, 1] (a ``soft`` mask's 0..255 divided by 255)."""
    mask = tf.cast(mask, tf.float32)
    return tf.image.convert_image_dtype(image, tf.float32), mask / 255.0 if soft else mask
