"""notebooks/train_unet.ipynb runs top to bottom (local backend, synthetic sample, tiny sizes).

It is executed with nbclient in a real kernel; parameters are injected the way papermill does it, as
a cell right after the one tagged ``parameters``. The test then checks what the notebook printed
(the Dice on validation photos, the endpoint's answer) and the files it wrote.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_unet.ipynb"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inject_parameters(notebook: nbformat.NotebookNode, values: dict[str, object]) -> None:
    """Insert ``NAME = value`` assignments after the cell tagged ``parameters`` (papermill's way)."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "# Injected parameters\n" + "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


def test_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "run"
    inject_parameters(notebook, {"WORK": str(work), "EPOCHS": 1, "TUNE_TRIALS": 1, "TUNE_EPOCHS": 1,
                                 "DEPTH": 2, "BASE_FILTERS": 4, "SHOW_PHOTOS": 3, "PORT": _free_port()})
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs if output.output_type == "stream")
    dice = re.search(r"mean Dice on 3 validation photos: ([0-9.]+)", text)
    assert dice, text[-3000:]
    assert 0.0 <= float(dice.group(1)) <= 1.0
    assert re.search(r"endpoint mask 192x128, Dice [0-9.]+", text), text[-3000:]
    assert "deleted endpoint" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # tuning plot, curves, masks

    manifest = json.loads((work / "tfrecords" / "manifest.json").read_text())
    assert manifest["splits"]["validation"]["count"] > 0
    jobs = sorted(p.name for p in (work / "jobs").iterdir() if (p / "description.json").is_file())
    assert len(jobs) == 1 and jobs[0].startswith("carvana-unet-")
    assert (work / "jobs" / jobs[0] / "output" / "model.tar.gz").is_file()
    tunings = list((work / "jobs").glob("carvana-tune-*/results.csv"))
    assert len(tunings) == 1 and len(tunings[0].read_text().splitlines()) == 2
    for name in ("curves.png", "masks.png", "model.tar.gz"):
        assert (work / name).stat().st_size > 0, name


@pytest.fixture(autouse=True)
def _quiet_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
