"""The SageMaker backend: the one module that imports the SageMaker Python SDK (v2).

SDK v3 dropped ``sagemaker.tensorflow.TensorFlow`` for ``ModelTrainer``; keeping every SDK call
here means moving to it touches this file only. Each function takes the backend-neutral spec from
``specs.py`` and the account settings below, and an optional ``sagemaker.Session`` (tests pass one
whose boto3 session talks to moto; by default one is built from the standard AWS configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # we stay on v2 knowingly (see above)

import boto3
import sagemaker
from sagemaker.debugger import ProfilerConfig, ProfilerRule, TensorBoardOutputConfig, rule_configs
from sagemaker.inputs import TrainingInput
from sagemaker.serverless import ServerlessInferenceConfig
from sagemaker.tensorflow import TensorFlow, TensorFlowModel
from sagemaker.tuner import (
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
)

from trainer.launch.errors import LaunchError
from trainer.launch.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC, OBJECTIVE_TYPE
from trainer.launch.naming import check_name
from trainer.launch.search_space import Categorical, Continuous, Integer, Range
from trainer.launch.source import ENTRY_POINT, stage_training_source
from trainer.launch.specs import (
    DeployResult,
    DeploySpec,
    JobResult,
    JobSpec,
    TransformResult,
    TransformSpec,
    TuningResult,
    TuningSpec,
)
from trainer.wire import MODEL_NAME

FRAMEWORK_VERSION = "2.19"  # the TF the project pins; the DLC tag is tensorflow-training:2.19-gpu-py312
PY_VERSION = "py312"
# The entry point's default TensorBoard folder: beside SM_OUTPUT_DATA_DIR.
CONTAINER_TENSORBOARD_DIR = "/opt/ml/output/tensorboard"
# The SDK reports usage to an AWS telemetry bucket unless told not to; a launcher should not phone home.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
# SageMaker Debugger's profiler rules that read *system* metrics, the only ones with data on the TF
# 2.19 image: framework profiling is deprecated from TF 2.11 and the image ships no smdebug (README,
# "Debugger and Profiler"). ProfilerReport runs them all again and renders profiler-report.html;
# each rule is a processing job of AWS's rule image (sagemaker-debugger-rules) beside the training.
SYSTEM_PROFILER_RULES = (
    "ProfilerReport",
    "BatchSize",
    "CPUBottleneck",
    "GPUMemoryIncrease",
    "IOBottleneck",
    "LoadBalancing",
    "LowGPUUtilization",
    "OverallSystemUsage",
)


@dataclass(frozen=True)
class SageMakerSettings:
    """The account side of a launch: execution role, bucket and prefix, region, whether to wait."""

    role: str
    bucket: str
    prefix: str = "carvana-unet"
    region: str | None = None  # None: the standard AWS configuration (AWS_REGION, ~/.aws/config)
    profiler_interval_ms: int = 500
    profiler: bool = True  # system monitoring (CPU, GPU, memory, I/O, network) to S3
    profiler_rules: bool = True  # SYSTEM_PROFILER_RULES on those metrics (needs profiler)
    wait: bool = True

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> SageMakerSettings:
        """``--role``/``--bucket`` or ``SAGEMAKER_ROLE``/``CARVANA_BUCKET``; both are required."""
        env = os.environ if environ is None else environ
        role = args.role or env.get("SAGEMAKER_ROLE", "")
        bucket = args.bucket or env.get("CARVANA_BUCKET", "")
        if not role.startswith("arn:"):
            raise LaunchError(
                "--role: the SageMaker execution role ARN (arn:aws:iam::<account>:role/<name>) "
                "is required for --backend sagemaker, or set SAGEMAKER_ROLE"
            )
        if not bucket or bucket.startswith("s3://"):
            raise LaunchError(
                "--bucket: an S3 bucket name (no s3://) is required for --backend sagemaker, "
                "or set CARVANA_BUCKET"
            )
        return cls(
            role=role,
            bucket=bucket,
            prefix=args.prefix.strip("/"),
            region=args.region,
            profiler_interval_ms=args.profiler_interval_ms,
            profiler=args.profiler,
            profiler_rules=args.profiler_rules and args.profiler,
            wait=args.wait,
        )

    def s3(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/<parts...>``."""
        return "/".join(["s3:/", self.bucket, self.prefix, *parts])


