"""Find an exported U-Net SavedModel and run it on photos at their original size.

``carvana evaluate`` and ``carvana predict`` both take ``--model`` as whatever a person has at hand:
the SavedModel folder itself (``<model_dir>/unet/1``), the training job's ``model_dir`` holding
``unet/<version>/``, or the ``model.tar.gz`` a SageMaker job (or ``carvana package``) leaves. This
module is the one place that turns any of those into loaded signatures, so both commands read the
model exactly as TF Serving would, through the exported graph (resize in, resize back out), rather
than rebuilding a Keras model that could drift from what is deployed.
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

# Probabilities strictly above THRESHOLD are car: the exported "mask" output's own rule, so a mask
# from here equals the endpoint's.
from trainer.export import MODEL_NAME, THRESHOLD

# The signature that takes decoded float images: photos are decoded once by the caller (which
# also needs the pixels for cut-outs and overlays), and flips for test-time augmentation need no
# re-encoding.
SIGNATURE = "predict_images"


class ModelLoadError(ValueError):
    """``--model`` does not point at a loadable SavedModel; the message names the path."""


def _versions(folder: Path) -> list[Path]:
    """The numbered SavedModel folders directly inside ``folder`` (a model name's folder)."""
    return [p.parent for p in folder.glob("*/saved_model.pb") if p.parent.name.isdigit()]


def find_saved_model(root: Path) -> Path:
    """The SavedModel folder inside ``root``: ``root`` itself or its newest ``<name>/<version>``.

    The newest numeric version wins, as in TF Serving; ``unet`` is preferred when a model_dir holds
    several model names.
    """
    if (root / "saved_model.pb").is_file():
        return root
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    versions = (
        _versions(root)
        or _versions(root / MODEL_NAME)
        or [version for folder in subfolders for version in _versions(folder)]
    )
    if not versions:
        raise ModelLoadError(
            f"{root}: no SavedModel found (expected saved_model.pb in it, in <version>/ or in "
            f"{MODEL_NAME}/<version>/ below it)"
        )
    return max(versions, key=lambda p: int(p.name))


@contextlib.contextmanager
def saved_model_dir(path: str | Path) -> Iterator[Path]:
    """Yield the SavedModel folder for ``path`` (folder, model_dir or model.tar.gz).

    A tarball is extracted to a temporary folder that lives only as long as the ``with`` block.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(
            f"{path}: no such file or directory (expected a SavedModel folder, a model_dir holding "
            f"{MODEL_NAME}/<version>/, or model.tar.gz)"
        )
    if path.is_dir():
        yield find_saved_model(path)
        return
    if not tarfile.is_tarfile(path):
        raise ModelLoadError(f"{path}: not a folder and not a tar archive (expected model.tar.gz)")
    with tempfile.TemporaryDirectory(prefix="carvana-model-") as tmp:
        try:
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise ModelLoadError(f"{path}: cannot extract the archive: {err}") from err
        yield find_saved_model(Path(tmp))


class SegmentationModel:
    """The exported model's ``predict_images`` signature, fed uint8 photos of any size."""

    def __init__(self, folder: Path) -> None:
        try:
            loaded = tf.saved_model.load(str(folder))
        except (OSError, ValueError, tf.errors.OpError) as err:
            raise ModelLoadError(f"{folder}: cannot load the SavedModel: {err}") from err
        if SIGNATURE not in loaded.signatures:
            raise ModelLoadError(
                f"{folder}: the SavedModel has no {SIGNATURE!r} signature "
                f"(found: {', '.join(sorted(loaded.signatures)) or 'none'})"
            )
        self.folder = folder
        # Keep the loaded object alive: the signature's variables belong to it.
        self._loaded = loaded
        self._predict = loaded.signatures[SIGNATURE]

    def probabilities(self, photos: Sequence[np.ndarray], *, tta: bool = False) -> list[np.ndarray]:
        """Car probability per pixel, float32 (H, W) at each photo's own size, in input order.

        Photos (uint8 (H, W, 3)) of one size go through the graph together, one call per size.
        ``tta`` averages each photo's prediction with that of its mirror image (flipped back),
        one call for both so the batch stays large.
        """
        result: list[np.ndarray | None] = [None] * len(photos)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, photo in enumerate(photos):
            by_size.setdefault(photo.shape, []).append(index)
        for indices in by_size.values():
            batch = np.stack([photos[i] for i in indices]).astype(np.float32) / 255.0
            if tta:
                batch = np.concatenate([batch, batch[:, :, ::-1]])
            probs = self._predict(images=tf.constant(batch))["probabilities"].numpy()
            if tta:
                plain, mirrored = np.split(probs, 2)
                probs = (plain + mirrored[:, :, ::-1]) / 2.0
            for i, prob in zip(indices, probs, strict=True):
                result[i] = prob.astype(np.float32, copy=False)
        return result  # type: ignore[return-value]


@contextlib.contextmanager
def open_model(path: str | Path) -> Iterator[SegmentationModel]:
    """Load the model behind ``--model`` for the duration of a ``with`` block."""
    with saved_model_dir(path) as folder:
        yield SegmentationModel(folder)


def to_mask(probabilities: np.ndarray) -> np.ndarray:
    """Binary mask uint8 {0, 1} from probabilities, by the one threshold used everywhere."""
    return (probabilities > THRESHOLD).astype(np.uint8)
