"""``carvana predict``: mask PNGs, RGBA cut-outs and the Kaggle submission CSV."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.predict import main
from trainer.wire import rle_decode


@pytest.fixture(scope="module")
def photo_folder(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three JPEGs of the sample and one PNG (a studio may send either)."""
    folder = tmp_path_factory.mktemp("photos")
    jpegs = sorted((sample_data / "train").glob("*.jpg"))
    for path in jpegs[:3]:
        shutil.copy(path, folder / path.name)
    with Image.open(jpegs[20]) as image:
        image.save(folder / "studio_shot.png")
    return folder


@pytest.fixture(scope="module")
def background_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported U-Net whose logits layer always says background (zero kernel, bias -10)."""
    from trainer.export import export_saved_model
    from trainer.model.unet import build_unet

    model = build_unet(depth=2, base_filters=4)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), np.full_like(bias, -10.0)])
    return export_saved_model(model, tmp_path_factory.mktemp("background-model"), (32, 48))


def read_png(path: Path) -> tuple[str, np.ndarray]:
    """A PNG's mode and pixels, a 1-bit mask's as 0/255 (expanded to 8 bits, as browsers read it)."""
    with Image.open(path) as image:
        return image.mode, np.asarray(image.convert("L") if image.mode == "1" else image)


def read_submission(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["img", "rle_mask"]
    return rows[1:]


def test_folder_masks_cutouts_and_submission(
    tiny_saved_model: Path, photo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main([str(photo_folder), "--model", str(tiny_saved_model), "--out", str(out), "--cutout"]) == 0

    photos = sorted(p for p in photo_folder.iterdir())
    rows = read_submission(out / "submission.csv")
    assert [name for name, _ in rows] == [p.name for p in photos]
    for photo_path, (_, rle) in zip(photos, rows, strict=True):
        photo = read_png(photo_path)[1]
        height, width = photo.shape[:2]

        mode, mask = read_png(out / f"{photo_path.stem}_mask.png")
        assert mode == "1" and mask.shape == (height, width)
        assert set(np.unique(mask)) <= {0, 255}
        assert 0 < (mask == 255).mean() < 1  # the untrained model still marks some car, not all

        mode, cutout = read_png(out / f"{photo_path.stem}_cutout.png")
        assert mode == "RGBA" and cutout.shape == (height, width, 4)
        np.testing.assert_array_equal(cutout[..., 3], mask)  # alpha 0 exactly where the mask is 0
        # The car's pixels as the photo has them; under alpha 0 nothing of the studio, as the endpoint.
        np.testing.assert_array_equal(cutout[..., :3], np.where(mask[..., None] > 0, photo[..., :3], 0))
        assert cutout[mask == 0].max() == 0

        # The RLE decodes back to the mask PNG.
        np.testing.assert_array_equal(rle_decode(rle, height, width) * 255, mask)


def test_single_photo_from_tarball_writes_no_submission_unless_asked(
    tiny_saved_model: Path, photo_folder: Path, tmp_path: Path
) -> None:

    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tiny_saved_model / "unet", arcname="unet")
    photo = next(photo_folder.glob("*.jpg"))

    assert main([str(photo), "--model", str(tarball), "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"{photo.stem}_mask.png"]

    submission = tmp_path / "kaggle" / "one.csv"
    argv = [
        str(photo),
        "--model",
        str(tarball),
        "--out",
        str(tmp_path / "b"),
        "--submission",
        str(submission),
    ]
    assert main(argv) == 0
    assert [name for name, _ in read_submission(submission)] == [photo.name]


def test_empty_masks_give_empty_rle_and_transparent_cutouts(
    background_model: Path, photo_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = [str(photo_folder), "--model", str(background_model), "--out", str(out), "--cutout", "--no-masks"]
    assert main(argv) == 0
    assert not list(out.glob("*_mask.png"))
    rows = read_submission(out / "submission.csv")
    assert len(rows) == 4 and all(rle == "" for _, rle in rows)
    assert "studio_shot.png,\n" in (out / "submission.csv").read_text()
    for cutout in out.glob("*_cutout.png"):
        assert read_png(cutout)[1].max() == 0  # all transparent, and black


def test_errors_name_the_file(
    tiny_saved_model: Path, photo_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--model", str(tiny_saved_model), "--out", str(tmp_path / "out")]

    missing = tmp_path / "missing.jpg"
    assert main([str(missing), *model]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carvana predict: error: ") and str(missing) in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), *model]) == 2
    assert "no photos in the folder" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(photo_folder, broken)
    (broken / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main([str(broken), *model]) == 2
    assert f"{broken / 'zz_truncated.jpg'}: cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "out" / "submission.csv").exists(), "no half-written submission"


# --- a folder of many cars: reports, resume, the review page ---------------------------------------


@pytest.fixture(scope="module")
def cars_folder(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's 3 cars x 16 views (Kaggle names), as a studio's day of photos."""
    folder = tmp_path_factory.mktemp("cars")
    for path in sorted((sample_data / "train").glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


FINISH = ["--finished", "jpeg", "--shadow", "--frame", "4:3", "--margin", "0.1"]


def test_folder_of_cars_resumes_after_an_interruption(
    tiny_saved_model: Path, cars_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import predict as predict_module

    argv = [str(cars_folder), "--model", str(tiny_saved_model), *FINISH]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0

    # The second car raises mid-way (a Ctrl-C): its photos and the reports are not there, nothing is
    # half-written, and the rerun does only what is missing.
    original, calls = predict_module.Run.car, []

    def interrupted(self, model, paths):  # type: ignore[no-untyped-def]
        calls.append(len(paths))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, model, paths)

    out = tmp_path / "resumed"
    monkeypatch.setattr(predict_module.Run, "car", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_module.predict(
            predict_module.PredictConfig.from_args(
                predict_module.build_parser().parse_args([*argv, "--out", str(out)])
            )
        )
    monkeypatch.setattr(predict_module.Run, "car", original)
    assert len(list(out.glob("*_finished.jpg"))) == 16 and not (out / "predictions.csv").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["photos"], summary["cars"], summary["skipped_as_done"]) == (48, 3, 16)
    assert read_csv(out / "predictions.csv") == read_csv(tmp_path / "whole" / "predictions.csv")
    assert (out / "cars.json").read_text() == (tmp_path / "whole" / "cars.json").read_text()
    for finished in (tmp_path / "whole").glob("*_finished.jpg"):
        assert (out / finished.name).read_bytes() == finished.read_bytes()

    # Once more: every car is done, the model is not even loaded.
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_as_done"] == 48
    # Other options: redone.
    assert main([*argv, "--out", str(out), "--backdrop", "black"]) == 0
    assert json.loads((out / "summary.json").read_text())["skipped_as_done"] == 0


def test_folder_reports_box_review_cars_and_framing(
    tiny_saved_model: Path, cars_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main([str(cars_folder), "--model", str(tiny_saved_model), "--out", str(out), *FINISH]) == 0
    rows = read_csv(out / "predictions.csv")
    assert [r["photo"] for r in rows] == sorted(p.name for p in cars_folder.glob("*.jpg"))
    cars = json.loads((out / "cars.json").read_text())
    assert len(cars) == 3 and all(car["views"] == 16 and car["missing_views"] == [] for car in cars.values())
    sizes = {}
    for row in rows:
        mask = read_png(out / f"{Path(row['photo']).stem}_mask.png")[1] > 0
        if not mask.any():
            continue
        # The box in pixels and relative matches the mask (within the soft edge's pixel).
        ys, xs = np.nonzero(mask)
        assert abs(int(row["box_x"]) - xs.min()) <= 2 and abs(int(row["box_y"]) - ys.min()) <= 2
        assert float(row["box_rel_width"]) == pytest.approx(
            int(row["box_width"]) / int(row["width"]), abs=1e-4
        )
        assert row["needs_review"] in {"0", "1"} and 0 <= float(row["confidence"]) <= 1
        with Image.open(out / f"{Path(row['photo']).stem}_finished.jpg") as finished:
            sizes.setdefault(row["car"], set()).add(finished.size)
    # Framed 4:3, and every view of a car at one scale: one frame size per car.
    for car, car_sizes in sizes.items():
        assert len(car_sizes) == 1, car
        ((width, height),) = car_sizes
        assert width / height == pytest.approx(4 / 3, abs=0.01)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium installed (apt-get install -y chromium)")


def test_review_page_shows_the_flagged_photos_in_chromium(
    tiny_saved_model: Path, cars_folder: Path, tmp_path: Path
) -> None:
    import subprocess

    out = tmp_path / "out"
    assert main([str(cars_folder), "--model", str(tiny_saved_model), "--out", str(out), "--no-masks"]) == 0
    rows = read_csv(out / "predictions.csv")
    flagged = {r["photo"] for r in rows if r["needs_review"] == "1" or r["car_check"]}
    assert flagged, "the untrained model's photos should need review"
    page = out / "review" / "index.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shown = set(re.findall(r'<figure class="photo" data-photo="([^"]+)"', dom))
    assert shown == flagged
    assert f"{len(flagged)} of {len(rows)} photos need review" in dom
    # The thumbnails render, with the mask's red outline on them.
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), *flags, "--window-size=1100,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 90) & (pixels[..., 2] < 120)
    assert red.sum() > 200
