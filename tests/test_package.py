"""serving/package.py: model.tar.gz in the TF Serving container layout, loadable the way it loads it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import tensorflow as tf

from serving.package import PackageError, package
from trainer import cli

REPO = Path(__file__).resolve().parents[1]
CODE_FILES = {
    "code/inference.py": "serving/inference.py",
    "code/trainer/__init__.py": "trainer/__init__.py",
    "code/trainer/wire.py": "trainer/wire.py",
}


def test_archive_layout(packaged_model: Path) -> None:
    with tarfile.open(packaged_model) as archive:
        files = {member.name for member in archive.getmembers() if member.isfile()}
        assert {"unet/1/saved_model.pb", "unet/1/variables/variables.index", "code/requirements.txt"} <= files
        assert set(CODE_FILES) <= files
        assert all(name.startswith(("unet/1/", "code/")) for name in files)
        assert not any("__pycache__" in name for name in files)
        for member, source in CODE_FILES.items():
            assert archive.extractfile(member).read() == (REPO / source).read_bytes(), member
        requirements = archive.extractfile("code/requirements.txt").read().decode().split()
        assert {line.split(">")[0] for line in requirements} == {"numpy", "Pillow"}
        assert all(member.uid == 0 and member.uname == "" for member in archive.getmembers())


def test_the_container_can_import_the_packaged_handlers(packaged_model: Path, tmp_path: Path) -> None:
    """Import code/inference.py exactly as python_service.py does, with only code/ on the path (no
    project install, no code/lib, which would make the container skip requirements.txt): the wire
    contract must come from the vendored copy."""
    with tarfile.open(packaged_model) as archive:
        archive.extractall(tmp_path, filter="data")
    code = tmp_path / "code"
    script = f"""
import importlib.util, sys
sys.path[:0] = [{str(code)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})  # numpy and Pillow, as pip installs them
spec = importlib.util.spec_from_file_location("inference", {str(code / "inference.py")!r})
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)
import numpy as np
assert "tensorflow" not in sys.modules
print(sys.modules["trainer.wire"].__file__)
print(inference.rle_encode(np.array([[0, 1], [1, 1]])))
print(inference.input_handler.__name__, inference.output_handler.__name__)
"""
    # -S: no site processing, so the editable install of this project is not importable.
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    wire_file, rle, handlers = result.stdout.splitlines()
    assert Path(wire_file) == code / "trainer" / "wire.py"
    assert not (code / "lib").exists()
    assert rle == "2 3"
    assert handlers == "input_handler output_handler"


def test_cli_replaces_the_archive_whole(
    tiny_saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.tar.gz"
    out.write_bytes(b"an older, broken archive")
    assert cli.main(["package", "--model-dir", str(tiny_saved_model / "unet" / "1"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with tarfile.open(out) as archive:
        assert "unet/1/saved_model.pb" in archive.getnames()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz"]


class _NoMaskPng(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(image_bytes)}


def test_refuses_what_it_cannot_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "model.tar.gz"
    with pytest.raises(PackageError, match="not a folder"):
        package(tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="no SavedModel found"):
        package(tmp_path / "empty", out)
    module = _NoMaskPng()
    tf.saved_model.save(
        module, str(tmp_path / "other" / "unet" / "3"), signatures={"serving_default": module.serve}
    )
    with pytest.raises(PackageError, match=r"has no 'mask_png' signature.*found: serving_default"):
        package(tmp_path / "other", out)
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())

    with pytest.raises(SystemExit) as err:
        cli.main(["package", "--model-dir", str(tmp_path / "empty"), "--out", str(out)])
    assert err.value.code == 2
    assert "carvana package: error:" in capsys.readouterr().err
