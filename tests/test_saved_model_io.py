"""Finding and running the exported SavedModel from a folder, a model_dir or model.tar.gz."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer.saved_model_io import ModelLoadError, find_saved_model, open_model, saved_model_dir, to_mask


def make_tarball(model_dir: Path, out: Path) -> Path:
    """model.tar.gz as SageMaker packs a model_dir: unet/1/... at the archive's root."""
    with tarfile.open(out, "w:gz") as archive:
        archive.add(model_dir / "unet", arcname="unet")
    return out


def test_resolves_folder_model_dir_and_tarball(tiny_saved_model: Path, tmp_path: Path) -> None:
    model_dir, version = tiny_saved_model, tiny_saved_model / "unet" / "1"
    assert find_saved_model(version) == version
    assert find_saved_model(model_dir) == version
    assert find_saved_model(model_dir / "unet") == version

    tarball = make_tarball(model_dir, tmp_path / "model.tar.gz")
    with saved_model_dir(tarball) as folder:
        assert folder.name == "1" and (folder / "saved_model.pb").is_file()
        extracted = folder
    assert not extracted.exists(), "the extracted copy outlives the with block"


def test_newest_version_wins(tmp_path: Path) -> None:
    for version in ("1", "10", "2"):
        (tmp_path / "unet" / version).mkdir(parents=True)
        (tmp_path / "unet" / version / "saved_model.pb").write_bytes(b"")
    assert find_saved_model(tmp_path) == tmp_path / "unet" / "10"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "no such file or directory"),
        ("empty-folder", "no SavedModel found"),
        ("model.tar.gz", "not a tar archive"),
    ],
)
def test_bad_model_paths_name_the_path(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if name == "empty-folder":
        path.mkdir()
    elif name == "model.tar.gz":
        path.write_text("not a tarball")
    with pytest.raises(ModelLoadError, match=message) as info, open_model(path):
        pass
    assert str(path) in str(info.value)


def test_probabilities_match_signature_mixed_sizes_and_tta(tiny_saved_model: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (96, 144, 3), dtype=np.uint8)
    signature = tf.saved_model.load(str(tiny_saved_model / "unet" / "1")).signatures["predict_images"]

    def direct(photo: np.ndarray) -> dict[str, np.ndarray]:
        out = signature(images=tf.constant(photo[None].astype(np.float32) / 255.0))
        return {name: value.numpy()[0] for name, value in out.items()}

    with open_model(tiny_saved_model) as model:
        plain = model.probabilities([small, large, small])
        tta = model.probabilities([large], tta=True)

    # Each photo at its own size, in input order, as the signature computes it alone.
    assert [p.shape for p in plain] == [(48, 80), (96, 144), (48, 80)]
    np.testing.assert_allclose(plain[0], direct(small)["probabilities"], atol=1e-5)
    np.testing.assert_allclose(plain[1], direct(large)["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(plain[0], plain[2])
    # Our threshold is the exported graph's.
    np.testing.assert_array_equal(to_mask(plain[1]), direct(large)["mask"])
    # TTA: mean of the photo's and its mirror's prediction (flipped back).
    mirrored = direct(large[:, ::-1].copy())["probabilities"][:, ::-1]
    np.testing.assert_allclose(tta[0], (direct(large)["probabilities"] + mirrored) / 2, atol=1e-5)


def test_to_mask_threshold_is_strict() -> None:
    np.testing.assert_array_equal(to_mask(np.array([0.0, 0.5, 0.5001, 1.0])), [0, 0, 1, 1])


def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_masks_are_the_endpoints_signature_and_tta_mirrors_in_the_graph(tiny_saved_model: Path) -> None:
    """Photo bytes in: ``mask_png`` is what the endpoint calls; ``mask_png_tta`` averages each photo
    with its mirror image, decoded and resized by the graph, as serving_default sees both."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    large = rng.integers(0, 256, (96, 144, 3), dtype=np.uint8)
    signatures = tf.saved_model.load(str(tiny_saved_model / "unet" / "1")).signatures

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        out = signatures["serving_default"](image_bytes=tf.constant([_png(pixels)]))
        return out["probabilities"].numpy()[0]

    with open_model(tiny_saved_model) as model:
        pngs = model.mask_pngs([_png(small), _png(large)])
        plain = model.masks([_png(small), _png(large)])
        (tta,) = model.masks([_png(large)], tta=True)
        assert model.mask_pngs([]) == []

    endpoint = signatures["mask_png"](
        image_bytes=tf.constant([_png(small), _png(large)]), orientation=tf.constant([1, 1])
    )
    assert pngs == [bytes(png) for png in endpoint["mask_png_bytes"].numpy()]
    np.testing.assert_array_equal(plain[1], to_mask(probabilities(large)))
    assert [m.shape for m in plain] == [(48, 80), (96, 144)] and tta.dtype == np.uint8
    mean = (probabilities(large) + probabilities(large[:, ::-1].copy())[:, ::-1]) / 2
    sure = np.abs(mean - 0.5) > 1e-4  # a flip commutes with the resize up to float rounding
    np.testing.assert_array_equal(tta[sure], to_mask(mean)[sure])
    assert sure.mean() > 0.99


def test_a_photo_the_graph_cannot_decode_is_named_by_index(tiny_saved_model: Path) -> None:
    from trainer.saved_model_io import PhotoDecodeError

    good = _png(np.zeros((8, 8, 3), np.uint8))
    with open_model(tiny_saved_model) as model, pytest.raises(PhotoDecodeError) as err:
        model.mask_pngs([good, b"\xff\xd8\xff\xe0 not really a jpeg", good])
    assert err.value.index == 1
    assert "jpeg" in str(err.value).lower()
