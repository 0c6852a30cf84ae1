"""What a launch asks for, described once for both backends.

A training job, a tuning job and a deployment are plain dataclasses here, with no SageMaker SDK and
no subprocess in sight: ``local.py`` and ``sagemaker_backend.py`` each translate the same spec into
their own terms, so a job tried locally is the job launched on AWS. The metric regexes and the
search space live here too for the same reason: one definition, read by both backends.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

HyperValue = str | int | float | bool

DEFAULT_TRAINING_INSTANCE = "ml.g5.xlarge"
# A CPU instance serves a 256x384 U-Net in well under a second per photo at a fraction of a GPU's
# price; pass --instance-type ml.g4dn.xlarge for a GPU endpoint.
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.xlarge"
MODEL_NAME = "unet"  # <model_dir>/unet/1/ and TF Serving's model name

# SageMaker's own naming rules (TrainingJobName, EndpointName, ...), checked before any upload.
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
_CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9.\-_]+$")
MAX_JOB_NAME = 63
MAX_TUNING_JOB_NAME = 32


class LaunchError(ValueError):
    """A launch request that cannot work; the message names the field and what was expected."""


class JobFailedError(RuntimeError):
    """A job ran and failed; the message carries the failure reason (log tail or AWS's)."""


# ---------------------------------------------------------------------------------------------
# Metrics: the entry point prints `epoch=3 loss=0.0412 dice=0.9731 val_loss=0.0398 val_dice=0.9802`
# once per epoch; SageMaker scrapes its log with these regexes, and so does the local backend.
# The leading space keeps " loss=" and " dice=" from matching inside val_loss= / val_dice=.
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


# ---------------------------------------------------------------------------------------------
# Search space: one definition, translated to SageMaker parameter ranges and to Optuna suggestions.
@dataclass(frozen=True)
class Categorical:
    """A hyperparameter chosen among listed values (SageMaker CategoricalParameter)."""

    name: str
    values: tuple[HyperValue, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise LaunchError(f"range {self.name}: needs at least one value")


@dataclass(frozen=True)
class Continuous:
    """A real hyperparameter in [low, high], searched on a log scale when ``log``."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise LaunchError(
                f"range {self.name}: expected 0 < low <= high on a log scale, "
                f"low <= high otherwise; got {self.low}:{self.high}"
            )


@dataclass(frozen=True)
class Integer:
    """An integer hyperparameter in [low, high] (SageMaker IntegerParameter, linear)."""

    name: str
    low: int
    high: int

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise LaunchError(f"range {self.name}: expected low <= high, got {self.low}:{self.high}")


Range = Categorical | Continuous | Integer

# Names are the entry point's flags (trainer/training/config.py), which is how SageMaker passes them.
SEARCH_SPACE: tuple[Range, ...] = (
    Categorical("batch-size", (4, 8, 16)),
    Continuous("learning-rate", 1e-4, 3e-3, log=True),
    Integer("epochs", 10, 40),
)


def parse_range(text: str, space: tuple[Range, ...] = SEARCH_SPACE) -> Range:
    """``NAME=LOW:HIGH`` or ``NAME=A,B,C``, typed after the range of that name in ``space``.

    A name outside ``space`` takes its kind from the text: ``A,B`` categorical, ``LOW:HIGH``
    integer when both ends are integers, else continuous (log scale when both ends are positive and
    span more than a factor of 10).
    """
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise LaunchError(f"--range {text!r}: expected NAME=LOW:HIGH or NAME=A,B,C")
    known = {r.name: r for r in space}.get(name)
    try:
        if isinstance(known, Categorical) or (known is None and ":" not in spec):
            kind = type(known.values[0]) if known else _guess_type(spec.split(","))
            return Categorical(name, tuple(kind(v) for v in spec.split(",")))
        low_text, colon, high_text = spec.partition(":")
        if not colon:
            raise ValueError(spec)
        if isinstance(known, Integer) or (known is None and _guess_type([low_text, high_text]) is int):
            return Integer(name, int(low_text), int(high_text))
        low, high = float(low_text), float(high_text)
        log = known.log if isinstance(known, Continuous) else (low > 0 and high / low > 10)
        return Continuous(name, low, high, log=log)
    except ValueError:
        raise LaunchError(
            f"--range {text!r}: values of {name} must be numbers "
            f"{'LOW:HIGH' if not isinstance(known, Categorical) else 'A,B,C'}"
        ) from None


def _guess_type(values: list[str]) -> type:
    for kind in (int, float):
        try:
            [kind(v) for v in values]
        except ValueError:
            continue
        return kind
    return str


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; ``flag`` names the option in errors."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"{flag} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def unique_name(base: str, limit: int = MAX_JOB_NAME) -> str:
    """``base-YYMMDD-HHMMSS-mmm``, cut to SageMaker's length limit (like the SDK's name_from_base)."""
    now = time.time()
    stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    return f"{base[: limit - len(stamp) - 1]}-{stamp}"


def check_name(name: str, field_name: str, limit: int = MAX_JOB_NAME) -> None:
    """SageMaker's rule for job, model and endpoint names, enforced before anything is uploaded."""
    if not _NAME_PATTERN.match(name) or len(name) > limit:
        raise LaunchError(
            f"{field_name} {name!r}: expected letters, digits and hyphens, "
            f"starting with a letter or digit, at most {limit} characters"
        )


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """One training job: what to run it on, with which data and hyperparameters.

    ``channels`` maps a channel name (``train``, ``validation``) to a local folder for the local
    backend or an ``s3://`` prefix for SageMaker. ``hyperparameters`` use the entry point's flag
    names (``batch-size``, ``learning-rate``, ...); both backends pass them as ``--name value``.
    """

    job_name: str
    channels: Mapping[str, str]
    hyperparameters: Mapping[str, HyperValue] = field(default_factory=dict)
    instance_type: str = DEFAULT_TRAINING_INSTANCE
    instance_count: int = 1
    volume_size_gb: int = 30
    max_run_s: int = 3 * 3600
    spot: bool = False
    max_wait_s: int | None = None  # spot only: run time plus time waiting for capacity
    checkpoint_uri: str | None = None  # s3:// (SageMaker) or a folder (local); resumed from
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.job_name, "job name")
        if not self.channels:
            raise LaunchError("channels: at least one input channel (train, validation) is needed")
        for channel in self.channels:
            if not _CHANNEL_PATTERN.match(channel):
                raise LaunchError(f"channel {channel!r}: expected letters, digits, '.', '-' or '_'")
        if self.instance_count < 1:
            raise LaunchError(f"instance count must be >= 1, got {self.instance_count}")
        if self.max_run_s <= 0:
            raise LaunchError(f"max run must be a positive number of seconds, got {self.max_run_s}")
        if self.max_wait_s is not None and not self.spot:
            raise LaunchError("max wait applies to spot training only: add --spot or drop --max-wait")
        if self.spot and self.max_wait_s is not None and self.max_wait_s < self.max_run_s:
            raise LaunchError(
                f"max wait ({self.max_wait_s} s) must be >= max run ({self.max_run_s} s): "
                "it counts the run time plus the time spent waiting for spot capacity"
            )
        for key, value in self.hyperparameters.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise LaunchError(f"hyperparameter {key}: expected a finite number, got {value}")

    @property
    def effective_max_wait_s(self) -> int | None:
        """Spot jobs need a wait limit; twice the run limit unless one was given."""
        if not self.spot:
            return None
        return self.max_wait_s if self.max_wait_s is not None else 2 * self.max_run_s

    def with_hyperparameters(self, job_name: str, extra: Mapping[str, HyperValue]) -> JobSpec:
        """The same job under another name with some hyperparameters replaced (one tuning trial)."""
        return replace(self, job_name=job_name, hyperparameters={**self.hyperparameters, **extra})


