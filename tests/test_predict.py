"""``carvana predict``: mask PNGs, RGBA cut-outs and the Kaggle submission CSV."""

from __future__ import annotations

import csv
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
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


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
        assert mode == "L" and mask.shape == (height, width)
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
