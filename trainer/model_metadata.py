"""How a training run describes the model it exported: ``assets.extra/training-metadata.json``.

SageMaker uploads whatever ``/opt/ml/model`` holds when a job ends, also when it was *stopped*
(MaxRuntimeInSeconds, spot reclaim, StopTrainingJob: SIGTERM, then 120 s): "this intermediate data
is a valid model artifact" (service model, ``StoppingCondition``). Such a model is trained less than
asked, so the run says so in a file that travels with the SavedModel wherever it goes (``carvana
package``, the SDK's repack, TF Serving): ``<name>/<version>/assets.extra/`` is the SavedModel
folder TF Serving leaves alone (it is where warm-up requests live), unlike a file beside
``unet/`` at the archive's root. ``carvana deploy`` reads it to say that a model is partial.

Standard library only: the launcher reads it without loading TensorFlow.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.atomic import write_json

METADATA_NAME = "training-metadata.json"
METADATA_FOLDER = "assets.extra"


def write_metadata(version_dir: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``<version_dir>/assets.extra/training-metadata.json`` (atomically) and return its path."""
    path = Path(version_dir) / METADATA_FOLDER / METADATA_NAME
    write_json(path, dict(metadata))
    return path


def read_metadata(model: str | Path) -> dict[str, Any] | None:
    """The metadata of the newest export in a model folder or model.tar.gz; None when there is none.

    Accepts what ``carvana deploy --model`` accepts: a SavedModel folder, a model_dir holding
    ``unet/<version>/``, or a model.tar.gz (read in place, nothing extracted).
    """
    path = Path(model)
    if path.is_dir():
        found = sorted(path.glob(f"**/{METADATA_FOLDER}/{METADATA_NAME}"), key=_version_key)
        return json.loads(found[-1].read_text()) if found else None
    if not path.is_file() or not tarfile.is_tarfile(path):
        return None
    with tarfile.open(path) as archive:
        suffix = f"{METADATA_FOLDER}/{METADATA_NAME}"
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and m.name.endswith(suffix)),
            key=lambda m: _version_key(Path(m.name)),
        )
        if not members:
            return None
        handle = archive.extractfile(members[-1])
        return json.loads(handle.read()) if handle else None


def _version_key(path: Path) -> int:
    """The numeric version folder above ``assets.extra`` (TF Serving serves the highest)."""
    version = path.parent.parent.name
    return int(version) if version.isdigit() else -1


def describe(metadata: Mapping[str, Any] | None) -> str:
    """One line for a person: ``partial model (SIGTERM after 3 of 40 epochs; best epoch 2 ...)``."""
    if metadata is None:
        return "no training metadata"
    best = metadata.get("best_epoch")
    dice = metadata.get("val_dice")
    weights = (
        f"weights of the best epoch ({best}, val_dice {dice:.4f})"
        if metadata.get("weights") == "best_checkpoint" and best and dice is not None
        else "the weights as they were when it stopped (no epoch had finished)"
        if metadata.get("weights") == "current"
        else "the best epoch's weights"
    )
    epochs = f"{metadata.get('epochs_completed')} of {metadata.get('epochs_planned')} epochs"
    if metadata.get("partial"):
        return f"PARTIAL model: training was stopped ({metadata.get('reason')}) after {epochs}; {weights}"
    return f"complete model ({metadata.get('reason')}) after {epochs}; {weights}"
