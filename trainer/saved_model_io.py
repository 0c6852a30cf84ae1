"""Find an exported U-Net SavedModel and run it on photos at their original size.

``carvana evaluate`` and ``carvana predict`` both take ``--model`` as whatever a person has at hand:
the SavedModel folder itself (``<model_dir>/unet/1``), the training job's ``model_dir`` holding
``unet/<version>/``, or the ``model.tar.gz`` a SageMaker job (or ``carvana package``) leaves. This
module is the one place that turns any of those into loaded signatures, so both commands read the
model exactly as TF Serving would, through the exported graph, rather than rebuilding a Keras model
that could drift from what is deployed. They send the photo's *bytes* to the endpoint's own
``mask_png`` signature (``mask_png_tta`` for test-time augmentation), or ``alpha_png`` for the
probabilities the finished photos and the review flag are made of: the graph decodes and resizes,
so a mask made offline is the endpoint's mask, pixel for pixel. It also reads a SavedModel's
signature definitions without loading it (``carvana package`` checks them; the local endpoint
prints them as TF Serving's metadata call does).
"""

from __future__ import annotations

import contextlib
import re
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from trainer.command import CarvanaError

# Probabilities strictly above THRESHOLD are car: the exported "mask" output's own rule, so a mask
# from here equals the endpoint's.
from trainer.wire import (
    ALPHA_SIGNATURE,
    ALPHA_TTA_SIGNATURE,
    INPUT_NAME,
    MODEL_NAME,
    ORIENTATION_INPUT,
    SIGNATURE,
    THRESHOLD,
    TTA_SIGNATURE,
    decode_mask_png,
    exif_orientation,
)

# The signature that takes decoded float images (for notebooks that already hold the pixels).
IMAGES_SIGNATURE = "predict_images"


class ModelLoadError(CarvanaError, ValueError):
    """``--model`` does not point at a loadable SavedModel; the message names the path."""


class PhotoDecodeError(CarvanaError, ValueError):
    """The graph cannot decode one photo of a batch: ``index`` says which, the message why."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def op_error_text(message: str) -> str:
    """TF's error text without the Python-side preamble and op name (TF Serving never shows them)."""
    _, marker, rest = message.partition("<stack traces unavailable>\n")
    return re.sub(r" \[Op:[^\]]*\]$", "", (rest if marker else message).strip())


def signature_defs(folder: Path) -> dict[str, Any]:
    """The signature defs as TF Serving's metadata call prints them (proto field names, defaults).

    Read from saved_model.pb alone: nothing is loaded, no variables are restored.
    """
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((folder / "saved_model.pb").read_bytes())
    return {
        name: json_format.MessageToDict(
            signature, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for name, signature in saved_model.meta_graphs[0].signature_def.items()
    }


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
    """The exported model's signatures: photo bytes in (the endpoint's way), masks out."""

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
        # Keep the loaded object alive: the signatures' variables belong to it.
        self._loaded = loaded

    def _signature(self, name: str) -> Any:
        if name not in self._loaded.signatures:
            raise ModelLoadError(
                f"{self.folder}: the SavedModel has no {name!r} signature (found: "
                f"{', '.join(sorted(self._loaded.signatures))}); export it again with trainer/export.py"
            )
        return self._loaded.signatures[name]

    def _call_bytes(self, name: str, photos: Sequence[bytes], outputs: Sequence[str]) -> list[dict[str, Any]]:
        """One dict of ``outputs`` per photo from signature ``name``, fed the photo bytes and their
        EXIF orientation as the endpoint feeds them; PhotoDecodeError names a photo the graph cannot
        decode (the batch is retried photo by photo to find it)."""
        signature = self._signature(name)

        def run(batch: Sequence[bytes]) -> list[dict[str, Any]]:
            result = signature(
                **{
                    INPUT_NAME: tf.constant(list(batch), dtype=tf.string),
                    ORIENTATION_INPUT: tf.constant([exif_orientation(photo) for photo in batch], tf.int32),
                }
            )
            columns = {key: result[key].numpy() for key in outputs}
            return [
                {
                    key: bytes(value[i]) if value.dtype == object else value[i].item()
                    for key, value in columns.items()
                }
                for i in range(len(batch))
            ]

        if not photos:
            return []
        try:
            return run(photos)
        except tf.errors.InvalidArgumentError:
            for index, photo in enumerate(photos):
                try:
                    run([photo])
                except tf.errors.InvalidArgumentError as err:
                    raise PhotoDecodeError(index, op_error_text(err.message).splitlines()[0]) from None
            raise

    def alphas(self, photos: Sequence[bytes], *, tta: bool = False) -> list[dict[str, Any]]:
        """Per photo, the ``alpha_png`` signature's answer (``alpha_png_tta`` with ``tta``): the
        ``alpha_png_bytes`` (probabilities, 8-bit), ``mask_png_bytes`` (the mask_png mask),
        ``flip_disagreement``, ``height``, ``width``, ``car_fraction``: what the endpoint's
        finished photos and JSON answer are made of (trainer/studio.py)."""
        outputs = (
            "alpha_png_bytes",
            "mask_png_bytes",
            "flip_disagreement",
            "height",
            "width",
            "car_fraction",
        )
        return self._call_bytes(ALPHA_TTA_SIGNATURE if tta else ALPHA_SIGNATURE, photos, outputs)

    def mask_pngs(self, photos: Sequence[bytes], *, tta: bool = False) -> list[bytes]:
        """The mask PNG (1-bit grey, each photo's size) per JPEG/PNG photo, in input order, one call.

        The photos go to ``mask_png`` exactly as the endpoint sends them (``mask_png_tta`` with
        ``tta``: each photo averaged with its mirror image inside the graph), with the EXIF
        orientation the endpoint's handler reads from the same bytes, so the decode, the turn
        upright, the resizes and the threshold are the graph's and each mask is in the orientation a
        screen shows. A photo the graph cannot decode raises PhotoDecodeError naming its index (the
        batch is retried photo by photo to find it).
        """
        rows = self._call_bytes(TTA_SIGNATURE if tta else SIGNATURE, photos, ("mask_png_bytes",))
        return [row["mask_png_bytes"] for row in rows]

    def masks(self, photos: Sequence[bytes], *, tta: bool = False) -> list[np.ndarray]:
        """uint8 {0, 1} masks ``(H, W)`` at each photo's size: :meth:`mask_pngs`, decoded."""
        return [decode_mask_png(png) for png in self.mask_pngs(photos, tta=tta)]

    def probabilities(self, photos: Sequence[np.ndarray], *, tta: bool = False) -> list[np.ndarray]:
        """Car probability per pixel, float32 (H, W), for photos already decoded to uint8 RGB.

        For notebooks that hold the pixels; ``carvana predict`` and ``carvana evaluate`` use
        :meth:`mask_pngs`, which decodes as the endpoint does. Photos of one size go through the
        ``predict_images`` graph together, one call per size; ``tta`` averages each photo's
        prediction with that of its mirror image (flipped back).
        """
        predict = self._signature(IMAGES_SIGNATURE)
        result: list[np.ndarray | None] = [None] * len(photos)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, photo in enumerate(photos):
            by_size.setdefault(photo.shape, []).append(index)
        for indices in by_size.values():
            batch = np.stack([photos[i] for i in indices]).astype(np.float32) / 255.0
            if tta:
                batch = np.concatenate([batch, batch[:, :, ::-1]])
            probs = predict(images=tf.constant(batch))["probabilities"].numpy()
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
