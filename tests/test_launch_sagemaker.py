"""The SageMaker backend without AWS: the real SDK talks to moto in server mode over HTTP.

Each test records the requests botocore actually sends (``before-call`` event hooks on the boto3
session behind the ``sagemaker.Session``: the wire body, after botocore validated the parameters
against the service model) and asserts their fields. Uploaded code is downloaded back from moto's
S3 and opened. The best-job report uses botocore's Stubber, whose canned responses are validated
against the same service model, because moto answers DescribeHyperParameterTuningJob with a fixed
placeholder best job.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from local_aws.training_job.toolkit import encode_hyperparameters
from trainer.launch import sagemaker_backend as smb
from trainer.launch.cli import main as cli_main
from trainer.launch.errors import LaunchError
from trainer.launch.metrics import METRIC_DEFINITIONS, scrape_metrics
from trainer.launch.search_space import SEARCH_SPACE, Categorical, Continuous, Integer
from trainer.launch.specs import DeploySpec, JobSpec, TransformSpec, TuningSpec, default_max_minutes
from trainer.training.log_lines import debugger_line

ACCOUNT_ROLE = "arn:aws:iam::123456789012:role/CarvanaSageMaker"
ECR = "763104351884.dkr.ecr.us-east-1.amazonaws.com"
# SageMaker Debugger's rule image in us-east-1 (docs: debugger-docker-images-rules).
RULE_IMAGE = "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"


class Recorder:
    """The SageMaker API requests a boto3 session sends, as (operation, JSON body) pairs."""

    def __init__(self, session: boto3.Session) -> None:
        self.calls: list[tuple[str, dict]] = []
        session.events.register("before-call.sagemaker.*", self._record)

    def _record(self, model, params, **_) -> None:
        self.calls.append((model.name, json.loads(params["body"] or b"{}")))

    def one(self, operation: str) -> dict:
        bodies = [body for name, body in self.calls if name == operation]
        assert len(bodies) == 1, f"{operation} sent {len(bodies)} times: {[n for n, _ in self.calls]}"
        return bodies[0]


@pytest.fixture
def sm(aws: str) -> tuple[smb.SageMakerSettings, object, Recorder]:
    """Settings on the test bucket (not waiting: moto runs no jobs), a session and its recorder."""
    settings = smb.SageMakerSettings(role=ACCOUNT_ROLE, bucket=aws, prefix="carvana-unet", wait=False)
    boto_session = boto3.Session(region_name="us-east-1")
    recorder = Recorder(boto_session)
    return settings, smb.make_session(settings, boto_session), recorder


def job_spec(bucket: str, name: str = "carvana-unet-test-1", **overrides) -> JobSpec:
    fields = dict(
        job_name=name,
        channels={
            "train": f"s3://{bucket}/tfrecords/train",
            "validation": f"s3://{bucket}/tfrecords/validation",
        },
        hyperparameters={"epochs": 3, "batch-size": 8, "image-size": "128x192", "learning-rate": 0.001},
        spot=True,
        max_run_s=3600,
        max_wait_s=7200,
        tags={"team": "studio"},
    )
    return JobSpec(**{**fields, **overrides})


def s3_tar_names(uri: str) -> dict[str, bytes]:
    """The files of a tar.gz on (moto's) S3, by name."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    data = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_fit_sends_create_training_job(sm) -> None:
    settings, session, recorder = sm
    spec = job_spec(settings.bucket)
    result = smb.fit(spec, settings, session=session)

    request = recorder.one("CreateTrainingJob")
    algorithm = request["AlgorithmSpecification"]
    assert algorithm["TrainingImage"] == f"{ECR}/tensorflow-training:2.19-gpu-py312"
    assert algorithm["MetricDefinitions"] == list(METRIC_DEFINITIONS)
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }

    # Hyperparameters: JSON strings, exactly what the local backend writes to hyperparameters.json.
    hps = request["HyperParameters"]
    user = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
    assert user == encode_hyperparameters(spec.job_hyperparameters)
    # max-minutes derived from max_run (3600 s less a 360 s margin): the job ends itself and exports.
    assert user == {
        "epochs": "3",
        "batch-size": "8",
        "image-size": '"128x192"',
        "learning-rate": "0.001",
        "max-minutes": "54.0",
    }
    assert json.loads(hps["sagemaker_program"]) == "train.py"
    assert "model_dir" not in hps  # the SavedModel goes to SM_MODEL_DIR, not an s3:// --model_dir

    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert sorted(channels) == ["train", "validation"]
    for name, channel in channels.items():
        assert channel["InputMode"] == "FastFile"
        assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{settings.bucket}/tfrecords/{name}"

    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert (
        request["CheckpointConfig"]["S3Uri"]
        == f"s3://{settings.bucket}/carvana-unet/checkpoints/{spec.job_name}/"
    )
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{settings.bucket}/carvana-unet/jobs"
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{settings.bucket}/carvana-unet/tensorboard",
        "LocalPath": "/opt/ml/output/tensorboard",
    }
    assert request["ProfilerConfig"] == {
        "S3OutputPath": f"s3://{settings.bucket}/carvana-unet/profiler",
        "ProfilingIntervalInMilliseconds": 500,
        "DisableProfiler": False,
    }
    # The system-metric profiler rules, each run by AWS's rule image for the job's region.
    rules = {r["RuleConfigurationName"].split("-")[0]: r for r in request["ProfilerRuleConfigurations"]}
    assert sorted(rules) == sorted(smb.SYSTEM_PROFILER_RULES)
    for name, rule in rules.items():
        assert rule["RuleEvaluatorImage"] == RULE_IMAGE
        assert rule["RuleParameters"]["rule_to_invoke"] == name
    assert rules["LowGPUUtilization"]["RuleParameters"]["threshold_p95"] == "70"
    # No smdebug hook (the TF 2.19 image has none) and no tensor rules.
    assert "DebugHookConfig" not in request and "DebugRuleConfigurations" not in request
    assert {"Key": "team", "Value": "studio"} in request["Tags"]
    assert {"Key": "project", "Value": "carvana-unet"} in request["Tags"]

    # The uploaded source: the shim entry point beside the trainer package and its requirements.
    files = s3_tar_names(json.loads(hps["sagemaker_submit_directory"]))
    assert "from trainer.train import main" in files["train.py"].decode()
    assert "trainer/train.py" in files and "trainer/training/config.py" in files
    assert "matplotlib" in files["requirements.txt"].decode()
    assert "tensorflow" not in files["requirements.txt"].decode()
    assert not any("__pycache__" in name or name.startswith("trainer/launch") for name in files)

    assert result.job_name == spec.job_name
    assert result.model_artifact.endswith(f"{spec.job_name}/output/model.tar.gz")


