"""What ships never imports the local AWS stand-ins: the tree alone says what runs on AWS."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("trainer", "serving", "lambda")
# The launcher runs on the user's machine and picks a backend, the local stand-in among them; it is
# left out of the training job's source (trainer/launch/source.py, tested in test_local_training_job).
LAUNCHER = REPO / "trainer" / "launch"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("folder", SHIPPED)
def test_shipped_code_never_imports_local_aws(folder: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in imported_modules(path) if m.startswith("local_aws"))
        for path in sorted((REPO / folder).rglob("*.py"))
        if LAUNCHER not in path.parents
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
    assert len(offenders) >= 3  # the folder was really read


def test_the_wire_contract_imports_only_the_standard_library_at_module_level() -> None:
    tree = ast.parse((REPO / "trainer" / "wire.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    # The Lambda runtime has boto3 and the standard library only: NumPy and Pillow load lazily.
    assert sorted(top - sys.stdlib_module_names) == []
    assert {"base64", "json"} <= top  # the file was really read