def stage_inference_code(dest: str | Path) -> Path:
    """Write the endpoint's code folder under ``dest`` and return it.

    SageMaker's repack copies the folder into ``code/`` of model.tar.gz: ``code/inference.py``,
    ``code/requirements.txt`` and the vendored wire contract as ``code/trainer/wire.py`` (the
    container puts ``code/`` on ``sys.path``). Not ``code/lib/``: when that exists, the TF Serving
    container skips ``requirements.txt``. It is the layout ``carvana package`` writes, from the same
    constants, so the two cannot drift.
    """
    # Imported here: serving.package loads TensorFlow, which fit and tune never need.
    from serving.package import HANDLERS, REPO, REQUIREMENTS, VENDORED

    code = Path(dest) / "code"
    code.mkdir(parents=True)
    shutil.copy2(HANDLERS, code / "inference.py")
    (code / "requirements.txt").write_text(REQUIREMENTS)
    for module in VENDORED:  # trainer/__init__.py, trainer/wire.py
        (code / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / module, code / module)
    return code


def make_session(settings: SageMakerSettings, boto_session: boto3.Session | None = None) -> sagemaker.Session:
    """A SageMaker session on ``settings.bucket`` (never the SDK's generated default bucket)."""
    boto_session = boto_session or boto3.Session(region_name=settings.region)
    return sagemaker.Session(
        boto_session=boto_session, default_bucket=settings.bucket, sagemaker_config=SDK_CONFIG
    )


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in {"project": "carvana-unet", **tags}.items()]


def execution_role(session: sagemaker.Session, explicit: str = "") -> str:
    """The execution role: ``explicit`` or ``$SAGEMAKER_ROLE``, else ``sagemaker.get_execution_role()``.

    On a SageMaker notebook or Studio the SDK reads the notebook's own role; elsewhere it turns
    assumed-role credentials into the role's ARN and raises ValueError for any other identity
    (SDK ``session.get_execution_role``), which becomes a message saying what to set.
    """
    role = explicit or os.environ.get("SAGEMAKER_ROLE", "")
    if role:
        return role
    try:
        return sagemaker.get_execution_role(sagemaker_session=session)
    except ValueError as err:
        raise LaunchError(
            f"no SageMaker execution role: {err}. On a SageMaker notebook the role is found "
            "by itself; elsewhere set SAGEMAKER_ROLE=arn:aws:iam::<account>:role/<name> (or "
            "--role)"
        ) from None


def profiler_rules() -> list[ProfilerRule]:
    """``ProfilerRule.sagemaker(rule_configs.X())`` for each of SYSTEM_PROFILER_RULES."""
    return [ProfilerRule.sagemaker(getattr(rule_configs, name)()) for name in SYSTEM_PROFILER_RULES]


def _profiling(settings: SageMakerSettings) -> dict[str, object]:
    """The estimator's Debugger/Profiler arguments for ``settings``.

    ``debugger_hook_config=False`` always: the hook is smdebug's, which the TF 2.19 image lacks, and
    the SDK adds a hook only for debugger (tensor) rules, never for profiler rules (SDK
    ``estimator.py``), so False stays False. ``disable_profiler=True`` turns monitoring off.
    """
    if not settings.profiler:
        return {"disable_profiler": True, "debugger_hook_config": False}
    return {
        "profiler_config": ProfilerConfig(
            s3_output_path=settings.s3("profiler"),
            system_monitor_interval_millis=settings.profiler_interval_ms,
        ),
        "rules": profiler_rules() if settings.profiler_rules else None,
        "debugger_hook_config": False,
    }


def training_inputs(spec: JobSpec) -> dict[str, TrainingInput]:
    """FastFile: TFRecord shards are streamed from S3 as files, no copy before the job starts."""
    for channel, uri in spec.channels.items():
        if not uri.startswith("s3://"):
            raise LaunchError(
                f"channel {channel}: SageMaker reads s3:// prefixes, got {uri} "
                "(upload it first: carvana convert --out s3://bucket/prefix)"
            )
    return {channel: TrainingInput(uri, input_mode="FastFile") for channel, uri in spec.channels.items()}


