"""``carvana preview``: the grid's layout and that the masks are drawn where they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.preview import main, overlay


def test_preview_writes_a_grid_of_one_batch(
    sample_tfrecords: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.png"
    code = main(
        [
            "--tfrecords",
            str(sample_tfrecords),
            "--split",
            "train",
            "--out",
            str(out),
            "--count",
            "8",
            "--size",
            "64x96",
        ]
    )
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as grid:
        assert (grid.format, grid.mode, grid.size) == ("PNG", "RGB", (4 * (96 + 4) + 4, 2 * (64 + 4) + 4))
        pixels = np.asarray(grid)
    # Red tint and yellow outline are present: the masks were drawn.
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 180) & (pixels[..., 2] < 60)
    assert red.mean() > 0.01 and yellow.mean() > 0.005


def test_preview_of_a_split_folder_without_augmentation(sample_tfrecords: Path, tmp_path: Path) -> None:
    out = tmp_path / "val.png"
    assert (
        main(
            [
                "--tfrecords",
                str(sample_tfrecords / "validation"),
                "--out",
                str(out),
                "--count",
                "3",
                "--size",
                "32x48",
                "--no-augment",
                "--columns",
                "3",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (3 * (48 + 4) + 4, 32 + 8)


def test_overlay_tints_the_car_and_outlines_it() -> None:
    image = np.full((6, 6, 3), 0.5, np.float32)
    mask = np.zeros((6, 6), np.float32)
    mask[1:5, 1:5] = 1
    out = overlay(image, mask)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.5])  # background untouched
    np.testing.assert_allclose(out[1, 1], [1.0, 0.9, 0.0])  # edge: outline
    assert out[2, 2, 0] > 0.7 and out[2, 2, 1] < 0.4  # inside: tinted red


def test_missing_split_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tfrecords", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "carvana preview: error:" in capsys.readouterr().err


def test_default_size_is_the_converted_size_else_the_training_default(
    sample_tfrecords: Path, tmp_path: Path
) -> None:
    # No --size at conversion (the sample keeps its photos' size): carvana train's default, 192x288.
    out = tmp_path / "default.png"
    assert main(["--tfrecords", str(sample_tfrecords), "--out", str(out), "--count", "1"]) == 0
    assert Image.open(out).size == (288 + 8, 192 + 8)
    # Converted with --size 32x48: the manifest says so, and the grid follows it.
    converted = tmp_path / "tfrecords"
    converted.mkdir()
    (converted / "train").symlink_to(sample_tfrecords / "train", target_is_directory=True)
    manifest = json.loads((sample_tfrecords / "manifest.json").read_text())
    manifest["options"]["size"] = [32, 48]
    (converted / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "converted.png"
    assert main(["--tfrecords", str(converted / "train"), "--out", str(out), "--count", "1"]) == 0
    assert Image.open(out).size == (48 + 8, 32 + 8)
