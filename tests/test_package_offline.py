"""``carvana package --offline``: the handlers' dependencies unpacked under code/lib, for endpoints
without internet (the container ignores code/requirements.txt when code/lib exists, aws-facts Q2).

The wheels are fetched once into the pytest cache (later runs need no network); when pip cannot reach
the registry and the cache is empty, the tests skip saying so. Wheels for the inference image
(cp312) cannot import under this machine's Python, so the import test builds a second archive for the
running interpreter and platform, and the default archive is checked by its file names.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from serving.package import PackageError, fetch_wheels, manylinux_platforms, package
from trainer import cli

HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def wheelhouse(request: pytest.FixtureRequest, tmp_path_factory, python_version: str) -> Path:
    """A folder of wheels for ``python_version`` on manylinux/this machine, downloaded once."""
    cache = getattr(request.config, "cache", None)  # None under this project's -p no:cacheprovider
    base = Path(cache.mkdir("carvana-wheelhouse") if cache else tempfile.gettempdir()) / "carvana-wheels"
    folder = base / f"cp{python_version.replace('.', '')}-{platform.machine()}"
    if not list(folder.glob("*.whl")):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fetch_wheels(
                folder, python_version=python_version, platforms=manylinux_platforms(platform.machine())
            )
        except PackageError as err:
            pytest.skip(f"pip cannot download the wheels (no registry access?): {str(err)[:300]}")
    return folder


@pytest.fixture(scope="module")
def image_wheels(request, tmp_path_factory) -> Path:
    return wheelhouse(request, tmp_path_factory, "3.12")


@pytest.fixture(scope="module")
def local_wheels(request, tmp_path_factory) -> Path:
    return wheelhouse(request, tmp_path_factory, HERE_PYTHON)


def test_the_default_archive_carries_cp312_linux_wheels_unpacked(
    tiny_saved_model: Path, image_wheels: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model.tar.gz"
    assert (
        cli.main(
            [
                "package",
                "--model-dir",
                str(tiny_saved_model),
                "--out",
                str(out),
                "--offline",
                "--wheelhouse",
                str(image_wheels),
            ]
        )
        == 0
    )
    with tarfile.open(out) as archive:
        names = set(archive.getnames())
    assert "code/requirements.txt" not in names  # nothing to pip-install at start-up
    assert {"code/inference.py", "code/trainer/wire.py", "unet/1/saved_model.pb"} <= names
    machine = platform.machine()
    numpy_so = [n for n in names if n.startswith("code/lib/numpy/") and n.endswith(".so")]
    assert f"code/lib/numpy/_core/_multiarray_umath.cpython-312-{machine}-linux-gnu.so" in numpy_so
    assert all(f".cpython-312-{machine}-linux-gnu.so" in n for n in numpy_so), numpy_so
    assert any(n.startswith("code/lib/PIL/_imaging.cpython-312-") for n in names)
    assert not any(n.endswith(".whl") for n in names)  # unpacked: the container does not install wheels


def test_the_offline_archive_imports_and_answers_with_no_site_packages(
    tiny_saved_model: Path, local_wheels: Path, tmp_path: Path, make_photo, with_orientation
) -> None:
    """As the container runs it: PYTHONPATH=code:code/lib, no site-packages (-S), no index reachable."""
    out = tmp_path / "model.tar.gz"
    package(
        tiny_saved_model,
        out,
        offline=True,
        python_version=HERE_PYTHON,
        platforms=manylinux_platforms(platform.machine()),
        wheelhouse=local_wheels,
    )
    with tarfile.open(out) as archive:
        archive.extractall(tmp_path / "model", filter="data")
    code = tmp_path / "model" / "code"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(with_orientation(make_photo(height=30, width=50), 6))
    script = f"""
import importlib.util, io, json, sys
from collections import namedtuple
spec = importlib.util.spec_from_file_location("inference", {str(code / "inference.py")!r})
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)
import numpy, PIL
Context = namedtuple("Context", "model_name model_version method rest_uri grpc_port channel "
                     "custom_attributes request_content_type accept_header content_length")
photo = open({str(photo)!r}, "rb").read()
request = json.loads(inference.input_handler(io.BytesIO(photo), Context(
    "unet", None, None, "", None, None, None, "image/jpeg", "image/png", None)))
mask = numpy.zeros((50, 30), numpy.uint8); mask[10:20, 5:25] = 255
from PIL import Image
png = io.BytesIO(); Image.fromarray(mask).save(png, format="PNG")
cutout = Image.open(io.BytesIO(inference.cutout_png(photo, png.getvalue())))
print(numpy.__file__); print(PIL.__file__)
print(request["instances"][0]["orientation"], cutout.size, cutout.mode)
print(inference.rle_encode(numpy.array([[0, 1], [1, 1]])))
print("tensorflow" in sys.modules)
"""
    environment = {
        "PYTHONPATH": f"{code}:{code / 'lib'}",
        "PIP_NO_INDEX": "1",
        "PATH": "/usr/bin:/bin",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=environment
    )
    assert result.returncode == 0, result.stderr
    numpy_file, pil_file, answer, rle, tensorflow = result.stdout.splitlines()
    assert Path(numpy_file).is_relative_to(code / "lib") and Path(pil_file).is_relative_to(code / "lib")
    assert answer == "6 (30, 50) RGBA"  # the EXIF tag read, the photo turned upright for the cut-out
    assert (rle, tensorflow) == ("2 3", "False")


def test_offline_options_are_checked(tiny_saved_model: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(
            [
                "package",
                "--model-dir",
                str(tiny_saved_model),
                "--out",
                str(tmp_path / "m.tar.gz"),
                "--wheelhouse",
                str(tmp_path),
            ]
        )
    assert "--wheelhouse, --python-version and --platform go with --offline" in capsys.readouterr().err
    offline_from_empty = [
        "package", "--model-dir", str(tiny_saved_model), "--out", str(tmp_path / "m.tar.gz"),
        "--offline", "--wheelhouse", str(tmp_path / "empty"),
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(offline_from_empty)
    assert "not a folder of wheels" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        cli.main(offline_from_empty)
    assert "cannot get wheels of numpy>=1.26, Pillow>=10 for Python 3.12" in capsys.readouterr().err
    assert not (tmp_path / "m.tar.gz").exists()