def build_estimator(
    spec: JobSpec,
    settings: SageMakerSettings,
    session: sagemaker.Session,
    source_dir: Path,
    *,
    checkpoints: bool = True,
) -> TensorFlow:
    """The TF 2.19 script-mode estimator for ``spec`` (source staged in ``source_dir``)."""
    checkpoint_uri = spec.checkpoint_uri or settings.s3("checkpoints", spec.job_name) + "/"
    return TensorFlow(
        entry_point=ENTRY_POINT,
        source_dir=str(source_dir),
        framework_version=FRAMEWORK_VERSION,
        py_version=PY_VERSION,
        role=settings.role,
        instance_type=spec.instance_type,
        instance_count=spec.instance_count,
        volume_size=spec.volume_size_gb,
        max_run=spec.max_run_s,
        use_spot_instances=spec.spot,
        max_wait=spec.effective_max_wait_s,
        input_mode="FastFile",
        hyperparameters=spec.job_hyperparameters,  # with max-minutes from max_run unless given
        metric_definitions=[dict(d) for d in METRIC_DEFINITIONS],
        output_path=settings.s3("jobs"),
        code_location=settings.s3("code"),
        checkpoint_s3_uri=checkpoint_uri if checkpoints else None,
        tensorboard_output_config=TensorBoardOutputConfig(
            s3_output_path=settings.s3("tensorboard"), container_local_output_path=CONTAINER_TENSORBOARD_DIR
        ),
        **_profiling(settings),  # system monitoring and profiler rules; no smdebug hook
        # The entry point writes the SavedModel to SM_MODEL_DIR; an s3:// --model_dir is of no use to it.
        model_dir=False,
        base_job_name="carvana-unet",
        tags=_tags(spec.tags),
        sagemaker_session=session,
    )


def fit(spec: JobSpec, settings: SageMakerSettings, *, session: sagemaker.Session | None = None) -> JobResult:
    """Start the training job; when ``settings.wait``, stream its log and return its final state."""
    session = session or make_session(settings)
    inputs = training_inputs(spec)
    with tempfile.TemporaryDirectory(prefix="carvana-source-") as tmp:
        estimator = build_estimator(spec, settings, session, stage_training_source(Path(tmp) / "source"))
        estimator.fit(
            inputs=inputs, job_name=spec.job_name, wait=settings.wait, logs="All" if settings.wait else "None"
        )
    return describe_job(spec.job_name, session)


def describe_job(job_name: str, session: sagemaker.Session) -> JobResult:
    """A training job's status, final metrics and artifacts, from DescribeTrainingJob."""
    desc = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    output = desc.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    return JobResult(
        job_name=job_name,
        status=desc["TrainingJobStatus"],
        final_metrics={m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])},
        model_artifact=desc.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
        output_artifact=f"{output}/{job_name}/output/output.tar.gz" if output else None,
        hyperparameters={
            k: _decode(v)
            for k, v in desc.get("HyperParameters", {}).items()
            if not k.startswith("sagemaker_")
        },
        failure_reason=desc.get("FailureReason", ""),
    )


