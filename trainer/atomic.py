"""Write output files whole or not at all.

A report, CSV, mask or checkpoint that a crash (or Ctrl-C, or a spot instance's SIGTERM) leaves
half-written looks valid to the next reader; writing under a temporary name in the same folder and
renaming it with ``os.replace`` (atomic on one file system) means a reader sees either the old file
or the complete new one. This is the project's one such mechanism: every writer goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _split_suffix(name: str) -> tuple[str, str]:
    """``"best.weights.h5"`` -> ``("best", ".weights.h5")``: the name and its whole multi-part suffix.

    The whole suffix, not just the last part, because some writers check more than the final
    extension: Keras refuses a weights file not ending in ``.weights.h5``.
    """
    suffix = "".join(Path(name).suffixes)
    return name[: len(name) - len(suffix)], suffix


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    The temporary name is hidden (a leading dot, so globs like ``ckpt-*.keras`` skip it) and keeps
    the full suffix (``.weights.h5``, ``.tar.gz``), so writers that choose or check a format by
    extension (Keras, Pillow, matplotlib) still do the right thing. On an exception it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs are meant to be shared like any other file.
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(
    path: str | Path, payload: Any, *, indent: int = 2, default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``payload`` as indented JSON plus a newline, atomically.

    Manifests, summaries and job configs are read by other processes (a resumed conversion, a
    tuner, the training container) that would choke on a truncated file.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent, default=default) + "\n")
