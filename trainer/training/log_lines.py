"""The ``name=value`` lines the entry point prints for SageMaker's metric definitions to scrape.

SageMaker reads a training job's metrics from its log with regexes (``MetricDefinitions``: "a
metric that the training algorithm writes to stderr or stdout ... SageMaker publishes each metric
to Amazon CloudWatch", service model ``MetricDefinition``); the local training job scrapes the
same way. The names are declared here, standard library only, because the launcher builds the
regexes from them (``trainer.launch.metrics``) and must not load TensorFlow. No line here contains
``epoch=``: that is the per-epoch line's key, which the tuners count epochs by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# ``model_partial=1``: printed after the export; a stopped job's FinalMetricDataList then says
# whether its model.tar.gz is partial without anyone downloading it.
PARTIAL_METRIC = "model_partial"
# The loss-behaviour debugger's rules (trainer.training.debugger), each counted in its own metric.
DEBUGGER_RULES = (
    "nonfinite_loss",
    "loss_not_decreasing",
    "overfitting",
    "exploding_gradients",
    "vanishing_gradients",
)
FINDINGS_METRIC = "debugger_findings"
GRAD_NORM_METRIC = "grad_norm"


def rule_metric(rule: str) -> str:
    """The metric name of one rule's count: ``debugger_overfitting``."""
    return f"debugger_{rule}"


def debugger_line(findings: Sequence[Mapping[str, Any]], grad_norm: float | None) -> str:
    """The per-epoch debugger line: total and per-rule finding counts so far, the last gradient norm.

    Counts rather than 0/1 flags, so CloudWatch's Maximum over a period shows whether any fired.
    """
    counts = dict.fromkeys(DEBUGGER_RULES, 0)
    for finding in findings:
        counts[finding["rule"]] = counts.get(finding["rule"], 0) + 1
    parts = [f"{FINDINGS_METRIC}={len(findings)}", *(f"{rule_metric(r)}={n}" for r, n in counts.items())]
    if grad_norm is not None and math.isfinite(grad_norm):
        parts.append(f"{GRAD_NORM_METRIC}={grad_norm:.4e}")
    return " ".join(parts)