def _decode(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def to_parameter(space: Range) -> CategoricalParameter | ContinuousParameter | IntegerParameter:
    """One search-space range as the SageMaker tuner's parameter (Optuna gets the same range)."""
    if isinstance(space, Categorical):
        return CategoricalParameter(list(space.values))
    if isinstance(space, Continuous):
        return ContinuousParameter(
            space.low, space.high, scaling_type="Logarithmic" if space.log else "Linear"
        )
    if isinstance(space, Integer):
        return IntegerParameter(space.low, space.high, scaling_type="Linear")
    raise TypeError(f"unknown range type {type(space).__name__}")


def build_tuner(spec: TuningSpec, estimator: TensorFlow) -> HyperparameterTuner:
    """The Bayesian HyperparameterTuner over ``spec.ranges`` (objective val_dice, maximised)."""
    return HyperparameterTuner(
        estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        hyperparameter_ranges={space.name: to_parameter(space) for space in spec.ranges},
        metric_definitions=[dict(d) for d in METRIC_DEFINITIONS],
        strategy="Bayesian",
        objective_type=OBJECTIVE_TYPE,
        max_jobs=spec.max_jobs,
        max_parallel_jobs=spec.max_parallel_jobs,
        early_stopping_type="Auto" if spec.early_stopping else "Off",
        random_seed=spec.seed,
        tags=_tags(spec.job.tags),
    )


def tune(
    spec: TuningSpec, settings: SageMakerSettings, *, session: sagemaker.Session | None = None
) -> TuningResult:
    """Start a Bayesian tuning job over ``spec.ranges``; when waiting, report its best job.

    No checkpoint location unless one is given: every job of a tuning job shares the definition's
    CheckpointConfig, and one job must not resume from another's weights.
    """
    session = session or make_session(settings)
    inputs = training_inputs(spec.job)
    with tempfile.TemporaryDirectory(prefix="carvana-source-") as tmp:
        estimator = build_estimator(
            spec.job,
            settings,
            session,
            stage_training_source(Path(tmp) / "source"),
            checkpoints=spec.job.checkpoint_uri is not None,
        )
        tuner = build_tuner(spec, estimator)
        tuner.fit(inputs=inputs, job_name=spec.name, wait=settings.wait)
    if not settings.wait:  # just started: no best job yet (carvana tune ... reports it when waiting)
        return TuningResult(
            tuning_job_name=spec.name, best_job_name=None, best_objective=None, status="InProgress"
        )
    return describe_tuning(spec.name, session)


def describe_tuning(tuning_job_name: str, session: sagemaker.Session) -> TuningResult:
    """The tuning job's status and best job: its objective, tuned values and final metrics."""
    client = session.sagemaker_client
    desc = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job_name)
    best = desc.get("BestTrainingJob")
    status = desc["HyperParameterTuningJobStatus"]
    if not best:
        return TuningResult(
            tuning_job_name=tuning_job_name, best_job_name=None, best_objective=None, status=status
        )
    job = client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    return TuningResult(
        tuning_job_name=tuning_job_name,
        best_job_name=best["TrainingJobName"],
        best_objective=best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value"),
        best_hyperparameters={k: _decode(v) for k, v in best.get("TunedHyperParameters", {}).items()},
        best_metrics={m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])},
        status=status,
    )


def serving_model(
    model_data: str,
    model_name: str,
    environment: Mapping[str, str],
    settings: SageMakerSettings,
    session: sagemaker.Session,
    tmp: Path,
) -> TensorFlowModel:
    """The job's model.tar.gz as a TF Serving 2.19 model with our handlers, for an endpoint or a
    transform job alike (the same archive and code/inference.py either way).

    The SDK repacks ``model_data`` when the model is created: it adds ``code/inference.py``,
    ``code/requirements.txt`` and the vendored ``code/trainer/wire.py`` beside ``unet/1/``, uploads
    the result under the prefix's ``models/`` and picks the CPU or GPU image after the instance type.
    """
    if not model_data.startswith("s3://"):
        raise LaunchError(f"--model: an s3:// model.tar.gz is needed on SageMaker, got {model_data}")
    check_name(model_name, "model name")
    return TensorFlowModel(
        model_data=model_data,
        role=settings.role,
        framework_version=FRAMEWORK_VERSION,
        entry_point="inference.py",
        source_dir=str(stage_inference_code(tmp)),
        env={"SAGEMAKER_TFS_DEFAULT_MODEL_NAME": MODEL_NAME, **environment},
        code_location=settings.s3("models"),
        name=model_name,
        sagemaker_session=session,
    )


def deploy(
    spec: DeploySpec, settings: SageMakerSettings, *, session: sagemaker.Session | None = None
) -> DeployResult:
    """Create the model (:func:`serving_model`), its endpoint config and the endpoint (the CPU image
    for serverless, which has no GPUs)."""
    session = session or make_session(settings)
    model_name = f"{spec.endpoint_name}-model"
    with tempfile.TemporaryDirectory(prefix="carvana-serving-") as tmp:
        model = serving_model(spec.model_data, model_name, spec.environment, settings, session, Path(tmp))
        if spec.serverless:
            target = {
                "serverless_inference_config": ServerlessInferenceConfig(
                    memory_size_in_mb=spec.memory_mb, max_concurrency=spec.max_concurrency
                )
            }
        else:
            target = {"initial_instance_count": spec.instance_count, "instance_type": spec.instance_type}
        model.deploy(endpoint_name=spec.endpoint_name, tags=_tags(spec.tags), wait=settings.wait, **target)
    container = session.sagemaker_client.describe_model(ModelName=model_name)["PrimaryContainer"]
    return DeployResult(
        endpoint_name=spec.endpoint_name,
        model_data=container["ModelDataUrl"],
        image_uri=container["Image"],
        model_name=model_name,
    )


