"""The code a training job runs: the ``trainer`` package, a one-line entry script, its requirements.

The launcher itself (``trainer/launch/``) is left out of the staged package: it imports the
SageMaker SDK and the local stand-ins (``local_aws``), neither of which a job needs or has.

SageMaker unpacks ``source_dir`` into ``/opt/ml/code``, ``pip install``s its ``requirements.txt`` and
runs ``python train.py --name value ...`` there, so ``/opt/ml/code`` is first on ``sys.path``. The
staged folder therefore holds the ``trainer`` package itself (``import trainer.train`` resolves to
it) and a ``train.py`` shim beside it: the entry point cannot be ``trainer/train.py`` directly, since
a script run by path does not make its own folder's parent importable. The local backend stages the
very same folder into ``<job>/opt/ml/code`` and runs it the same way, so an import that would break
in the container breaks locally first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import trainer

ENTRY_POINT = "train.py"
PACKAGE_DIR = Path(trainer.__file__).resolve().parent
# The launcher (and its SageMaker SDK import) is not needed inside the job; caches never are.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "launch")
# What the TF 2.19 training container lacks. TensorFlow, Keras and NumPy are deliberately absent:
# the container's builds match its CUDA libraries, and a pip reinstall would replace them.
CONTAINER_REQUIREMENTS = ("matplotlib>=3.8", "pillow>=10", "tqdm>=4.66")

_SHIM = '''"""SageMaker entry point: runs trainer.train from the package staged beside this file."""

import sys

from trainer.train import main

if __name__ == "__main__":
    sys.exit(main())
'''


def stage_training_source(dest: str | Path) -> Path:
    """Write ``dest/{train.py, requirements.txt, trainer/...}`` and return ``dest``.

    ``dest`` is replaced if it exists, so a re-run never mixes old and new modules.
    """
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PACKAGE_DIR, dest / "trainer", ignore=_IGNORE)
    (dest / ENTRY_POINT).write_text(_SHIM)
    (dest / "requirements.txt").write_text("\n".join(CONTAINER_REQUIREMENTS) + "\n")
    return dest
