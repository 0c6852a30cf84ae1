"""Write output files whole or not at all.

A report, CSV or mask that a crash (or Ctrl-C) leaves half-written looks valid to the next reader;
writing under a temporary name in the same folder and renaming it with ``os.replace`` (atomic on
one file system) means a reader sees either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    The temporary name keeps the final suffix, so writers that choose a format by extension
    (Pillow, matplotlib) still do the right thing. On an exception it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
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
