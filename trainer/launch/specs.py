"""What a launch asks for, described once for both backends, and what it reports back.

A training job, a tuning job and a deployment are plain dataclasses here, with no SageMaker SDK and
no subprocess in sight: the local stand-ins (``local_aws``) and ``sagemaker_backend.py`` each
translate the same spec into their own terms, so a job tried locally is the job launched on AWS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer.launch.errors import LaunchError
from trainer.launch.naming import CHANNEL_PATTERN, MAX_TUNING_JOB_NAME, check_name
from trainer.launch.search_space import SEARCH_SPACE, Range
from trainer.training.hyperparameters import HyperValue
from trainer.training.log_lines import PARTIAL_METRIC
from trainer.wire import MEDIA_JSON, PHOTO_CONTENT_TYPES, OutputFormat, WireError, media_type, negotiate

DEFAULT_TRAINING_INSTANCE = "ml.g5.xlarge"
# A CPU instance serves a 256x384 U-Net in well under a second per photo at a fraction of a GPU's
# price; pass --instance-type ml.g4dn.xlarge for a GPU endpoint.
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.xlarge"
# The entry point's wall-clock budget flag, derived from max_run unless given.
MAX_MINUTES = "max-minutes"
# Time a job keeps after its training budget for the export, the archive and SageMaker's upload
# (and the container's start, which max_run counts too): 10 % of max_run, at least 2, at most 15 min.
EXPORT_MARGIN_FRACTION, EXPORT_MARGIN_MIN_S, EXPORT_MARGIN_MAX_S = 0.10, 120, 900


def default_max_minutes(max_run_s: int) -> float | None:
    """The entry point's ``--max-minutes`` for a job SageMaker stops after ``max_run_s`` seconds.

    SageMaker stops a job at MaxRuntimeInSeconds with SIGTERM and kills it 120 s later; a budget
    that ends training a margin earlier lets the job finish on its own and export everything.
    None when max_run is too short to leave a minute of training after the margin.
    """
    margin = min(max(EXPORT_MARGIN_FRACTION * max_run_s, EXPORT_MARGIN_MIN_S), EXPORT_MARGIN_MAX_S)
    minutes = (max_run_s - margin) / 60
    return round(minutes, 2) if minutes >= 1 else None


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
            if not CHANNEL_PATTERN.match(channel):
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

    @property
    def job_hyperparameters(self) -> dict[str, HyperValue]:
        """What the job is sent: the hyperparameters plus ``max-minutes`` from ``max_run_s`` unless set."""
        derived = default_max_minutes(self.max_run_s)
        if MAX_MINUTES in self.hyperparameters or derived is None:
            return dict(self.hyperparameters)
        return {**self.hyperparameters, MAX_MINUTES: derived}

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

    @property
    def model_partial(self) -> bool | None:
        """True when the job was stopped and exported fewer epochs than asked; None if it never said."""
        value = self.final_metrics.get(PARTIAL_METRIC)
        return None if value is None else value == 1

    def deployable_model(self) -> str:
        """The model.tar.gz to deploy: of a Completed job, or of a Stopped one that exported a model.

        SageMaker uploads /opt/ml/model for a stopped job too, and "this intermediate data is a
        valid model artifact. You can use it to create a model with CreateModel" (service model,
        ``StoppingCondition``); the entry point exports on SIGTERM and says so (``model_partial``).
        """
        if self.model_artifact and (
            self.status == "Completed" or (self.status == "Stopped" and self.model_partial is not None)
        ):
            return self.model_artifact
        if self.status == "Stopped":
            raise LaunchError(
                f"training job {self.job_name} was stopped before it exported a model "
                "(no model_partial line in its log)"
            )
        raise LaunchError(
            f"training job {self.job_name} is {self.status}: only a Completed or Stopped job "
            "has a model to deploy"
        )


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


# --- Batch Transform ----------------------------------------------------------------------------
# The smallest compute-optimised instance Batch Transform offers (TransformInstanceType has no
# ml.c5.large): 4 vCPUs for the CPU TF Serving image. README, "Bulk: Batch Transform", has the cost.
DEFAULT_TRANSFORM_INSTANCE = "ml.c5.xlarge"
# Photos as the container's handler takes them; the bytes decide JPEG or PNG (serving/inference.py).
DEFAULT_TRANSFORM_CONTENT_TYPE = "application/x-image"
# CreateTransformJob's bounds (botocore service model): MaxPayloadInMB at most 100 (0 would stream
# chunked, which the handler does not read), ModelClientConfig's timeout 1..3600 s, retries 0..3.
MAX_TRANSFORM_PAYLOAD_MB = 100
MAX_INVOCATION_TIMEOUT_S = 3600
MAX_INVOCATION_RETRIES = 3
# A transform job's Environment holds at most 16 variables (service model).
MAX_TRANSFORM_ENVIRONMENT = 16


@dataclass(frozen=True)
class TransformSpec:
    """A Batch Transform job over photos: one photo per object, one ``<object>.out`` answer per photo.

    ``input`` and ``output`` are ``s3://`` prefixes (SageMaker) or folders (local). Every object
    under ``input`` is one record (SplitType None, BatchStrategy SingleRecord): a photo sent whole as
    the body of one ``/invocations`` request with ``content_type``, answered in ``accept`` (any media
    type trainer.wire negotiates), whose answer becomes ``output/<relative key>.out``.
    """

    job_name: str
    model_data: str  # s3://.../model.tar.gz (SageMaker) or a model.tar.gz / model folder (local)
    input: str
    output: str
    accept: str
    content_type: str = DEFAULT_TRANSFORM_CONTENT_TYPE
    instance_type: str = DEFAULT_TRANSFORM_INSTANCE
    instance_count: int = 1
    max_concurrent_transforms: int = 2
    max_payload_mb: int = 6
    invocation_timeout_s: int = 60
    invocation_retries: int = MAX_INVOCATION_RETRIES
    environment: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.job_name, "transform job name")
        if self.instance_count < 1 or self.max_concurrent_transforms < 1:
            raise LaunchError("instance count and max concurrent transforms must be >= 1")
        if not 1 <= self.max_payload_mb <= MAX_TRANSFORM_PAYLOAD_MB:
            raise LaunchError(
                f"max payload must be 1..{MAX_TRANSFORM_PAYLOAD_MB} MB, got {self.max_payload_mb}"
            )
        if not 1 <= self.invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S:
            raise LaunchError(
                f"invocation timeout must be 1..{MAX_INVOCATION_TIMEOUT_S} s, got {self.invocation_timeout_s}"
            )
        if not 0 <= self.invocation_retries <= MAX_INVOCATION_RETRIES:
            raise LaunchError(
                f"invocation retries must be 0..{MAX_INVOCATION_RETRIES}, got {self.invocation_retries}"
            )
        if len(self.environment) > MAX_TRANSFORM_ENVIRONMENT:
            raise LaunchError(
                f"at most {MAX_TRANSFORM_ENVIRONMENT} environment variables, got {len(self.environment)}"
            )
        try:  # the media type passes through to the container; its negotiation must accept it
            negotiate(self.accept, OutputFormat.MASK_PNG)
        except WireError as err:
            raise LaunchError(f"accept: {err}") from None
        if media_type(self.content_type)[0] not in (*PHOTO_CONTENT_TYPES, MEDIA_JSON):
            raise LaunchError(
                f"content type {self.content_type!r}: expected one of {', '.join(PHOTO_CONTENT_TYPES)} "
                f"(each object a photo) or {MEDIA_JSON} (each object one JSON request)"
            )
        if self.input.rstrip("/") == self.output.rstrip("/") or self.output.startswith(
            self.input.rstrip("/") + "/"
        ):
            raise LaunchError(
                f"output {self.output} must lie outside input {self.input}: "
                "every object under the input prefix is a photo to transform"
            )

    @property
    def batch_environment(self) -> dict[str, str]:
        """What SageMaker sets in the container of a transform job besides ``environment``
        ("Custom Inference Code with Batch Transform": SAGEMAKER_BATCH and the three parameters)."""
        return {
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_mb),
            "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(self.max_concurrent_transforms),
        }

    @property
    def container_environment(self) -> dict[str, str]:
        """All the container of the job sees: :attr:`batch_environment` and the job's own
        ``environment`` (which wins where both name a variable)."""
        return {**self.batch_environment, **self.environment}


@dataclass(frozen=True)
class TransformFailure:
    """One input object the job could not transform: no ``.out`` was written for it."""

    input: str  # relative key / path under the input prefix
    status: int | None  # the container's HTTP status (None: no answer, e.g. over MaxPayloadInMB)
    message: str


@dataclass(frozen=True)
class TransformResult:
    """A transform job as DescribeTransformJob reports it (and, locally, what it did)."""

    job_name: str
    status: str  # Completed | Failed | InProgress | Stopped
    output: str
    failure_reason: str = ""
    transformed: int = 0  # local: outputs written by this run
    skipped: int = 0  # local: inputs whose .out already existed (a resumed job)
    failures: tuple[TransformFailure, ...] = ()
    seconds: float = 0.0  # local: the whole run, the container's start included
    startup_seconds: float = 0.0  # local: until the container answered /ping
    report: Path | None = None  # local: the job's description.json

    @property
    def photos_per_second(self) -> float:
        """Records per second once the container was up (local; 0 when nothing was sent)."""
        records, busy = self.transformed + len(self.failures), self.seconds - self.startup_seconds
        return records / busy if records and busy > 0 else 0.0
