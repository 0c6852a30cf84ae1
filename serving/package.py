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

``--offline`` is for endpoints without internet (network isolation, a VPC without NAT): the container
runs ``pip install -r code/requirements.txt`` at start-up, which needs PyPI, unless ``code/lib``
exists, in which case it puts ``code/lib`` on the Python path and ignores requirements.txt
(``serve.py``; TFSC README: "put pre-downloaded dependencies under code/lib"). So the handlers'
dependencies are fetched as wheels for the inference image's Python (3.12 in the TF 2.19 image) and
platform (manylinux x86_64, Ubuntu 22.04) and *unpacked* under ``code/lib`` -- the container does not
install wheels, it imports what is on the path -- and no requirements.txt is written:

    code/lib/numpy/..., code/lib/PIL/..., code/lib/*.dist-info/   the handlers' dependencies

Wheels come from the registry (``pip download --only-binary=:all: --python-version 3.12 --platform
...``) or, with ``--wheelhouse DIR``, from wheels downloaded earlier (pip resolves there with
``--no-index``, so the same tags are enforced without network).
"""

from __future__ import annotations

import argparse
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
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
DEPENDENCIES = ("numpy>=1.26", "Pillow>=10")
REQUIREMENTS = "".join(f"{line}\n" for line in DEPENDENCIES)
VENDORED = ("trainer/__init__.py", "trainer/wire.py", "trainer/studio.py")
# The TF 2.19 inference image: Python 3.12.10 on Ubuntu 22.04 (glibc 2.35), x86_64 (aws-facts Q2).
IMAGE_PYTHON = "3.12"
IMAGE_MACHINE = "x86_64"
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


def manylinux_platforms(machine: str = IMAGE_MACHINE) -> list[str]:
    """pip ``--platform`` tags a glibc-2.35 Linux on ``machine`` loads: manylinux_2_28 and 2014."""
    return [f"manylinux_2_28_{machine}", f"manylinux2014_{machine}"]


def fetch_wheels(
    dest: Path, *, python_version: str, platforms: Sequence[str], wheelhouse: Path | None = None
) -> list[Path]:
    """The handlers' dependencies as binary wheels for ``python_version`` / ``platforms`` in ``dest``.

    From the registry, or only from ``wheelhouse`` (``--no-index``); PackageError with pip's reason.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        *(f"--platform={tag}" for tag in platforms),
        "--dest",
        str(dest),
    ]
    if wheelhouse is not None:
        if not wheelhouse.is_dir():
            raise PackageError(f"--wheelhouse {wheelhouse}: not a folder of wheels")
        command += ["--no-index", "--find-links", str(wheelhouse)]
    result = subprocess.run([*command, *DEPENDENCIES], capture_output=True, text=True)
    if result.returncode != 0:
        where = f"in {wheelhouse}" if wheelhouse else "on the package index"
        raise PackageError(
            f"cannot get wheels of {', '.join(DEPENDENCIES)} for Python {python_version} "
            f"({', '.join(platforms)}) {where}: {result.stderr.strip()[-1500:]}"
        )
    return sorted(dest.glob("*.whl"))


def unpack_wheels(wheels: Sequence[Path], lib: Path) -> None:
    """Unpack wheels (zip files) into ``lib``, as pip would lay them out in site-packages."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if member.filename.startswith(("/", "..")) or ".." in Path(member.filename).parts:
                    raise PackageError(f"{wheel.name}: unsafe path {member.filename!r}")
            archive.extractall(lib)


def package(
    model_dir: Path,
    out: Path,
    *,
    model_name: str = MODEL_NAME,
    offline: bool = False,
    python_version: str = IMAGE_PYTHON,
    platforms: Sequence[str] | None = None,
    wheelhouse: Path | None = None,
) -> list[str]:
    """Write ``out`` (model.tar.gz) from the newest SavedModel in ``model_dir``; the member names.

    ``offline``: the dependencies unpacked under code/lib for ``python_version`` and ``platforms``
    (default: the inference image's), no requirements.txt.
    """
    if not model_dir.is_dir():
        raise PackageError(
            f"--model-dir {model_dir}: not a folder (expected a SavedModel folder or a "
            f"model_dir holding {model_name}/<version>/)"
        )
    try:
        folder = find_saved_model(model_dir)
    except ModelLoadError as err:
        raise PackageError(str(err)) from None
    _check_signatures(folder)
    version = folder.name if folder.name.isdigit() else "1"
    members = [(folder, f"{model_name}/{version}"), (HANDLERS, "code/inference.py")]
    members += [(REPO / path, f"code/{path}") for path in VENDORED]
    with tempfile.TemporaryDirectory(prefix="carvana-package-") as scratch, atomic_path(out) as tmp:
        if offline:
            lib = Path(scratch) / "lib"
            wheels = fetch_wheels(
                Path(scratch) / "wheels",
                python_version=python_version,
                platforms=platforms or manylinux_platforms(),
                wheelhouse=wheelhouse,
            )
            unpack_wheels(wheels, lib)
            members.append((lib, "code/lib"))
        with tarfile.open(tmp, "w:gz") as archive:
            for source, name in members:
                archive.add(source, arcname=name, filter=_tarinfo)
            if not offline:
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
    parser.add_argument(
        "--model-dir",
        required=True,
        type=Path,
        help="SavedModel folder, or a model_dir holding unet/<version>/ (the newest is used)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the archive to write, e.g. model.tar.gz")
    parser.add_argument(
        "--model-name", default=MODEL_NAME, help="TF Serving model name (folder in the archive)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="for endpoints without internet: unpack the handlers' dependencies (numpy, "
        "Pillow) under code/lib instead of code/requirements.txt, which the container "
        "would pip-install at start-up",
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        help="with --offline: take the wheels from this folder (pip --no-index) instead of the package index",
    )
    parser.add_argument(
        "--python-version",
        default=IMAGE_PYTHON,
        help=f"with --offline: the container's Python (default {IMAGE_PYTHON}, the TF 2.19 "
        "inference image's)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        dest="platforms",
        help="with --offline: pip platform tag(s) (default: "
        f"{' '.join(manylinux_platforms())}; {platform.machine()} here)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.offline and (args.wheelhouse or args.platforms or args.python_version != IMAGE_PYTHON):
        parser.error("--wheelhouse, --python-version and --platform go with --offline")
    try:
        names = package(
            args.model_dir,
            args.out,
            model_name=args.model_name,
            offline=args.offline,
            python_version=args.python_version,
            platforms=args.platforms,
            wheelhouse=args.wheelhouse,
        )
    except PackageError as err:
        parser.error(str(err))
    size = args.out.stat().st_size
    model = next(name for name in names if name.endswith("saved_model.pb")).rsplit("/", 1)[0]
    dependencies = (
        f"code/lib/ ({', '.join(DEPENDENCIES)} for Python {args.python_version})"
        if args.offline
        else "code/requirements.txt"
    )
    print(
        f"wrote {args.out} ({size / 1e6:.1f} MB, {len(names)} entries): {model}/ (SavedModel), "
        f"code/inference.py, {dependencies}, code/trainer/wire.py (vendored)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
