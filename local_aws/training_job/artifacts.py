"""What a training job leaves: its synced checkpoint folder and the archives SageMaker uploads.

At the end the model folder becomes ``<work>/<job-name>/output/model.tar.gz`` and ``output/data``
becomes ``output.tar.gz``, as SageMaker uploads them to ``s3://<output_path>/<job-name>/output/``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.atomic import atomic_path

if TYPE_CHECKING:
    from local_aws.training_job.toolkit import JobLayout


def sync_checkpoints(layout: JobLayout, checkpoint_uri: str | None) -> None:
    """``/opt/ml/checkpoints`` as SageMaker keeps it: in sync with ``checkpoint_uri`` when one is given.

    SageMaker restores the folder from checkpoint_s3_uri when a job (or its spot restart) begins and
    uploads what the job writes there; a link to a local folder behaves the same way.
    """
    if checkpoint_uri:
        checkpoint_folder = Path(checkpoint_uri).expanduser().resolve()
        checkpoint_folder.mkdir(parents=True, exist_ok=True)
        layout.checkpoints.symlink_to(checkpoint_folder, target_is_directory=True)
    else:
        layout.checkpoints.mkdir()


def tar_folder(folder: Path, target: Path) -> Path:
    """``folder``'s contents at the root of a gzipped tar, like SageMaker's artifact upload."""
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return target


def package_artifacts(layout: JobLayout, status: str) -> tuple[str | None, str | None]:
    """``(model.tar.gz, output.tar.gz)`` paths; SageMaker uploads them for Completed and Stopped jobs.

    A failed job still uploads its output data when it wrote any (a failure report, curves so far).
    """
    model_artifact = output_artifact = None
    if status != "Failed":
        model_artifact = str(tar_folder(layout.model, layout.artifacts / "model.tar.gz"))
    if status != "Failed" or any(layout.output_data.iterdir()):
        output_artifact = str(tar_folder(layout.output_data, layout.artifacts / "output.tar.gz"))
    return model_artifact, output_artifact
