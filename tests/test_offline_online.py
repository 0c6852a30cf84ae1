"""Offline and online are one path: ``carvana predict`` answers what the endpoint answers.

Real 1918x1280 photos from ../shared/carvana (skipped when absent) go through ``carvana predict`` and,
as the same bytes, through ``carvana serve`` over real HTTP, both with the same model.tar.gz: the
mask PNGs must be equal pixel for pixel (the graph decodes and resizes in both), and so must the
cut-outs, with nothing of the studio under alpha 0 in either.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from trainer import cli
from trainer.wire import MEDIA_CUTOUT_PNG, MEDIA_MASK_PNG


@pytest.fixture(scope="module")
def real_photos(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four real photos (different cars and angles), linked into a folder of their own."""
    photos = sorted((real_data / "train").glob("*.jpg"))
    folder = tmp_path_factory.mktemp("real-photos")
    picked = []
    for source in photos[:: max(len(photos) // 4, 1)][:4]:
        link = folder / source.name
        link.symlink_to(source.resolve())
        picked.append(link)
    return picked


def pixels(data: bytes) -> tuple[str, np.ndarray]:
    """A PNG's mode and pixels, a 1-bit mask's as 0/255 (expanded to 8 bits, as browsers read it)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.mode, np.asarray(image.convert("L") if image.mode == "1" else image)


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def endpoint(url: str, photo: bytes, accept: str) -> bytes:
    response = requests.post(
        f"{url}/invocations",
        data=photo,
        timeout=120,
        headers={"Content-Type": "image/jpeg", "Accept": accept},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == accept
    return response.content


def test_predict_writes_the_endpoints_masks_and_cutouts_pixel_for_pixel(
    real_photos: list[Path], packaged_model: Path, served_endpoint: str, tmp_path: Path
) -> None:
    out = tmp_path / "predictions"
    folder = str(real_photos[0].parent)
    assert cli.main(["predict", folder, "--model", str(packaged_model), "--out", str(out), "--cutout"]) == 0

    for photo in real_photos:
        data = photo.read_bytes()
        mode, online = pixels(endpoint(served_endpoint, data, MEDIA_MASK_PNG))
        offline_mode, offline = pixels((out / f"{photo.stem}_mask.png").read_bytes())
        assert (mode, offline_mode, offline.shape) == ("1", "1", (1280, 1918))
        assert 0 < (online == 255).mean() < 1, "a mask of one value would make the comparison empty"
        np.testing.assert_array_equal(offline, online)

        mode, online_cutout = pixels(endpoint(served_endpoint, data, MEDIA_CUTOUT_PNG))
        offline_mode, offline_cutout = pixels((out / f"{photo.stem}_cutout.png").read_bytes())
        assert (mode, offline_mode) == ("RGBA", "RGBA")
        np.testing.assert_array_equal(offline_cutout, online_cutout)
        np.testing.assert_array_equal(offline_cutout[..., 3], offline)
        for cutout in (offline_cutout, online_cutout):
            assert cutout[cutout[..., 3] == 0].max() == 0  # RGB zeroed under alpha 0


@pytest.mark.parametrize("orientation", [6, 3])
def test_a_real_photo_stored_turned_gets_the_upright_photos_mask(
    real_photos: list[Path],
    packaged_model: Path,
    served_endpoint: str,
    with_orientation,
    tmp_path: Path,
    orientation: int,
) -> None:
    """A Carvana photo re-saved as a phone stores it (turned, tagged 6 or 3) gets, online and offline,
    the mask of the same pixels stored upright (no tag): the graph turns the photo upright *before*
    the network. Turning the mask after the network instead would differ.

    Pixel for pixel for a PNG (decoded whole, like the upright reference). A JPEG this much larger
    than the model is decoded scaled in the DCT domain, whose 8x8 blocks lie differently once the
    photo is turned, so its mask agrees with the upright PNG's up to a few boundary pixels."""
    import tensorflow as tf

    from trainer.wire import orient

    inverse = {6: 8, 3: 3}
    upright = tf.io.decode_jpeg(real_photos[1].read_bytes()).numpy()
    stored = orient(upright, inverse[orientation])
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG", quality=95)
    untagged = out.getvalue()  # the stored pixels; the tag below changes no byte of the image data
    tagged = with_orientation(untagged, orientation)
    shown = orient(tf.io.decode_jpeg(untagged).numpy(), orientation)  # what a viewer shows, losslessly:
    reference = pixels(endpoint(served_endpoint, png_bytes(shown), MEDIA_MASK_PNG))[1]
    tagged_png = with_orientation(png_bytes(orient(shown, inverse[orientation])), orientation)
    np.testing.assert_array_equal(pixels(endpoint(served_endpoint, tagged_png, MEDIA_MASK_PNG))[1], reference)

    online = pixels(endpoint(served_endpoint, tagged, MEDIA_MASK_PNG))[1]
    assert online.shape == (1280, 1918)
    assert 0 < (online == 255).mean() < 1
    assert (online != reference).mean() < 0.01

    photo = tmp_path / "sideways.jpg"
    photo.write_bytes(tagged)
    out_dir = tmp_path / "predictions"
    assert cli.main(["predict", str(photo), "--model", str(packaged_model), "--out", str(out_dir)]) == 0
    np.testing.assert_array_equal(pixels((out_dir / "sideways_mask.png").read_bytes())[1], online)

    turned_after = orient(pixels(endpoint(served_endpoint, untagged, MEDIA_MASK_PNG))[1], orientation)
    assert turned_after.shape == online.shape
    assert (turned_after != online).any(), "the network sees the turned photo differently"
