"""``carvana package``: build model.tar.gz in the layout the SageMaker TF Serving container loads.

    unet/<version>/saved_model.pb, unet/<version>/variables/...   the SavedModel (newest version)
    code/inference.py                                            serving/inference.py (the handlers)
    code/requirements.txt                                        what the handlers import besides stdlib
    code/trainer/__init__.py, code/trainer/wire.py              the wire contract, vendored

The handlers import ``trainer.wire``; the container always puts ``code/`` on the Python path, so the
same media types, negotiation, limits, RLE and cut-out that the Lambda and ``carvana predict`` use
run in the endpoint without installing the project (and without TensorFlow in the Python service).
The archive is written under a temporary name and renamed, so a failed run never leaves a truncated
model.tar.gz behind.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
from pathlib import Path

from trainer.atomic import atomic_path
from trainer.command import CarvanaError
from trainer.saved_model_io import ModelLoadError, find_saved_model, signature_defs
from trainer.wire import MODEL_NAME, SIGNATURE

REPO = Path(__file__).resolve().parents[1]
HANDLERS = REPO / "serving" / "inference.py"
# The handlers' third-party imports; everything else they need is vendored under code/. Not under
# code/lib: when code/lib exists the container skips code/requirements.txt (its serve.py logs
# "loading modules in code/lib, ignoring requirements.txt"), and Pillow would never be installed.
REQUIREMENTS = "numpy>=1.26\nPillow>=10\n"
VENDORED = ("trainer/__init__.py", "trainer/wire.py")
REQUIRED_SIGNATURE = SIGNATURE


class PackageError(CarvanaError, ValueError):
    """The model folder cannot be packaged; the message names the path and what was expected."""


def _tarinfo(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner-neutral entries with plain permissions (the archive is built on any machine)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _check_signatures(folder: Path) -> None:
    signatures = signature_defs(folder)
    if REQUIRED_SIGNATURE not in signatures:
        found = ", ".join(sorted(name for name in signatures if not name.startswith("__"))) or "none"
        raise PackageError(
            f"{folder}: the SavedModel has no {REQUIRED_SIGNATURE!r} signature, which code/inference.py "
            f"calls (found: {found}); export it with trainer/export.py"
        )


def package(model_dir: Path, out: Path, *, model_name: str = MODEL_NAME) -> list[str]:
    """Write ``out`` (model.tar.gz) from the newest SavedModel in ``model_dir``; the member names."""
    if not model_dir.is_dir():
        raise PackageError(f"--model-dir {model_dir}: not a folder (expected a SavedModel folder or a "
                           f"model_dir holding {model_name}/<version>/)")
    try:
        folder = find_saved_model(model_dir)
    except ModelLoadError as err:
        raise PackageError(str(err)) from None
    _check_signatures(folder)
    version = folder.name if folder.name.isdigit() else "1"
    members = [(folder, f"{model_name}/{version}"), (HANDLERS, "code/inference.py")]
    members += [(REPO / path, f"code/{path}") for path in VENDORED]
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as archive:
            for source, name in members:
                archive.add(source, arcname=name, filter=_tarinfo)
            requirements = REQUIREMENTS.encode()
            info = _tarinfo(tarfile.TarInfo("code/requirements.txt"))
            info.size, info.mtime = len(requirements), int(time.time())
            archive.addfile(info, io.BytesIO(requirements))
        with tarfile.open(tmp) as archive:
            names = archive.getnames()
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana package",
        description="Build model.tar.gz for the SageMaker TF Serving container: the SavedModel under "
        "unet/<version>/, code/inference.py, code/requirements.txt and the vendored code/trainer/wire.py.",
    )
    parser.add_argument("--model-dir", required=True, type=Path,
                        help="SavedModel folder, or a model_dir holding unet/<version>/ (the newest is used)")
    parser.add_argument("--out", required=True, type=Path, help="the archive to write, e.g. model.tar.gz")
    parser.add_argument("--model-name", default=MODEL_NAME,
                        help="TF Serving model name (folder in the archive)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = package(args.model_dir, args.out, model_name=args.model_name)
    except PackageError as err:
        parser.error(str(err))
    size = args.out.stat().st_size
    model = next(name for name in names if name.endswith("saved_model.pb")).rsplit("/", 1)[0]
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, {len(names)} entries): {model}/ (SavedModel), "
          "code/inference.py, code/requirements.txt, code/trainer/wire.py (vendored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
