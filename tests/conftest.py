"""Shared pytest fixtures.

Add fixtures here; never change the meaning of an existing one (other test files rely on it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where moto's request recorder (``moto_recording``) writes; read by moto when it is first imported,
# so set before any test imports it. Outside the checkout.
_RECORDING = Path(tempfile.gettempdir()) / f"moto-recording-{os.getpid()}.jsonl"
os.environ.setdefault("MOTO_RECORDER_FILEPATH", str(_RECORDING))
# The real Carvana sample lives beside the checkout and is never copied into it.
REAL_DATA = Path(os.environ.get("CARVANA_REAL_DATA", REPO.parent / "shared" / "carvana"))

# The tiers, decided here in one place: `make test-fast` runs `-m "not slow"` (the unit tier, about a
# minute), `make test` (CI) runs everything. A test is slow when it needs a process or a server that
# takes seconds to start (these fixtures), reads the real photos, or its module builds, trains or
# exports TensorFlow models (these modules); a single slow test elsewhere carries @pytest.mark.slow.
SLOW_FIXTURES = frozenset(
    {
        "moto_server",
        "s3_bucket",
        "endpoint_factory",
        "served_endpoint",
        "aws_container_endpoint",
        "real_data",
        "tiny_saved_model",
        "packaged_model",
        "sample_tfrecords",
    }
)
SLOW_MODULES = frozenset(
    {
        "test_notebook",
        "test_train",
        "test_debugger",
        "test_export",
        "test_predict",
        "test_evaluate",
        "test_template",
        "test_offline_online",
        "test_unet",
        "test_encoders",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: servers, training or real data (not in make test-fast)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in SLOW_MODULES or SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (for bench/, lambda/, notebooks/)."""
    return REPO


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/carvana`` (Kaggle layout); the test is skipped when it is absent."""
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"real Carvana data not found at {REAL_DATA}")
    return REAL_DATA


# --- synthetic data (DATA part) ------------------------------------------------------------------
# A tiny synthetic set in the Kaggle layout and its TFRecords, made once per test session.
# 3 cars x 16 views at 128x192; the split puts 2 cars (32 photos) in train and 1 car (16 photos)
# in validation, each split in 2 shards, photos at their drawn size (no --size).
SAMPLE_CARS, SAMPLE_SIZE = 3, (128, 192)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Kaggle-layout folder (train/, train_masks/, train_masks.csv, metadata.csv)."""
    from trainer.data.sample import make_sample

    out = tmp_path_factory.mktemp("carvana-sample")
    return make_sample(out, SAMPLE_CARS, *SAMPLE_SIZE, seed=0, workers=1)


