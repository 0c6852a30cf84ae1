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