def test_profiler_can_be_turned_off(sm) -> None:
    settings, session, recorder = sm
    smb.fit(
        job_spec(settings.bucket, name="carvana-unet-noprof"),
        replace(settings, profiler=False),
        session=session,
    )
    request = recorder.one("CreateTrainingJob")
    assert request["ProfilerConfig"] == {"DisableProfiler": True}
    assert "ProfilerRuleConfigurations" not in request
    smb.fit(
        job_spec(settings.bucket, name="carvana-unet-norules"),
        replace(settings, profiler_rules=False),
        session=session,
    )
    request = [body for name, body in recorder.calls if name == "CreateTrainingJob"][-1]
    assert request["ProfilerConfig"]["DisableProfiler"] is False
    assert "ProfilerRuleConfigurations" not in request


def test_metric_definitions_read_the_entry_point_line() -> None:
    line = "epoch=3 loss=0.0412 dice=0.9731 val_loss=0.0398 val_dice=0.9802\n"
    assert scrape_metrics(line) == {
        "epoch": 3.0,
        "loss": 0.0412,
        "dice": 0.9731,
        "val_loss": 0.0398,
        "val_dice": 0.9802,
    }
    assert scrape_metrics("4/4 - 2s - loss: 1.16 - val_dice: 0.33") == {}
    # The debugger's line (CloudWatch metrics an alarm can watch) and the export's partial flag.
    findings = [{"rule": "overfitting"}, {"rule": "overfitting"}, {"rule": "loss_not_decreasing"}]
    line = debugger_line(findings, 0.03125)
    assert scrape_metrics(line) == {
        "debugger_findings": 3,
        "debugger_nonfinite_loss": 0,
        "debugger_loss_not_decreasing": 1,
        "debugger_overfitting": 2,
        "debugger_exploding_gradients": 0,
        "debugger_vanishing_gradients": 0,
        "grad_norm": 0.03125,
    }
    assert scrape_metrics("model_partial=1") == {"model_partial": 1.0}
    assert len(METRIC_DEFINITIONS) <= 40  # CreateTrainingJob's limit


