"""The metrics of a training job, read from its log the way SageMaker reads them.

The entry point prints ``epoch=3 loss=0.0412 dice=0.9731 val_loss=0.0398 val_dice=0.9802`` once per
epoch; SageMaker scrapes its log with these regexes (the estimator's ``metric_definitions``), and so
does the local training job (``local_aws.training_job``). The leading space keeps ``" loss="`` and
``" dice="`` from matching inside ``val_loss=`` / ``val_dice=``. The tuners' objective is here too.
"""

from __future__ import annotations

import re

METRIC_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"Name": "epoch", "Regex": r"epoch=(\d+)"},
    {"Name": "loss", "Regex": r" loss=([0-9.]+)"},
    {"Name": "dice", "Regex": r" dice=([0-9.]+)"},
    {"Name": "val_loss", "Regex": r"val_loss=([0-9.]+)"},
    {"Name": "val_dice", "Regex": r"val_dice=([0-9.]+)"},
)
OBJECTIVE_METRIC = "val_dice"
OBJECTIVE_TYPE = "Maximize"
_COMPILED = tuple((d["Name"], re.compile(d["Regex"])) for d in METRIC_DEFINITIONS)


def scrape_metrics(line: str) -> dict[str, float]:
    """The metric values one log line reports, found the way SageMaker finds them (first match)."""
    found: dict[str, float] = {}
    for name, pattern in _COMPILED:
        match = pattern.search(line)
        if match:
            try:
                found[name] = float(match.group(1))
            except ValueError:  # "1.2.3" matches [0-9.]+ but is no number; SageMaker drops it too
                continue
    return found
