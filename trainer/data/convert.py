"""``carvana convert``: a Kaggle-layout folder -> sharded TFRecords per split, locally or on S3.

Output (one folder per split, each a SageMaker channel)::

    <out>/train/train-00000-of-00004.tfrecord ...
    <out>/validation/validation-00000-of-00001.tfrecord
    <out>/manifest.json   counts, cars and sha256 per shard, source, options, skipped files

Why it is built this way:

* Shards are independent tasks in a process pool (all cores): decoding and re-encoding photos is
  the cost, and one shard per task keeps each writer sequential.
* Each shard is written under a temporary name and renamed, so a shard file is whole or absent.
* Each shard's record carries an ``inputs`` digest (its photo names and sizes plus the options);
  a re-run skips a shard whose stored sha256 matches the record for the same inputs (and the same
  ``tfrecord.SCHEMA_VERSION``), so an interrupted conversion resumes and changed options (or
  a newer schema) rebuild. Finished shards are recorded in
  ``.convert-progress.json`` as they complete; ``manifest.json`` is written last (after the
  uploads, for S3), so a manifest never names a shard that is not there.
* ``--verify`` re-hashes every shard named in the manifest and exits 1 when any is corrupt or
  missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from trainer.atomic import atomic_path
from trainer.command import UsageError, run_command
from trainer.data.layout import (
    MASK_SOURCES,
    DatasetError,
    Photo,
    describe_split,
    parse_size,
    read_mask,
    read_photo,
    scan_dataset,
    split_by_car,
)
from trainer.data.storage import file_sha256, opened
from trainer.data.tfrecord import (
    SCHEMA_VERSION,
    encode_coverage_png,
    encode_example,
    encode_jpeg,
    encode_mask_png,
)

MANIFEST = "manifest.json"
PROGRESS = ".convert-progress.json"
MANIFEST_VERSION = 1
PHOTOS_PER_SHARD = 128


@dataclass(frozen=True)
class ConvertOptions:
    """What changes the bytes of a shard (recorded in the manifest; part of each shard's digest)."""

    size: tuple[int, int] | None = None
    val_fraction: float = 0.15
    seed: int = 0
    mask_source: str = "gif"
    shards_per_split: int = 0  # 0 = one shard per PHOTOS_PER_SHARD photos
    skip_bad: bool = False


@dataclass(frozen=True)
class ConvertConfig:
    """``carvana convert`` arguments: source, destination, options, parallelism, verify mode."""

    data: Path | None
    out: str
    options: ConvertOptions
    workers: int = 0  # 0 = all cores
    verify: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConvertConfig:
        options = ConvertOptions(
            size=parse_size(args.size) if args.size else None,
            val_fraction=args.val_fraction,
            seed=args.seed,
            mask_source=args.mask_source,
            shards_per_split=args.shards_per_split,
            skip_bad=args.skip_bad,
        )
        return cls(Path(args.data) if args.data else None, args.out, options, args.workers, args.verify)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its name, photos and the digest identifying its inputs."""

    split: str
    name: str
    photos: tuple[Photo, ...]
    options: ConvertOptions
    inputs: str
    staging: Path


def shard_name(split: str, index: int, total: int) -> str:
    """``train/train-00000-of-00004.tfrecord`` (the path under the destination)."""
    return f"{split}/{split}-{index:05d}-of-{total:05d}.tfrecord"


def plan_shards(splits: dict[str, list[Photo]], options: ConvertOptions, staging: Path) -> list[ShardTask]:
    """Assign photos to shards: shuffled with the seed so each shard mixes cars and angles."""
    tasks = []
    for split, photos in splits.items():
        if not photos:
            continue
        total = options.shards_per_split or math.ceil(len(photos) / PHOTOS_PER_SHARD)
        total = min(total, len(photos))
        order = np.random.default_rng(options.seed).permutation(len(photos))
        for index in range(total):
            chosen = tuple(photos[i] for i in order[index::total])
            name = shard_name(split, index, total)
            tasks.append(
                ShardTask(split, name, chosen, options, _inputs_digest(name, chosen, options), staging)
            )
    return tasks


def convert(config: ConvertConfig) -> dict:
    """Run the conversion; returns the manifest written. Raises DatasetError / StorageError."""
    options = config.options
    if config.data is None:
        raise DatasetError("no --data folder to convert (only --verify works without one)")
    scan = scan_dataset(config.data, mask_source=options.mask_source, skip_bad=options.skip_bad)
    print(f"found {scan.summary()} in {config.data}")
    for file, reason in scan.skipped:
        print(f"  skipped {file}: {reason}")
    if not scan.photos:
        raise DatasetError(f"{config.data}: no usable photos in train/")
    splits = split_by_car(scan.photos, val_fraction=options.val_fraction, seed=options.seed)
    print(f"split by car: {describe_split(splits)}")

    with opened(config.out) as storage:
        tasks = plan_shards(splits, options, storage.staging)
        known = _known_shards(storage)
        done: dict[str, dict] = {}
        todo = []
        for task in tasks:
            record = known.get(task.name)
            if (
                record
                and record.get("inputs") == task.inputs
                and storage.stored_sha256(task.name) == record["sha256"]
            ):
                done[task.name] = record
            else:
                todo.append(task)
        if done:
            print(f"resuming: {len(done)} of {len(tasks)} shards already converted and verified")
        photos = sum(len(t.photos) for t in todo)
        with tqdm(
            total=photos, unit="photo", desc=f"converting to {storage.describe()}", file=sys.stderr
        ) as bar:
            for record, local in _run(todo, config.workers):
                storage.publish(local, record["name"], record["sha256"])
                done[record["name"]] = record
                storage.write_json(PROGRESS, {"shards": list(done.values())})
                bar.update(record["count"] + len(record.get("skipped", [])))

        skipped = list(scan.skipped) + [tuple(s) for r in done.values() for s in r.get("skipped", [])]
        manifest = _manifest(config, splits, tasks, done, skipped)
        storage.write_json(MANIFEST, manifest)
        storage.remove(PROGRESS)
        _remove_stale(storage, splits, set(done))
        print(
            f"wrote {storage.describe(MANIFEST)}: "
            + ", ".join(
                f"{split}: {entry['count']} examples in {len(entry['shards'])} shards"
                for split, entry in manifest["splits"].items()
            )
        )
    return manifest


def verify(out: str) -> list[tuple[str, str]]:
    """Re-hash every shard in ``out``'s manifest; returns ``(shard, problem)`` for each bad one."""
    with opened(out) as storage:
        manifest = storage.read_json(MANIFEST)
        if manifest is None:
            raise DatasetError(f"{storage.describe(MANIFEST)}: not found (nothing converted there yet)")
        problems = []
        shards = [s for entry in manifest["splits"].values() for s in entry["shards"]]
        for shard in tqdm(shards, unit="shard", desc="verifying", file=sys.stderr):
            actual = storage.sha256(shard["name"])
            if actual is None:
                problems.append((shard["name"], "missing"))
            elif actual != shard["sha256"]:
                problems.append(
                    (
                        shard["name"],
                        f"corrupted (sha256 {actual[:12]}..., manifest {shard['sha256'][:12]}...)",
                    )
                )
        return problems


def write_shard(task: ShardTask) -> tuple[dict, Path]:
    """Write one shard to the staging folder (temp name, then rename); returns its record and path.

    Runs in a worker process. With ``skip_bad`` a photo that fails to decode is left out and listed
    in the record's ``skipped``; otherwise its DatasetError ends the conversion.
    """
    path = task.staging / task.name
    count, skipped = 0, []
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for photo in task.photos:
            try:
                writer.write(encode_example(**_example_fields(photo, task.options.size)))
                count += 1
            except DatasetError as exc:
                if not task.options.skip_bad:
                    raise
                skipped.append((_relative_name(photo), str(exc)))
    record = {
        "name": task.name,
        "count": count,
        "sha256": file_sha256(path),
        "inputs": task.inputs,
        "cars": sorted({p.car_id for p in task.photos}),
    }
    if skipped:
        record["skipped"] = skipped
    return record, path


def _example_fields(photo: Photo, size: tuple[int, int] | None) -> dict:
    """Decode, check and (optionally) resize one photo and its mask into Example fields."""
    image = read_photo(photo.image_path)
    original_height, original_width = image.shape[:2]
    mask = read_mask(photo, (original_height, original_width))
    coverage = b""
    if size is None:
        jpeg = photo.image_path.read_bytes()
    else:
        image, area = _shrink_pair(image, mask, size)
        mask = area >= 0.5
        jpeg, coverage = encode_jpeg(image), encode_coverage_png(area)
    return {
        "image_jpeg": jpeg,
        "mask_png": encode_mask_png(mask),
        "coverage_png": coverage,
        "car_id": photo.car_id,
        "angle": photo.angle,
        "height": image.shape[0],
        "width": image.shape[1],
        "original_height": original_height,
        "original_width": original_width,
    }


def _shrink_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a photo (Lanczos, antialiased) and its mask (area average: the share of each output
    pixel the car covers, in [0, 1]; cut at 0.5 it is the stored mask, whose edge lands where the
    car covers at least half of a pixel)."""
    height, width = size
    photo = Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)
    area = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BOX)
    return np.asarray(photo), np.asarray(area)


def _run(tasks: list[ShardTask], workers: int):
    """Write shards in a spawn pool (TensorFlow is not fork-safe), or inline for one worker."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        yield from map(write_shard, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(write_shard, tasks)


def _remove_stale(storage, splits: dict[str, list[Photo]], keep: set[str]) -> None:
    """Delete shards of an earlier run with another shard count, which readers would otherwise mix in."""
    for split in splits:
        for name in storage.names(split):
            if name.endswith(".tfrecord") and name not in keep:
                print(f"removing stale shard {storage.describe(name)}")
                storage.remove(name)


def _known_shards(storage) -> dict[str, dict]:
    """Shard records from a previous run: the finished manifest, then an interrupted run's progress."""
    known = {}
    manifest = storage.read_json(MANIFEST) or {}
    for entry in manifest.get("splits", {}).values():
        known.update({s["name"]: s for s in entry.get("shards", [])})
    known.update({s["name"]: s for s in (storage.read_json(PROGRESS) or {}).get("shards", [])})
    return known


def _manifest(
    config: ConvertConfig,
    splits: dict[str, list[Photo]],
    tasks: list[ShardTask],
    done: dict[str, dict],
    skipped: list,
) -> dict:
    options = asdict(config.options)
    options["size"] = list(config.options.size) if config.options.size else None
    entries = {}
    for split, photos in splits.items():
        shards = [done[t.name] for t in tasks if t.split == split]
        entries[split] = {
            "count": sum(s["count"] for s in shards),
            "cars": sorted({p.car_id for p in photos}),
            "shards": [{k: v for k, v in s.items() if k != "skipped"} for s in shards],
        }
    return {
        "version": MANIFEST_VERSION,
        "source": str(config.data),
        "options": options,
        "splits": entries,
        "skipped": [list(s) for s in skipped],
    }


def _inputs_digest(name: str, photos: tuple[Photo, ...], options: ConvertOptions) -> str:
    """What a shard is made from: its name, options, and each photo's (and mask's) name and size."""

    def stat(path: Path | None) -> list:
        return [path.name, path.stat().st_size] if path is not None else []

    items = [[p.image_path.name, p.image_path.stat().st_size, stat(p.mask_path), p.mask_rle] for p in photos]
    payload = json.dumps([name, asdict(options), items, SCHEMA_VERSION], sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()


def _relative_name(photo: Photo) -> str:
    return f"{photo.image_path.parent.name}/{photo.image_path.name}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana convert",
        description="Convert a Kaggle-layout Carvana folder into sharded TFRecords per split "
        "(train/, validation/, manifest.json), to a local folder or s3://bucket/prefix.",
    )
    parser.add_argument(
        "--data", help="Kaggle-layout folder (train/, train_masks/ ...); not needed with --verify"
    )
    parser.add_argument("--out", required=True, help="destination folder or s3://bucket/prefix")
    parser.add_argument("--size", help="resize at conversion to HEIGHTxWIDTH, e.g. 256x384 (default: keep)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="fraction of cars for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split by car and the shard mix")
    parser.add_argument(
        "--shards-per-split",
        type=int,
        default=0,
        help=f"shards per split (0 = one per {PHOTOS_PER_SHARD} photos)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    parser.add_argument(
        "--mask-source",
        choices=MASK_SOURCES,
        default="gif",
        help="masks from train_masks/*.gif or train_masks.csv (Kaggle RLE)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad photos (missing/unreadable/mis-sized masks) and list them",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="only re-hash the shards in --out against its manifest; exit 1 on any problem",
    )
    return parser


def _command(args: argparse.Namespace) -> int:
    try:
        config = ConvertConfig.from_args(args)
    except ValueError as exc:
        raise UsageError(f"--size: {exc}") from None
    if not 0 <= config.options.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {config.options.val_fraction}")
    if config.verify:
        problems = verify(config.out)
        for name, problem in problems:
            print(f"{name}: {problem}")
        print(
            f"carvana convert: verify: {len(problems)} bad shard(s)"
            if problems
            else "carvana convert: verify: all shards OK"
        )
        return 1 if problems else 0
    if args.data is None:
        raise UsageError("--data is required (except with --verify)")
    convert(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