def test_tune_sends_create_hyper_parameter_tuning_job(sm) -> None:
    settings, session, recorder = sm
    base = job_spec(
        settings.bucket,
        name="carvana-tune-test-1",
        spot=False,
        max_wait_s=None,
        hyperparameters={"image-size": "128x192"},
    )
    smb.tune(TuningSpec(job=base, max_jobs=6, max_parallel_jobs=2), settings, session=session)

    request = recorder.one("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert request["HyperParameterTuningJobName"] == "carvana-tune-test-1"
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_dice"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"

    # The ranges are SEARCH_SPACE, the same definition Optuna samples from locally.
    ranges = config["ParameterRanges"]
    sent = {r["Name"]: r for kind in ranges.values() for r in kind}
    assert sorted(sent) == sorted(space.name for space in SEARCH_SPACE)
    for space in SEARCH_SPACE:
        got = sent[space.name]
        if isinstance(space, Categorical):
            assert got in ranges["CategoricalParameterRanges"]
            assert [json.loads(v) for v in got["Values"]] == [str(v) for v in space.values]
        elif isinstance(space, Continuous):
            assert got in ranges["ContinuousParameterRanges"]
            assert (float(got["MinValue"]), float(got["MaxValue"])) == (space.low, space.high)
            assert got["ScalingType"] == ("Logarithmic" if space.log else "Linear")
        else:
            assert isinstance(space, Integer)
            assert got in ranges["IntegerParameterRanges"]
            assert (int(got["MinValue"]), int(got["MaxValue"])) == (space.low, space.high)
    assert sent["learning-rate"]["ScalingType"] == "Logarithmic"

    definition = request["TrainingJobDefinition"]
    algorithm = definition["AlgorithmSpecification"]
    assert algorithm["TrainingImage"] == f"{ECR}/tensorflow-training:2.19-gpu-py312"
    assert algorithm["MetricDefinitions"] == list(METRIC_DEFINITIONS)
    static = definition["StaticHyperParameters"]
    assert json.loads(static["image-size"]) == "128x192"
    assert not {"batch-size", "learning-rate", "epochs"} & set(static)  # tuned, so not static
    assert {c["InputMode"] for c in definition["InputDataConfig"]} == {"FastFile"}
    assert "CheckpointConfig" not in definition  # trials must not resume from each other's weights


def _stub_tuning_report(stubber: Stubber) -> None:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    stubber.add_response(
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": "carvana-tune-test-2",
            "HyperParameterTuningJobArn": (
                "arn:aws:sagemaker:us-east-1:123456789012:hyper-parameter-tuning-job/x"
            ),
            "HyperParameterTuningJobConfig": {
                "Strategy": "Bayesian",
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2},
            },
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": now,
            "TrainingJobStatusCounters": {"Completed": 6},
            "ObjectiveStatusCounters": {"Succeeded": 6},
            "BestTrainingJob": {
                "TrainingJobName": "carvana-tune-test-2-004-1a2b3c4d",
                "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x",
                "CreationTime": now,
                "TrainingJobStatus": "Completed",
                "TunedHyperParameters": {"batch-size": '"8"', "learning-rate": "0.00042", "epochs": "31"},
                "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "val_dice", "Value": 0.9912},
            },
        },
        {"HyperParameterTuningJobName": "carvana-tune-test-2"},
    )
    stubber.add_response(
        "describe_training_job",
        {
            "TrainingJobName": "carvana-tune-test-2-004-1a2b3c4d",
            "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x",
            "ModelArtifacts": {
                "S3ModelArtifacts": "s3://b/jobs/carvana-tune-test-2-004-1a2b3c4d/output/model.tar.gz"
            },
            "TrainingJobStatus": "Completed",
            "SecondaryStatus": "Completed",
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "CreationTime": now,
            "FinalMetricDataList": [
                {"MetricName": "val_dice", "Value": 0.9912, "Timestamp": now},
                {"MetricName": "val_loss", "Value": 0.0213, "Timestamp": now},
            ],
        },
        {"TrainingJobName": "carvana-tune-test-2-004-1a2b3c4d"},
    )


