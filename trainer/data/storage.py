"""Where converted TFRecords go: a local folder or ``s3://bucket/prefix``.

Both kinds expose the same small interface so ``convert`` is written once:

* ``staging``: a local folder where shards are written (the destination itself when local; a
  temporary folder when S3, since TFRecordWriter writes files);
* ``publish(local, name)``: make a finished staged file visible under ``name`` (a no-op locally,
  an upload for S3: boto3's managed transfer with multipart above ``multipart_threshold``);
* ``stored_sha256(name)``: the checksum of what is stored under ``name`` (None when absent), for
  resuming; ``sha256(name)`` re-reads the stored bytes for ``--verify``;
* ``read_json`` / ``write_json`` for the manifest, ``remove``.

S3 uses ``boto3.client("s3")``, which reads ``AWS_ENDPOINT_URL`` (and ``AWS_ENDPOINT_URL_S3``)
itself, so a local S3 server (moto, MinIO) needs no code path of its own. Uploads store the
shard's sha256 as object metadata so a resume needs only a HEAD request per shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainer.atomic import write_json
from trainer.command import CarvanaError

CHUNK = 8 * 1024 * 1024


class StorageError(CarvanaError, RuntimeError):
    """The destination cannot be read or written; the message names the location."""


class Storage(Protocol):
    """A destination for shards and the manifest (see the module docstring)."""

    staging: Path

    def describe(self, name: str = "") -> str: ...
    def publish(self, local: Path, name: str, sha256: str) -> None: ...
    def stored_sha256(self, name: str) -> str | None: ...
    def sha256(self, name: str) -> str | None: ...
    def read_json(self, name: str) -> Any | None: ...
    def write_json(self, name: str, data: Any) -> None: ...
    def remove(self, name: str) -> None: ...
    def names(self, folder: str) -> list[str]: ...


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (shards can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LocalStorage:
    """A local folder: shards are written in place (temp name, then renamed by the writer)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.staging = self.root

    def describe(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def publish(self, local: Path, name: str, sha256: str) -> None:
        target = self.root / name
        if Path(local).resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)

    def stored_sha256(self, name: str) -> str | None:
        return self.sha256(name)

    def sha256(self, name: str) -> str | None:
        path = self.root / name
        return file_sha256(path) if path.is_file() else None

    def read_json(self, name: str) -> Any | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.root / name, data, indent=1)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def names(self, folder: str) -> list[str]:
        """Names (relative to the root) of the files directly in ``folder``."""
        path = self.root / folder
        return sorted(f"{folder}/{p.name}" for p in path.iterdir() if p.is_file()) if path.is_dir() else []


class S3Storage:
    """``s3://bucket/prefix`` through boto3 (AWS_ENDPOINT_URL honoured by boto3 itself)."""

    def __init__(
        self, bucket: str, prefix: str, *, multipart_threshold: int = 64 * 1024 * 1024, client: Any = None
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or boto3.client("s3")
        chunk = max(multipart_threshold, 5 * 1024 * 1024)  # S3's minimum part size is 5 MiB
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=chunk, max_concurrency=8
        )
        self.staging = Path(tempfile.mkdtemp(prefix="carvana-convert-"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(name)}" if name or self.prefix else f"s3://{self.bucket}"

    def publish(self, local: Path, name: str, sha256: str) -> None:
        with self._errors(name):
            self.client.upload_file(
                str(local),
                self.bucket,
                self.key(name),
                Config=self.transfer,
                ExtraArgs={"Metadata": {"sha256": sha256}},
            )
        Path(local).unlink()

    def stored_sha256(self, name: str) -> str | None:
        """The checksum recorded at upload (a HEAD request), None when the object is absent."""
        head = self._head(name)
        return None if head is None else head.get("Metadata", {}).get("sha256")

    def sha256(self, name: str) -> str | None:
        """Download and hash the stored bytes (what ``--verify`` trusts, unlike the metadata)."""
        if self._head(name) is None:
            return None
        digest = hashlib.sha256()
        with self._errors(name):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def read_json(self, name: str) -> Any | None:
        if self._head(name) is None:
            return None
        with self._errors(name):
            return json.loads(self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read())

    def write_json(self, name: str, data: Any) -> None:
        with self._errors(name):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(name),
                ContentType="application/json",
                Body=(json.dumps(data, indent=1) + "\n").encode(),
            )

    def remove(self, name: str) -> None:
        with self._errors(name):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def names(self, folder: str) -> list[str]:
        """Names (relative to the prefix) of the objects directly under ``folder/``."""
        start = len(self.key(""))
        with self._errors(folder):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(f"{folder}/"), Delimiter="/"
            )
            return sorted(item["Key"][start:] for page in pages for item in page.get("Contents", []))

    def close(self) -> None:
        """Delete the local staging folder."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def _head(self, name: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise StorageError(f"{self.describe(name)}: {exc}") from None

    @contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise StorageError(f"{self.describe(name)}: {exc}") from None


def open_storage(destination: str | Path, **options: Any) -> LocalStorage | S3Storage:
    """``s3://bucket/prefix`` -> S3Storage, anything else -> LocalStorage (the folder is created)."""
    text = str(destination)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"{text}: expected s3://bucket/prefix")
        return S3Storage(bucket, prefix, **options)
    root = Path(text)
    root.mkdir(parents=True, exist_ok=True)
    return LocalStorage(root)


@contextmanager
def opened(destination: str | Path, **options: Any) -> Iterator[LocalStorage | S3Storage]:
    """``open_storage`` that also removes an S3 staging folder on the way out."""
    storage = open_storage(destination, **options)
    try:
        yield storage
    finally:
        if isinstance(storage, S3Storage):
            storage.close()
