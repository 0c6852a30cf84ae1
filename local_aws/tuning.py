"""Local hyperparameter tuning: Optuna's TPE over the SageMaker tuner's ranges, one local job a trial.

The stand-in for a SageMaker HyperParameterTuningJob. The ranges (``trainer.launch.search_space``)
and the objective (``trainer.launch.metrics``) are the ones the SageMaker backend sends, so a
search tried here is the search launched on AWS. SageMaker's Bayesian strategy and Optuna's TPE are
both sequential model-based searches; SageMaker's "Auto" early stopping (stop a job whose objective
at an epoch is worse than the median of earlier jobs at that epoch) is Optuna's median pruner.

The study lives in SQLite under ``<work>/<tuning-job>/study.db``: running the same tuning job again
resumes it. Trials that completed, were pruned or whose job failed count against ``max_jobs`` and
are never rerun (SageMaker counts failed jobs too); a trial cut short by Ctrl-C or a killed process
does not count, so its slot is run again.
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from local_aws.training_job.job import run_job
from trainer.atomic import atomic_path
from trainer.launch.metrics import OBJECTIVE_METRIC
from trainer.launch.search_space import Categorical, Continuous, Integer, Range
from trainer.launch.specs import TuningResult, TuningSpec
from trainer.training.hyperparameters import HyperValue
from trainer.training.plots import save_figure

LEARNING_RATE = "learning-rate"
# Early stopping judges a trial only after a few epochs, and only once two trials are there to compare.
PRUNER_WARMUP_EPOCHS = 3
PRUNER_STARTUP_TRIALS = 2


def suggest(trial: Trial, space: Range) -> HyperValue:
    """One range as an Optuna suggestion (the SageMaker backend turns the same range into a Parameter)."""
    if isinstance(space, Categorical):
        return cast(HyperValue, trial.suggest_categorical(space.name, list(space.values)))
    if isinstance(space, Continuous):
        return trial.suggest_float(space.name, space.low, space.high, log=space.log)
    if isinstance(space, Integer):
        return trial.suggest_int(space.name, space.low, space.high)
    raise TypeError(f"unknown range type {type(space).__name__}")


def counts_against_budget(trial: FrozenTrial) -> bool:
    """Finished trials count; interrupted ones (FAIL without a job failure) get their slot back."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "failure_reason" in trial.user_attrs


def open_study(spec: TuningSpec, root: Path) -> optuna.Study:
    """Create or reload the study; trials left RUNNING by a killed process are marked failed."""
    storage = f"sqlite:///{root / 'study.db'}"
    existing = 0
    with contextlib.suppress(KeyError):  # KeyError: no such study yet
        existing = len(optuna.load_study(study_name=spec.name, storage=storage).trials)
    # Re-seeding with the trial count keeps a resumed search from replaying its first suggestions.
    sampler = optuna.samplers.TPESampler(
        seed=spec.seed + existing, n_startup_trials=max(PRUNER_STARTUP_TRIALS, spec.max_jobs // 3)
    )
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
        )
        if spec.early_stopping
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
    return study


