"""The metrics of a training job, read from its log the way SageMaker reads them.

The entry point prints ``epoch=3 loss=0.0412 dice=0.9731 val_loss=0.0398 val_dice=0.9802`` once per
epoch, the debugger's counts after it (``debugger_findings=1 debugger_overfitting=1 ...
grad_norm=3.1e-01``) and ``model_partial=0|1`` after the export (names in
``trainer.training.log_lines``). SageMaker scrapes its log with these regexes (the estimator's and
the tuner's ``metric_definitions``; at most 40, service model ``AlgorithmSpecification``) and
publishes each to CloudWatch under ``/aws/sagemaker/TrainingJobs``; the local training job
(``local_aws.training_job``) scrapes the same way. The leading space keeps ``" loss="`` and
``" dice="`` from matching inside ``val_loss=`` / ``val_dice=``. The tuners' objective is here too.
"""

from __future__ import annotations

import re

from trainer.training.log_lines import (
    DEBUGGER_RULES,
    FINDINGS_METRIC,
    GRAD_NORM_METRIC,
    PARTIAL_METRIC,
    rule_metric,
)

MAX_METRIC_DEFINITIONS = 40  # CreateTrainingJob's limit
METRIC_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"Name": "epoch", "Regex": r"epoch=(\d+)"},
    {"Name": "loss", "Regex": r" loss=([0-9.]+)"},
    {"Name": "dice", "Regex": r" dice=([0-9.]+)"},
    {"Name": "val_loss", "Regex": r"val_loss=([0-9.]+)"},
    {"Name": "val_dice", "Regex": r"val_dice=([0-9.]+)"},
    {"Name": FINDINGS_METRIC, "Regex": rf"{FINDINGS_METRIC}=(\d+)"},
    *({"Name": rule_metric(rule), "Regex": rf"{rule_metric(rule)}=(\d+)"} for rule in DEBUGGER_RULES),
    {"Name": GRAD_NORM_METRIC, "Regex": rf"{GRAD_NORM_METRIC}=([0-9.]+e[-+][0-9]+)"},
    {"Name": PARTIAL_METRIC, "Regex": rf"{PARTIAL_METRIC}=([01])"},
)
assert len(METRIC_DEFINITIONS) <= MAX_METRIC_DEFINITIONS
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