def test_tuning_report_names_the_best_job_and_its_metrics(sm) -> None:
    _, session, _ = sm
    with Stubber(session.sagemaker_client) as stubber:
        _stub_tuning_report(stubber)
        result = smb.describe_tuning("carvana-tune-test-2", session)
        stubber.assert_no_pending_responses()
    assert result.best_job_name == "carvana-tune-test-2-004-1a2b3c4d"
    assert result.best_objective == pytest.approx(0.9912)
    assert result.best_hyperparameters == {"batch-size": "8", "learning-rate": 0.00042, "epochs": 31}
    assert result.best_metrics == {"val_dice": pytest.approx(0.9912), "val_loss": pytest.approx(0.0213)}


def _stopped_job(name: str, metrics: dict[str, float]) -> dict:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/jobs/{name}/output/model.tar.gz"},
        "TrainingJobStatus": "Stopped",
        "SecondaryStatus": "MaxRuntimeExceeded",
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": now,
        "FinalMetricDataList": [{"MetricName": k, "Value": v, "Timestamp": now} for k, v in metrics.items()],
    }


def test_a_stopped_job_with_an_exported_model_is_deployable(sm) -> None:
    """MaxRuntimeInSeconds hit: SageMaker uploads /opt/ml/model; model_partial=1 in the log says partial."""
    settings, session, _ = sm
    backend = smb.SageMakerBackend(settings, session)
    with Stubber(session.sagemaker_client) as stubber:
        stubber.add_response(
            "describe_training_job",
            _stopped_job("job-a", {"val_dice": 0.97, "model_partial": 1}),
            {"TrainingJobName": "job-a"},
        )
        stubber.add_response(
            "describe_training_job", _stopped_job("job-b", {"val_dice": 0.97}), {"TrainingJobName": "job-b"}
        )
        partial, unexported = backend.describe_job("job-a"), backend.describe_job("job-b")
    assert partial.model_partial is True
    assert partial.deployable_model() == "s3://b/jobs/job-a/output/model.tar.gz"
    with pytest.raises(LaunchError, match="stopped before it exported a model"):
        unexported.deployable_model()


def test_max_minutes_is_derived_from_max_run() -> None:
    assert default_max_minutes(24 * 3600) == 24 * 60 - 15  # margin capped at 15 min
    assert default_max_minutes(3600) == 54.0  # 10 %
    assert default_max_minutes(600) == 8.0  # at least 2 min
    assert default_max_minutes(150) is None  # no minute of training left
    spec = job_spec("b", hyperparameters={"max-minutes": 5})
    assert spec.job_hyperparameters["max-minutes"] == 5  # given: kept


