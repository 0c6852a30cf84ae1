"""``carvana evaluate``: the Dice it reports, and the report files people read."""

from __future__ import annotations

import csv
import json
import statistics
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.evaluate import error_overlay, image_dice, main, summarize


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["id", "angle", "dice"]
        return list(reader)


def test_dice_of_known_masks() -> None:
    truth = np.zeros((6, 8), np.uint8)
    truth[1:5, 2:6] = 1  # 16 car pixels
    # A model that returns the exact truth scores 1.
    assert image_dice(truth.astype(np.float32), truth) == 1.0
    # Both empty: 1, not 0/0.
    assert image_dice(np.zeros((6, 8), np.float32), np.zeros((6, 8), np.uint8)) == 1.0
    # Half the car found plus 8 wrong pixels: 2 * 8 / (16 + 16) = 0.5.
    probs = np.zeros((6, 8), np.float32)
    probs[1:3, 2:6] = 0.9
    probs[5:6, 0:8] = 0.7
    assert image_dice(probs, truth) == pytest.approx(0.5)
    # Probability exactly 0.5 is background; nothing found against a car: 0.
    assert image_dice(np.full((6, 8), 0.5, np.float32), truth) == 0.0


def test_summary_of_known_scores() -> None:
    summary = summarize([0.996, 0.992, 0.987, 0.5])
    assert summary == {
        "mean": pytest.approx(0.86875),
        "median": pytest.approx(0.9895),
        "min": 0.5,
        "p5": pytest.approx(0.5 + 0.15 * 0.487),  # 5 % of the way over 3 gaps: 0.15 into the first
        "share_at_least": {"0.985": 0.75, "0.99": 0.5, "0.995": 0.25},
        "count": 4,
    }


def test_error_overlay_colours() -> None:
    photo = np.full((1, 4, 3), 200, np.uint8)
    truth = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 0]], np.uint8)
    overlay = error_overlay(photo, truth, pred)
    assert overlay[0, 0].tolist() == overlay[0, 3].tolist() == [80, 80, 80]  # right: photo dimmed
    assert overlay[0, 2].tolist() == [255, 40, 40]  # false positive: red
    assert overlay[0, 1].tolist() == [40, 110, 255]  # false negative: blue


def test_evaluate_validation_split(
    tiny_saved_model: Path, sample_data: Path, sample_tfrecords: Path, tmp_path: Path
) -> None:
    manifest = json.loads((sample_tfrecords / "manifest.json").read_text())
    validation = manifest["splits"]["validation"]
    out = tmp_path / "report"
    argv = ["--model", str(tiny_saved_model), "--data", str(sample_data)]
    argv += ["--manifest", str(sample_tfrecords / "manifest.json"), "--worst", "2", "--out", str(out)]
    assert main(argv) == 0

    rows = read_rows(out / "per_image.csv")
    assert len(rows) == validation["count"] == 16
    assert {r["id"] for r in rows} == set(validation["cars"])
    assert sorted(int(r["angle"]) for r in rows) == list(range(1, 17))
    dice = [float(r["dice"]) for r in rows]
    assert all(0.0 <= d <= 1.0 for d in dice)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 16 and summary["tta"] is False and summary["split"] == "validation"
    assert summary["model"] == str(tiny_saved_model) and summary["seconds"] > 0
    assert summary["mean"] == pytest.approx(statistics.fmean(dice), abs=1e-5)
    assert summary["min"] == pytest.approx(min(dice), abs=1e-5)

    # The two worst cases, worst first, drawn as PNGs of photo/truth/prediction/errors.
    pictures = sorted((out / "worst").iterdir())
    assert [p.name for p in pictures] == [Path(name).name for name in summary["worst"]]
    assert len(pictures) == 2 and pictures[0].name.startswith("01_")
    worst_row = min(rows, key=lambda r: float(r["dice"]))
    assert pictures[0].name == f"01_{worst_row['id']}_{int(worst_row['angle']):02d}.png"
    with Image.open(pictures[0]) as image:
        assert image.format == "PNG" and image.width > 300


def test_evaluate_all_with_tta_from_tarball(
    tiny_saved_model: Path, sample_data: Path, tmp_path: Path
) -> None:
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tiny_saved_model / "unet", arcname="unet")
    out = tmp_path / "report"
    argv = ["--model", str(tarball), "--data", str(sample_data), "--all", "--tta", "--worst", "0"]
    assert main([*argv, "--batch-size", "8", "--out", str(out)]) == 0

    rows = read_rows(out / "per_image.csv")
    assert len(rows) == 48  # 3 cars x 16 angles
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 48 and summary["tta"] is True and summary["split"] == "all"
    assert 0.0 <= summary["min"] <= summary["median"] <= 1.0
    assert not (out / "worst").exists()


def test_evaluate_errors_name_the_problem(
    tiny_saved_model: Path, sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", str(tiny_saved_model), "--data", str(sample_data), "--out", str(tmp_path / "r")]
    assert main(base) == 2
    assert "give --manifest" in capsys.readouterr().err

    missing = tmp_path / "nowhere" / "manifest.json"
    assert main([*base, "--manifest", str(missing)]) == 2
    assert f"carvana evaluate: error: {missing}: manifest not found" in capsys.readouterr().err

    no_model = tmp_path / "no-model"
    assert main(["--model", str(no_model), "--data", str(sample_data), "--all", "--out", str(tmp_path)]) == 2
    assert str(no_model) in capsys.readouterr().err
