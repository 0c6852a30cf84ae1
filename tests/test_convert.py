"""``carvana convert``: shards and manifest, exact masks, resize, resume, --verify, errors, and S3
against moto's server mode (a real HTTP endpoint)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.data.convert import main
from trainer.data.layout import read_photo
from trainer.data.storage import file_sha256
from trainer.data.tfrecord import SCHEMA_VERSION, parse_example


def records(folder: Path) -> list[dict]:
    """Every Example in a split folder, as numpy values (image and mask decoded)."""
    out = []
    for shard in sorted(folder.glob("*.tfrecord")):
        for serialized in tf.data.TFRecordDataset(str(shard)):
            features = {k: v.numpy() for k, v in parse_example(serialized).items()}
            features["image"] = tf.io.decode_jpeg(features["image/encoded"], channels=3).numpy()
            features["mask"] = tf.io.decode_png(features["mask/encoded"], channels=1).numpy()[..., 0]
            if features["mask/coverage"]:
                features["coverage"] = tf.io.decode_png(features["mask/coverage"], channels=1).numpy()[..., 0]
            out.append(features)
    return out


def source_mask(data: Path, features: dict) -> np.ndarray:
    name = f"{features['image/id'].decode()}_{features['image/angle']:02d}_mask.gif"
    return np.asarray(Image.open(data / "train_masks" / name))


def test_manifest_describes_the_shards(sample_tfrecords: Path, sample_data: Path) -> None:
    manifest = json.loads((sample_tfrecords / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["source"] == str(sample_data)
    assert manifest["options"] == {
        "size": None,
        "val_fraction": 0.34,
        "seed": 0,
        "mask_source": "gif",
        "shards_per_split": 2,
        "skip_bad": False,
    }
    assert manifest["skipped"] == []
    train, val = manifest["splits"]["train"], manifest["splits"]["validation"]
    assert (train["count"], val["count"]) == (32, 16)
    assert len(train["cars"]) == 2 and len(val["cars"]) == 1 and not set(train["cars"]) & set(val["cars"])
    names = [s["name"] for s in train["shards"] + val["shards"]]
    assert names == [
        "train/train-00000-of-00002.tfrecord",
        "train/train-00001-of-00002.tfrecord",
        "validation/validation-00000-of-00002.tfrecord",
        "validation/validation-00001-of-00002.tfrecord",
    ]
    for shard in train["shards"] + val["shards"]:
        assert file_sha256(sample_tfrecords / shard["name"]) == shard["sha256"]
    assert sum(s["count"] for s in train["shards"]) == 32
    assert (
        not list(sample_tfrecords.rglob("*.tmp"))
        and not (sample_tfrecords / ".convert-progress.json").exists()
    )


def test_records_hold_exact_masks_and_the_original_photos(sample_tfrecords: Path, sample_data: Path) -> None:
    examples = records(sample_tfrecords / "train") + records(sample_tfrecords / "validation")
    assert len(examples) == 48
    assert len({(e["image/id"], e["image/angle"]) for e in examples}) == 48
    for e in examples:
        name = f"{e['image/id'].decode()}_{e['image/angle']:02d}.jpg"
        assert e["image/format"] == b"jpeg"
        assert (
            e["image/encoded"] == (sample_data / "train" / name).read_bytes()
        )  # original bytes, not resized
        assert (
            e["image/height"],
            e["image/width"],
            e["image/original_height"],
            e["image/original_width"],
        ) == (128, 192, 128, 192)
        np.testing.assert_array_equal(e["mask"], source_mask(sample_data, e))
        photo = read_photo(sample_data / "train" / name).astype(int)
        # The same JPEG bytes through two decoders (TF's fast IDCT, Pillow's accurate one).
        difference = np.abs(e["image"].astype(int) - photo)
        assert difference.mean() < 2.5 and np.percentile(difference, 99) <= 8


@pytest.mark.slow
def test_resize_at_conversion_with_two_workers(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "--data",
            str(sample_data),
            "--out",
            str(out),
            "--size",
            "64x96",
            "--val-fraction",
            "0.34",
            "--workers",
            "2",
            "--mask-source",
            "csv",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["size"] == [64, 96] and manifest["options"]["mask_source"] == "csv"
    examples = records(out / "train")
    assert len(examples) == 32
    for e in examples[::5]:
        assert e["image"].shape == (64, 96, 3) and e["mask"].shape == (64, 96)
        assert (e["image/height"], e["image/original_height"]) == (64, 128)
        # Area-average then threshold: the mask edge stays sharp and in place.
        full = source_mask(sample_data, e).astype(np.float32)
        area = full.reshape(64, 2, 96, 2).mean(axis=(1, 3))
        np.testing.assert_array_equal(e["mask"], (area >= 0.5).astype(np.uint8))
        # Beside it, the share of each pixel the car covers (the soft training target), x255.
        np.testing.assert_array_equal(e["coverage"], np.rint(area * 255).astype(np.uint8))
        assert set(np.unique(e["coverage"])) - {0, 255}, "no pixel on the edge is partly covered"
        name = f"{e['image/id'].decode()}_{e['image/angle']:02d}.jpg"
        photo = Image.open(sample_data / "train" / name)
        reference = np.asarray(photo.resize((96, 64), Image.Resampling.LANCZOS), int)
        assert np.abs(e["image"].astype(int) - reference).mean() < 3.0  # re-encoded at JPEG quality 95


def test_resume_rewrites_only_the_deleted_shard(
    sample_tfrecords: Path, sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path(shutil.copytree(sample_tfrecords, tmp_path / "out"))
    before = (out / "manifest.json").read_text()
    victim = out / "train" / "train-00001-of-00002.tfrecord"
    victim.unlink()
    others = {p: p.stat().st_mtime_ns for p in out.rglob("*.tfrecord")}
    args = [
        "--data",
        str(sample_data),
        "--out",
        str(out),
        "--val-fraction",
        "0.34",
        "--shards-per-split",
        "2",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    assert "resuming: 3 of 4 shards already converted and verified" in capsys.readouterr().out
    assert victim.is_file() and (out / "manifest.json").read_text() == before
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())  # untouched
    # Changed options rebuild everything, and shards of the old layout are removed.
    assert main([*args[:-4], "--shards-per-split", "1", "--workers", "1"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert sorted(p.name for p in (out / "train").iterdir()) == ["train-00000-of-00001.tfrecord"]


def test_a_newer_schema_rewrites_the_shards(
    sample_tfrecords: Path,
    sample_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Shards written by an older ``carvana convert`` (no mask/coverage) are not kept on a re-run."""
    out = Path(shutil.copytree(sample_tfrecords, tmp_path / "out"))
    args = ["--data", str(sample_data), "--out", str(out), "--val-fraction", "0.34"]
    args += ["--shards-per-split", "2", "--workers", "1"]
    assert main(args) == 0
    assert "resuming: 4 of 4 shards already converted" in capsys.readouterr().out
    monkeypatch.setattr("trainer.data.convert.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert main(args) == 0
    assert "resuming" not in capsys.readouterr().out


def test_verify_reports_corrupted_and_missing_shards(
    sample_tfrecords: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path(shutil.copytree(sample_tfrecords, tmp_path / "out"))
    assert main(["--verify", "--out", str(out)]) == 0
    assert "all shards OK" in capsys.readouterr().out
    shard = out / "validation" / "validation-00000-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "train" / "train-00000-of-00002.tfrecord").unlink()
    assert main(["--verify", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "validation/validation-00000-of-00002.tfrecord: corrupted" in printed
    assert "train/train-00000-of-00002.tfrecord: missing" in printed
    assert "2 bad shard(s)" in printed


def test_bad_input_fails_with_the_file_name_or_is_skipped(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(sample_data, tmp_path / "data"))
    photo = sorted((data / "train").glob("*.jpg"))[3]
    (data / "train_masks" / f"{photo.stem}_mask.gif").unlink()
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carvana convert: error: 1 bad file(s)") and f"{photo.name}: mask missing" in err
    assert not (out / "manifest.json").exists()
    assert main(["--data", str(data), "--out", str(out), "--workers", "1", "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped train/{photo.name}: mask missing" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s[0] for s in manifest["skipped"]] == [f"train/{photo.name}"]
    assert sum(e["count"] for e in manifest["splits"].values()) == 47


def test_verify_without_manifest_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--verify", "--out", str(tmp_path)]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err
    assert main(["--data", str(tmp_path), "--out", str(tmp_path), "--size", "64"]) == 2
    assert "carvana convert: error: --size: size must be HEIGHTxWIDTH" in capsys.readouterr().err


def test_s3_destination(s3_bucket, sample_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client, bucket = s3_bucket
    out = f"s3://{bucket}/tfrecords/v1"
    args = [
        "--data",
        str(sample_data),
        "--out",
        out,
        "--val-fraction",
        "0.34",
        "--shards-per-split",
        "2",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [
        "tfrecords/v1/manifest.json",
        "tfrecords/v1/train/train-00000-of-00002.tfrecord",
        "tfrecords/v1/train/train-00001-of-00002.tfrecord",
        "tfrecords/v1/validation/validation-00000-of-00002.tfrecord",
        "tfrecords/v1/validation/validation-00001-of-00002.tfrecord",
    ]
    manifest = json.loads(client.get_object(Bucket=bucket, Key="tfrecords/v1/manifest.json")["Body"].read())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            body = client.get_object(Bucket=bucket, Key=f"tfrecords/v1/{shard['name']}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == shard["sha256"]
    capsys.readouterr()
    assert main(args) == 0  # everything already there: nothing re-uploaded
    assert "resuming: 4 of 4 shards" in capsys.readouterr().out
    assert main(["--verify", "--out", out]) == 0
    client.put_object(Bucket=bucket, Key="tfrecords/v1/train/train-00001-of-00002.tfrecord", Body=b"garbage")
    assert main(["--verify", "--out", out]) == 1
    assert "train/train-00001-of-00002.tfrecord: corrupted" in capsys.readouterr().out
