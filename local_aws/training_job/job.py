"""One local training job from start to finish, and its record read back.

``run_job`` prepares the toolkit's layout (``toolkit``), runs the entry point under SageMaker's
stopping rules (``supervisor``), packages the artifacts (``artifacts``) and writes
``description.json``, which mirrors DescribeTrainingJob; ``load_result`` reads it back (deploy).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from local_aws.training_job.artifacts import package_artifacts
from local_aws.training_job.profiler import SystemMonitor
from local_aws.training_job.supervisor import EpochCallback, supervise
from local_aws.training_job.toolkit import (
    JobLayout,
    decode_hyperparameters,
    prepare_job,
    script_command,
    script_environment,
)
from trainer.atomic import write_json
from trainer.launch.errors import LaunchError
from trainer.launch.metrics import METRIC_DEFINITIONS
from trainer.launch.specs import JobResult, JobSpec


def run_job(
    spec: JobSpec,
    work: str | Path,
    *,
    on_epoch: EpochCallback | None = None,
    stream: TextIO | None = None,
) -> JobResult:
    """Run one training job to the end and return its status, metrics and artifacts.

    ``stream`` receives the live log (default: stdout). ``on_epoch`` may stop the job early, which
    sends SIGTERM as SageMaker's early stopping does; the job then counts as Stopped and its model,
    if it wrote one, is still packaged. Ctrl-C stops the job the same way, then re-raises.
    """
    stream = sys.stdout if stream is None else stream
    layout = prepare_job(spec, work)
    command = script_command(layout)
    started = dt.datetime.now(dt.UTC)
    print(f"[{spec.job_name}] {' '.join(command[1:])}  (in {layout.code})", file=stream, flush=True)
    monitor = SystemMonitor()
    outcome = supervise(
        command,
        cwd=layout.code,
        env=script_environment(layout, spec.job_name),
        log_path=layout.log,
        name=spec.job_name,
        max_run_s=spec.max_run_s,
        stream=stream,
        on_epoch=on_epoch,
        monitor=monitor,
    )
    report = monitor.write(layout.root, spec.job_name)
    if report is not None:
        print(f"[{spec.job_name}] system monitoring report: {report}", file=stream, flush=True)
    stopped = outcome.stopped or outcome.timed_out
    status = "Stopped" if stopped else ("Completed" if outcome.returncode == 0 else "Failed")
    secondary = "MaxRuntimeExceeded" if outcome.timed_out and not outcome.stopped else status
    failure = "" if status != "Failed" else failure_reason(layout, outcome.returncode, outcome.tail)
    result = _describe(spec, layout, (status, secondary), failure, outcome.final, outcome.history, started)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return result


def failure_reason(layout: JobLayout, returncode: int, tail: list[str]) -> str:
    """SageMaker reports /opt/ml/output/failure when the script wrote one, else the log's end."""
    failure_file = layout.output / "failure"
    if failure_file.is_file() and failure_file.read_text().strip():
        return failure_file.read_text().strip()
    return f"ExecuteUserScriptError: exit code {returncode}\n" + "\n".join(tail)


def _describe(
    spec: JobSpec,
    layout: JobLayout,
    statuses: tuple[str, str],
    failure: str,
    final: Mapping[str, float],
    history: list[dict[str, float]],
    started: dt.datetime,
) -> JobResult:
    """Package the artifacts, write description.json (DescribeTrainingJob's answer), return the result."""
    status, secondary = statuses
    model_artifact, output_artifact = package_artifacts(layout, status)
    ended = dt.datetime.now(dt.UTC)
    write_json(
        layout.description,
        {
            "TrainingJobName": spec.job_name,
            "TrainingJobStatus": status,
            "SecondaryStatus": secondary,
            "FailureReason": failure,
            "HyperParameters": json.loads((layout.input_config / "hyperparameters.json").read_text()),
            "AlgorithmSpecification": {
                "TrainingImage": f"local:{sys.executable}",
                "TrainingInputMode": "FastFile",
                "MetricDefinitions": list(METRIC_DEFINITIONS),
            },
            "InputDataConfig": [
                {"ChannelName": name, "DataSource": {"LocalPath": location}}
                for name, location in spec.channels.items()
            ],
            "ResourceConfig": {"InstanceType": "local", "InstanceCount": 1},
            "ModelArtifacts": {"S3ModelArtifacts": model_artifact},
            "OutputArtifact": output_artifact,
            "FinalMetricDataList": [
                {"MetricName": name, "Value": value, "Timestamp": ended.isoformat()}
                for name, value in final.items()
            ],
            "MetricHistory": history,
            "TrainingStartTime": started.isoformat(),
            "TrainingEndTime": ended.isoformat(),
            "TrainingTimeInSeconds": round((ended - started).total_seconds()),
            "Tags": [{"Key": k, "Value": v} for k, v in spec.tags.items()],
        },
        default=str,
    )
    return JobResult(
        job_name=spec.job_name,
        status=status,
        final_metrics=dict(final),
        history=tuple(history),
        model_artifact=model_artifact,
        output_artifact=output_artifact,
        job_dir=layout.root,
        hyperparameters=dict(spec.hyperparameters),
        failure_reason=failure,
    )


def load_result(job_dir: str | Path) -> JobResult:
    """A finished local job's result read back from its description.json (e.g. for deploy)."""
    job_dir = Path(job_dir)
    path = job_dir / "description.json"
    if not path.is_file():
        raise LaunchError(f"{job_dir} is not a finished local job: {path.name} is missing")
    desc = json.loads(path.read_text())
    return JobResult(
        job_name=desc["TrainingJobName"],
        status=desc["TrainingJobStatus"],
        final_metrics={m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]},
        history=tuple(desc.get("MetricHistory", ())),
        model_artifact=desc["ModelArtifacts"]["S3ModelArtifacts"],
        output_artifact=desc.get("OutputArtifact"),
        job_dir=job_dir,
        hyperparameters={
            k: v if isinstance(v, str | int | float) else str(v)
            for k, v in decode_hyperparameters(desc["HyperParameters"]).items()
            if not k.startswith("sagemaker_")
        },
        failure_reason=desc.get("FailureReason", ""),
    )