@dataclass(frozen=True)
class TuningSpec:
    """A hyperparameter search: the base job, the ranges and the budget.

    The objective is fixed (``val_dice``, maximised) since it is what the product is judged on.
    ``max_parallel_jobs`` applies to SageMaker; the local backend runs trials one after another.
    """

    job: JobSpec  # its job_name names the tuning job; its hyperparameters are the static ones
    ranges: tuple[Range, ...] = SEARCH_SPACE
    max_jobs: int = 8
    max_parallel_jobs: int = 2
    early_stopping: bool = True  # SageMaker "Auto"; locally Optuna's median pruner, the same rule
    seed: int = 0

    def __post_init__(self) -> None:
        check_name(self.job.job_name, "tuning job name", MAX_TUNING_JOB_NAME)
        if not self.ranges:
            raise LaunchError("ranges: at least one hyperparameter range is needed to tune")
        if self.max_jobs < 1 or not 1 <= self.max_parallel_jobs <= self.max_jobs:
            raise LaunchError(
                f"expected max jobs >= 1 and 1 <= max parallel jobs <= max jobs, "
                f"got {self.max_jobs} and {self.max_parallel_jobs}"
            )
        names = [r.name for r in self.ranges]
        if len(set(names)) != len(names):
            raise LaunchError(f"ranges: each hyperparameter once, got {names}")

    @property
    def name(self) -> str:
        return self.job.job_name