@pytest.fixture(scope="session")
def sample_tfrecords(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``carvana convert`` output of ``sample_data``: <dir>/train/*.tfrecord, <dir>/validation/*.tfrecord,
    <dir>/manifest.json. Treat it as read-only (it is shared by every test in the session)."""
    from trainer.data.convert import ConvertConfig, ConvertOptions, convert

    out = tmp_path_factory.mktemp("carvana-tfrecords")
    options = ConvertOptions(val_fraction=0.34, seed=0, shards_per_split=2)
    convert(ConvertConfig(data=sample_data, out=str(out), options=options, workers=1))
    return out


@pytest.fixture(scope="session")
def moto_server() -> str:
    """A real HTTP S3/AWS endpoint (moto in server mode on 127.0.0.1, a free port) for the session.

    Returns its URL; point boto3 at it with ``monkeypatch.setenv("AWS_ENDPOINT_URL", url)`` plus fake
    credentials and a region, as the ``s3_bucket`` fixture does.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fake credentials, us-east-1, every AWS client pointed at moto; a fresh bucket's name.

    Set in the environment, so child processes (a notebook's kernel) reach moto too.
    """
    import uuid

    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
    ):
        monkeypatch.delenv(name, raising=False)
    bucket = f"carvana-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def moto_recording(moto_server: str) -> Iterator[Callable[[], list[tuple[str, dict]]]]:
    """``read()`` -> the AWS requests moto's server received since the fixture began, from any process.

    Uses moto's own recorder (``/moto-api/recorder/...``), which logs each request as it arrives
    over HTTP: how a test sees what a separate process (a notebook's kernel) sent. Each entry is
    ``(operation, JSON body)``: the ``X-Amz-Target`` operation of JSON APIs (``CreateTrainingJob``)
    or ``METHOD path`` otherwise (``POST /endpoints/<name>/invocations``).
    """
    import base64
    import json
    import urllib.parse
    import urllib.request

    def call(action: str) -> bytes:
        request = urllib.request.Request(f"{moto_server}/moto-api/recorder/{action}", method="POST", data=b"")
        with urllib.request.urlopen(request) as response:
            return response.read()

    def read() -> list[tuple[str, dict]]:
        with urllib.request.urlopen(f"{moto_server}/moto-api/recorder/download-recording") as response:
            lines = response.read().decode().splitlines()
        entries = []
        for entry in map(json.loads, filter(None, lines)):
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode("utf-8", "replace")
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            target = headers.get("x-amz-target", "")
            path = urllib.parse.urlsplit(entry["url"]).path
            name = target.split(".")[-1] if target else f"{entry['method']} {path}"
            try:
                parsed = json.loads(body) if body.startswith("{") else {"raw": body}
            except ValueError:
                parsed = {"raw": body}
            entries.append((name, parsed))
        return entries

    call("reset-recording")
    call("start-recording")
    yield read
    call("stop-recording")


# --- served model (SERVE part) -------------------------------------------------------------------
# A real exported U-Net (untrained, tiny) and `carvana serve` running it in a subprocess, shared by
# the serving, Lambda and gateway tests.
TINY_MODEL_SIZE = (32, 48)


@pytest.fixture(scope="session")
def tiny_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny U-Net (depth 2, 4 filters, input 32x48) exported by trainer.export.

    Returns the model_dir holding ``unet/1/`` (what a training job leaves in SM_MODEL_DIR).
    """
    import keras

    from trainer.export import export_saved_model
    from trainer.model.unet import build_unet

    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    export_saved_model(build_unet(depth=2, base_filters=4), out, TINY_MODEL_SIZE)
    return out


def _run_endpoint(
    model: Path, *args: str, log_dir: Path, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[str]:
    """``carvana serve`` on a free port; its log is ``log_dir/serve-<port>.log``."""
    from local_aws.endpoint.process import free_port, running_endpoint

    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    # 240 s: on 2 shared CPU cores a worker importing TensorFlow and loading the model is slow.
    return running_endpoint(model, *args, port=port, log_path=log_path, env=env, timeout_s=240.0)


@pytest.fixture(scope="session")
def endpoint_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with endpoint_factory(model, "--batching", env={...}) as url:`` runs another ``carvana serve``.

    The server's log is kept in a temporary folder and quoted when it fails to start.
    """
    log_dir = tmp_path_factory.mktemp("serve-logs")
    return functools.partial(_run_endpoint, log_dir=log_dir)


@pytest.fixture(scope="session")
def packaged_model(tiny_saved_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``carvana package`` of ``tiny_saved_model``: model.tar.gz with unet/1/ and code/."""
    from serving.package import package

    out = tmp_path_factory.mktemp("packaged") / "model.tar.gz"
    package(tiny_saved_model, out)
    return out


@pytest.fixture(scope="session")
def served_endpoint(
    packaged_model: Path, endpoint_factory: Callable[..., contextlib.AbstractContextManager[str]]
) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:<port>``) of ``carvana serve`` running ``packaged_model``.

    It answers /ping, /invocations (code/inference.py from the archive), TF Serving's REST API
    (/v1/models/unet...) and SageMaker Runtime's /endpoints/<any name>/invocations: point boto3's
    ``sagemaker-runtime`` client at it with ``endpoint_url=`` or AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME
    (plus fake credentials and a region). Shared by the session: do not stop or reconfigure it.
    """
    with endpoint_factory(packaged_model) as url:
        yield url


@pytest.fixture(scope="session")
def aws_container_endpoint(
    packaged_model: Path, endpoint_factory: Callable[..., contextlib.AbstractContextManager[str]]
) -> Iterator[str]:
    """Like ``served_endpoint``, but ``carvana serve --container aws``: it answers exactly as the real
    SageMaker TF Serving container (500 with ``{"error": str(e)}`` for every handler exception, no
    body size limit before the handler). Shared by the session: do not stop or reconfigure it."""
    with endpoint_factory(packaged_model, "--container", "aws") as url:
        yield url


@pytest.fixture(scope="session")
def upload_with_grant() -> Callable[[dict, str, bytes, str], None]:
    """``upload_with_grant(grant, filename, data, content_type)``: send a file with a ``POST /uploads``
    grant as a browser or a studio tool would, multipart/form-data over real HTTP (fields first,
    the file last, as S3 requires); asserts S3's 204."""
    import requests

    def upload(grant: dict, filename: str, data: bytes, content_type: str) -> None:
        response = requests.post(
            grant["upload"]["url"],
            data=grant["upload"]["fields"],
            files={"file": (filename, data, content_type)},
            timeout=60,
        )
        assert response.status_code == 204, response.text

    return upload


@pytest.fixture()
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    """A fresh bucket on ``moto_server``; returns ``(boto3 S3 client, bucket name)``.

    boto3 reaches the server through ``AWS_ENDPOINT_URL`` (set here with fake credentials and a
    region, undone after the test), exactly as code under test would on real AWS.
    """
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    bucket = f"carvana-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _photo(height: int = 64, width: int = 96, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A synthetic studio photo: grey gradient backdrop, a bright car-like blob, some noise."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.repeat((60 + 80 * rows / height)[..., None], 3, axis=2)
    car = ((rows - height * 0.55) / (height * 0.3)) ** 2 + ((cols - width / 2) / (width * 0.35)) ** 2 < 1
    image[car] = rng.uniform(120, 250, size=3)
    image += rng.normal(0, 6, image.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., bytes]:
    """``make_photo(height=64, width=96, fmt="JPEG", seed=0)`` -> encoded photo bytes (JPEG or PNG)."""
    return _photo


@pytest.fixture(scope="session")
def png_header() -> Callable[[int, int], bytes]:
    """``png_header(width, height)``: a valid PNG of a few hundred bytes *claiming* that many pixels
    (a decompression bomb: only its header may be read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def make(width: int, height: int) -> bytes:
        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        row = zlib.compress(b"\0" * (width + 1))
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")

    return make


def _with_orientation(photo: bytes, orientation: int) -> bytes:
    """``photo`` (JPEG or PNG bytes) with an EXIF Orientation tag added and its image data untouched:
    an APP1 Exif segment right after the JPEG's SOI, or an eXIf chunk right after the PNG's IHDR."""
    import struct
    import zlib

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    app1 = exif.tobytes()  # b"Exif\0\0" + the TIFF structure
    if photo.startswith(b"\xff\xd8"):
        return photo[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + photo[2:]
    tiff = app1[6:]
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    ihdr_end = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    return photo[:ihdr_end] + chunk + photo[ihdr_end:]


@pytest.fixture(scope="session")
def with_orientation() -> Callable[[bytes, int], bytes]:
    """``with_orientation(photo_bytes, 6)``: the same photo tagged with EXIF Orientation 6 (the pixels,
    as stored, are unchanged; a viewer shows them turned)."""
    return _with_orientation