def transform(
    spec: TransformSpec, settings: SageMakerSettings, *, session: sagemaker.Session | None = None
) -> TransformResult:
    """Create the model (:func:`serving_model`) and a Batch Transform job over ``spec.input``.

    One record per S3 object (SplitType None, SingleRecord): the container's handler gets each photo
    whole, as ``carvana serve`` does, and SageMaker writes its answer to ``<output>/<key>.out``.
    No AssembleWith: each output object is one binary answer, not lines to join. When waiting, the
    job's final state; a photo the container refuses leaves no .out and fails the job.
    """
    session = session or make_session(settings)
    for label, uri in (("input", spec.input), ("output", spec.output)):
        if not uri.startswith("s3://"):
            raise LaunchError(f"--{label}: Batch Transform reads and writes s3:// prefixes, got {uri}")
    with tempfile.TemporaryDirectory(prefix="carvana-serving-") as tmp:
        model = serving_model(
            spec.model_data, f"{spec.job_name}-model", spec.environment, settings, session, Path(tmp)
        )
        transformer = model.transformer(
            instance_count=spec.instance_count,
            instance_type=spec.instance_type,
            strategy="SingleRecord",
            output_path=spec.output,
            accept=spec.accept,
            max_concurrent_transforms=spec.max_concurrent_transforms,
            max_payload=spec.max_payload_mb,
            env=dict(spec.environment),
            tags=_tags(spec.tags),
        )
        transformer.transform(
            spec.input,
            data_type="S3Prefix",
            content_type=spec.content_type,
            split_type="None",
            job_name=spec.job_name,
            model_client_config={
                "InvocationsTimeoutInSeconds": spec.invocation_timeout_s,
                "InvocationsMaxRetries": spec.invocation_retries,
            },
            wait=settings.wait,
            logs=settings.wait,
        )
    return describe_transform(spec.job_name, session)


def describe_transform(job_name: str, session: sagemaker.Session) -> TransformResult:
    """A transform job's status, output prefix and failure reason, from DescribeTransformJob."""
    desc = session.sagemaker_client.describe_transform_job(TransformJobName=job_name)
    return TransformResult(
        job_name=job_name,
        status=desc["TransformJobStatus"],
        output=desc["TransformOutput"]["S3OutputPath"],
        failure_reason=desc.get("FailureReason", ""),
    )


def delete_endpoint(endpoint_name: str, session: sagemaker.Session) -> None:
    """Delete the endpoint, its config and its model: a real-time endpoint bills every hour it exists."""
    client = session.sagemaker_client
    config_name = client.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    variants = client.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    session.delete_endpoint(endpoint_name)
    session.delete_endpoint_config(config_name)
    for variant in variants:
        session.delete_model(variant["ModelName"])


@dataclass
class SageMakerBackend:
    """fit / tune / deploy on SageMaker, the same calls as :class:`trainer.launch.backends.LocalBackend`."""

    settings: SageMakerSettings
    session: sagemaker.Session | None = None

    def __post_init__(self) -> None:
        self.session = self.session or make_session(self.settings)

    def fit(self, spec: JobSpec) -> JobResult:
        return fit(spec, self.settings, session=self.session)

    def tune(self, spec: TuningSpec) -> TuningResult:
        return tune(spec, self.settings, session=self.session)

    def describe_job(self, job_name: str) -> JobResult:
        return describe_job(job_name, self.session)

    def deploy(self, spec: DeploySpec) -> DeployResult:
        return deploy(spec, self.settings, session=self.session)

    def delete_endpoint(self, endpoint_name: str) -> None:
        delete_endpoint(endpoint_name, self.session)

    def transform(self, spec: TransformSpec) -> TransformResult:
        return transform(spec, self.settings, session=self.session)
