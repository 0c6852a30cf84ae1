"""Destinations for converted shards: a local folder and S3 (moto server) with multipart upload."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trainer.data.storage import LocalStorage, S3Storage, StorageError, file_sha256, open_storage


def test_local_storage(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "out")
    assert isinstance(storage, LocalStorage) and storage.staging == tmp_path / "out"
    shard = storage.staging / "train" / "a.tfrecord"
    shard.parent.mkdir()
    shard.write_bytes(b"records")
    storage.publish(shard, "train/a.tfrecord", file_sha256(shard))
    assert storage.stored_sha256("train/a.tfrecord") == hashlib.sha256(b"records").hexdigest()
    assert storage.sha256("train/missing.tfrecord") is None
    storage.write_json("manifest.json", {"version": 1})
    assert storage.read_json("manifest.json") == {"version": 1} and storage.read_json("nope.json") is None
    assert storage.names("train") == ["train/a.tfrecord"] and storage.names("validation") == []
    storage.remove("train/a.tfrecord")
    assert storage.names("train") == []


def test_s3_url_parsing() -> None:
    with pytest.raises(StorageError, match="expected s3://bucket/prefix"):
        open_storage("s3:///prefix")


def test_s3_multipart_upload_and_checksums(s3_bucket, tmp_path: Path) -> None:
    client, bucket = s3_bucket
    storage = open_storage(f"s3://{bucket}/big", multipart_threshold=5 * 1024 * 1024)
    assert isinstance(storage, S3Storage) and storage.describe("x") == f"s3://{bucket}/big/x"
    payload = os.urandom(11 * 1024 * 1024)
    local = storage.staging / "shard.tfrecord"
    local.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    storage.publish(local, "train/shard.tfrecord", digest)
    head = client.head_object(Bucket=bucket, Key="big/train/shard.tfrecord")
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts: a multipart upload
    assert storage.stored_sha256("train/shard.tfrecord") == digest == storage.sha256("train/shard.tfrecord")
    assert storage.names("train") == ["train/shard.tfrecord"] and not local.exists()
    assert storage.stored_sha256("train/other.tfrecord") is None
    storage.close()
    assert not storage.staging.exists()


def test_s3_missing_bucket_is_a_clear_error(s3_bucket) -> None:
    storage = S3Storage("no-such-bucket-here", "p")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here/p/manifest\.json"):
        storage.write_json("manifest.json", {})
    storage.close()