@dataclass(frozen=True)
class DeploySpec:
    """Where a trained model goes: a real-time endpoint on an instance type, or a serverless one."""

    endpoint_name: str
    model_data: str  # s3://.../model.tar.gz (SageMaker) or a model.tar.gz / model folder (local)
    instance_type: str = DEFAULT_ENDPOINT_INSTANCE
    instance_count: int = 1
    serverless: bool = False
    memory_mb: int = 4096  # serverless: 1024..6144 in steps of 1024
    max_concurrency: int = 5  # serverless
    environment: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.endpoint_name, "endpoint name")
        if self.serverless and (self.memory_mb not in range(1024, 6145, 1024)):
            raise LaunchError(
                f"serverless memory must be 1024..6144 MB in steps of 1024, got {self.memory_mb}"
            )
        if self.instance_count < 1 or self.max_concurrency < 1:
            raise LaunchError("instance count and max concurrency must be >= 1")


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobResult:
    """A finished (or started, when not waited for) training job as either backend reports it."""

    job_name: str
    status: str  # Completed | Failed | Stopped | InProgress
    final_metrics: Mapping[str, float] = field(default_factory=dict)  # last value of each metric
    history: tuple[Mapping[str, float], ...] = ()  # one dict per epoch line (local backend)
    model_artifact: str | None = None  # .../output/model.tar.gz (path or s3:// URI)
    output_artifact: str | None = None  # .../output/output.tar.gz
    job_dir: Path | None = None  # local backend: <work>/<job-name>
    hyperparameters: Mapping[str, HyperValue] = field(default_factory=dict)
    failure_reason: str = ""


@dataclass(frozen=True)
class TuningResult:
    """The best job of a search and, locally, where the table and the plot were written."""

    tuning_job_name: str
    best_job_name: str | None
    best_objective: float | None
    best_hyperparameters: Mapping[str, HyperValue] = field(default_factory=dict)
    best_metrics: Mapping[str, float] = field(default_factory=dict)
    trials_run_now: int = 0
    results_csv: Path | None = None
    plot_png: Path | None = None
    status: str = "Completed"


@dataclass(frozen=True)
class DeployResult:
    """A deployed endpoint: its name, the model it serves and how to reach it."""

    endpoint_name: str
    model_data: str  # the model.tar.gz served (on SageMaker: the repacked one, with code/)
    image_uri: str = ""  # SageMaker: the TF Serving image; local: empty
    model_name: str = ""
    url: str = ""  # local: http://127.0.0.1:<port>
    command: tuple[str, ...] = ()  # local: the carvana serve command line