def tune(spec: TuningSpec, work: str | Path, *, stream: TextIO | None = None) -> TuningResult:
    """Run (or resume) the search until ``spec.max_jobs`` trials have finished; report the best."""
    stream = sys.stdout if stream is None else stream
    root = Path(work).resolve() / spec.name
    root.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, root)
    done = sum(counts_against_budget(t) for t in study.trials)
    remaining = max(0, spec.max_jobs - done)
    print(
        f"[{spec.name}] {done} of {spec.max_jobs} trials already finished; running {remaining}",
        file=stream,
        flush=True,
    )

    def objective(trial: Trial) -> float:
        params = {space.name: suggest(trial, space) for space in spec.ranges}
        job_name = f"{spec.name}-{trial.number:03d}"
        trial.set_user_attr("job_name", job_name)

        def on_epoch(metrics: Mapping[str, float]) -> bool:
            if OBJECTIVE_METRIC not in metrics:
                return False
            trial.report(metrics[OBJECTIVE_METRIC], step=int(metrics["epoch"]))
            return spec.early_stopping and trial.should_prune()

        result = run_job(
            spec.job.with_hyperparameters(job_name, params), root / "jobs", on_epoch=on_epoch, stream=stream
        )
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("metrics", dict(result.final_metrics))
        value = result.final_metrics.get(OBJECTIVE_METRIC)
        if result.status == "Failed" or value is None:
            trial.set_user_attr(
                "failure_reason", result.failure_reason or f"no {OBJECTIVE_METRIC} in the log"
            )
            return math.nan  # Optuna records the trial as failed
        if result.status == "Stopped":
            raise optuna.TrialPruned()
        return value

    before = len(study.trials)
    if remaining:
        study.optimize(objective, n_trials=remaining)
    trials = study.trials
    results_csv = write_results(trials, spec.ranges, root / "results.csv")
    plot_png = plot_trials(trials, spec.ranges, root / "tuning.png")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    result = TuningResult(
        tuning_job_name=spec.name,
        best_job_name=best.user_attrs["job_name"] if best else None,
        best_objective=best.value if best else None,
        best_hyperparameters=dict(best.params) if best else {},
        best_metrics=dict(best.user_attrs.get("metrics", {})) if best else {},
        trials_run_now=len(trials) - before,
        results_csv=results_csv,
        plot_png=plot_png,
        status="Completed" if best else "Failed",
    )
    return result


def write_results(trials: Sequence[FrozenTrial], ranges: Sequence[Range], path: Path) -> Path:
    """One row per trial: job, state, the tuned values, the objective and the other final metrics."""
    metric_names = sorted({name for t in trials for name in t.user_attrs.get("metrics", {})} - {"epoch"})
    header = [
        "trial",
        "job_name",
        "state",
        *[r.name for r in ranges],
        OBJECTIVE_METRIC,
        *[m for m in metric_names if m != OBJECTIVE_METRIC],
        "epochs_run",
        "duration_s",
    ]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for t in trials:
            metrics = t.user_attrs.get("metrics", {})
            duration = (
                round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
                if t.datetime_complete and t.datetime_start
                else ""
            )
            writer.writerow(
                [
                    t.number,
                    t.user_attrs.get("job_name", ""),
                    t.state.name,
                    *[t.params.get(r.name, "") for r in ranges],
                    t.value if t.value is not None else "",
                    *[metrics.get(m, "") for m in metric_names if m != OBJECTIVE_METRIC],
                    int(metrics["epoch"]) if "epoch" in metrics else "",
                    duration,
                ]
            )
    return path


def plot_trials(trials: Sequence[FrozenTrial], ranges: Sequence[Range], path: Path) -> Path:
    """Objective per trial (with the best so far) and learning rate against the objective."""
    scored = [t for t in trials if t.state == TrialState.COMPLETE]
    numbers = [t.number for t in scored]
    values = [t.value if t.value is not None else math.nan for t in scored]
    swept = [r for r in ranges if not isinstance(r, Categorical)]
    x_name = (
        LEARNING_RATE
        if any(r.name == LEARNING_RATE for r in ranges)
        else (swept[0].name if swept else ranges[0].name)
    )
    x_log = any(isinstance(r, Continuous) and r.log and r.name == x_name for r in ranges)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(numbers, values, "o", label=OBJECTIVE_METRIC)
    if values:
        best_so_far = [max(values[: i + 1]) for i in range(len(values))]
        left.step(numbers, best_so_far, where="post", label="best so far")
        left.legend()
    left.set(title=f"{OBJECTIVE_METRIC} per trial", xlabel="trial", ylabel=OBJECTIVE_METRIC)
    right.plot([t.params.get(x_name) for t in scored], values, "o")
    if x_log:
        right.set_xscale("log")
    right.set(title=f"{x_name} vs {OBJECTIVE_METRIC}", xlabel=x_name, ylabel=OBJECTIVE_METRIC)
    return save_figure(fig, path)