def _upload_model(bucket: str) -> str:
    """A model.tar.gz as a training job leaves it (unet/1/...), on moto's S3."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("unet/1/saved_model.pb", b"\x08\x01"), ("unet/1/variables/variables.index", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    key = "carvana-unet/jobs/carvana-unet-test-1/output/model.tar.gz"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


def test_deploy_creates_model_config_and_endpoint(sm) -> None:
    settings, session, recorder = sm
    model_data = _upload_model(settings.bucket)
    spec = DeploySpec(
        endpoint_name="carvana-test-ep",
        model_data=model_data,
        instance_type="ml.g4dn.xlarge",
        environment={"SAGEMAKER_TFS_ENABLE_BATCHING": "true"},
    )
    result = smb.deploy(spec, settings, session=session)

    model = recorder.one("CreateModel")
    container = model["PrimaryContainer"]
    assert container["Image"] == f"{ECR}/tensorflow-inference:2.19-gpu"
    assert container["Environment"]["SAGEMAKER_TFS_DEFAULT_MODEL_NAME"] == "unet"
    assert container["Environment"]["SAGEMAKER_TFS_ENABLE_BATCHING"] == "true"
    assert model["ExecutionRoleArn"] == ACCOUNT_ROLE
    assert container["ModelDataUrl"].startswith(f"s3://{settings.bucket}/carvana-unet/models/")
    # The SDK repacked the job's archive with our handlers, in the TF Serving container layout.
    files = s3_tar_names(container["ModelDataUrl"])
    assert {
        "unet/1/saved_model.pb",
        "code/inference.py",
        "code/requirements.txt",
        "code/trainer/__init__.py",
        "code/trainer/wire.py",
    } <= set(files)
    # No code/lib: the TF Serving container would then skip requirements.txt (Pillow for the handlers).
    assert not any(name.startswith("code/lib/") for name in files)
    assert b"Pillow" in files["code/requirements.txt"]
    assert b"def output_handler" in files["code/inference.py"] or b"def handler" in files["code/inference.py"]

    config = recorder.one("CreateEndpointConfig")
    variant = config["ProductionVariants"][0]
    assert variant["ModelName"] == model["ModelName"] == result.model_name
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 1)
    endpoint = recorder.one("CreateEndpoint")
    assert endpoint == {
        "EndpointName": "carvana-test-ep",
        "EndpointConfigName": config["EndpointConfigName"],
        "Tags": [{"Key": "project", "Value": "carvana-unet"}],
    }
    assert result.image_uri == container["Image"]

    smb.delete_endpoint("carvana-test-ep", session)
    assert recorder.one("DeleteEndpoint") == {"EndpointName": "carvana-test-ep"}
    assert recorder.one("DeleteEndpointConfig") == {"EndpointConfigName": config["EndpointConfigName"]}
    assert recorder.one("DeleteModel") == {"ModelName": model["ModelName"]}


def test_serverless_deploy_uses_the_cpu_image(sm) -> None:
    settings, session, recorder = sm
    spec = DeploySpec(
        endpoint_name="carvana-test-sls",
        model_data=_upload_model(settings.bucket),
        serverless=True,
        memory_mb=3072,
        max_concurrency=4,
    )
    smb.deploy(spec, settings, session=session)
    assert recorder.one("CreateModel")["PrimaryContainer"]["Image"] == f"{ECR}/tensorflow-inference:2.19-cpu"
    variant = recorder.one("CreateEndpointConfig")["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 4}
    assert "InstanceType" not in variant


def test_cli_fit_on_sagemaker(aws: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The CLI path end to end, checked through moto's record of the job."""
    monkeypatch.setenv("SAGEMAKER_ROLE", ACCOUNT_ROLE)
    code = cli_main(
        [
            "fit",
            "--backend",
            "sagemaker",
            "--bucket",
            aws,
            "--no-wait",
            "--data",
            f"s3://{aws}/tfrecords",
            "--epochs",
            "2",
            "--hp",
            "depth=3",
            "--job-name",
            "carvana-cli-1",
            "--instance-type",
            "ml.g4dn.xlarge",
        ]
    )
    assert code == 0, capsys.readouterr().err
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName="carvana-cli-1")
    assert job["HyperParameters"]["epochs"] == "2" and job["HyperParameters"]["depth"] == "3"
    assert job["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert job["AlgorithmSpecification"]["TrainingImage"] == f"{ECR}/tensorflow-training:2.19-gpu-py312"
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["train", "validation"]


def test_cli_refuses_sagemaker_without_role_or_local_channels(
    aws: str, monkeypatch, capsys, tmp_path: Path
) -> None:
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    assert cli_main(["fit", "--backend", "sagemaker", "--bucket", aws, "--data", f"s3://{aws}/x"]) == 2
    assert "--role" in capsys.readouterr().err
    code = cli_main(
        [
            "fit",
            "--backend",
            "sagemaker",
            "--bucket",
            aws,
            "--role",
            ACCOUNT_ROLE,
            "--data",
            str(tmp_path),
            "--no-wait",
        ]
    )
    assert code == 2
    assert "SageMaker reads s3:// prefixes" in capsys.readouterr().err


def test_transform_creates_the_model_and_a_single_record_transform_job(sm) -> None:
    """Batch Transform over an S3 prefix of photos: the same repacked model.tar.gz and handlers as
    an endpoint, one record per object (SplitType None, SingleRecord), the Accept passed through."""
    settings, session, recorder = sm
    spec = TransformSpec(
        job_name="carvana-transform-test-1",
        model_data=_upload_model(settings.bucket),
        input=f"s3://{settings.bucket}/studio/2025-01-01/",
        output=f"s3://{settings.bucket}/masks/2025-01-01/",
        accept="image/png; variant=cutout",
        instance_count=2,
        max_concurrent_transforms=4,
        environment={"CARVANA_MAX_PIXELS": "20000000"},
        tags={"team": "studio"},
    )
    result = smb.transform(spec, settings, session=session)

    model = recorder.one("CreateModel")
    assert model["PrimaryContainer"]["Image"] == f"{ECR}/tensorflow-inference:2.19-cpu"  # ml.c5.xlarge
    assert model["PrimaryContainer"]["Environment"]["CARVANA_MAX_PIXELS"] == "20000000"
    files = s3_tar_names(model["PrimaryContainer"]["ModelDataUrl"])
    assert {"unet/1/saved_model.pb", "code/inference.py", "code/trainer/wire.py"} <= set(files)

    job = recorder.one("CreateTransformJob")
    assert job["TransformJobName"] == "carvana-transform-test-1"
    assert job["ModelName"] == model["ModelName"] == "carvana-transform-test-1-model"
    assert job["BatchStrategy"] == "SingleRecord"
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (4, 6)
    assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 60, "InvocationsMaxRetries": 3}
    assert job["Environment"] == {"CARVANA_MAX_PIXELS": "20000000"}
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input}},
        "ContentType": "application/x-image",
        "SplitType": "None",
    }
    assert job["TransformOutput"] == {"S3OutputPath": spec.output, "Accept": "image/png; variant=cutout"}
    assert "AssembleWith" not in job["TransformOutput"]  # one binary answer per object, not lines
    assert job["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2}
    assert {"Key": "team", "Value": "studio"} in job["Tags"]
    assert (result.job_name, result.output) == (spec.job_name, spec.output)


def test_cli_transform_on_sagemaker(aws: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SAGEMAKER_ROLE", ACCOUNT_ROLE)
    model = _upload_model(aws)
    common = ["transform", "--backend", "sagemaker", "--bucket", aws, "--no-wait", "--model", model]
    code = cli_main(
        [
            *common,
            "--input",
            f"s3://{aws}/in/",
            "--output",
            f"s3://{aws}/out/",
            "--job-name",
            "carvana-tx-cli",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "transform job carvana-tx-cli:" in capsys.readouterr().out
    job = boto3.client("sagemaker").describe_transform_job(TransformJobName="carvana-tx-cli")
    assert job["TransformOutput"]["Accept"] == "image/png"
    assert job["TransformResources"]["InstanceType"] == "ml.c5.xlarge"

    assert cli_main([*common, "--input", "photos/", "--output", f"s3://{aws}/out/"]) == 2
    assert "--input: Batch Transform reads and writes s3:// prefixes, got photos/" in capsys.readouterr().err
