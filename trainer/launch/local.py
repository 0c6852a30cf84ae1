"""The local backend: run a training job here exactly as a SageMaker training container would.

The job gets a folder shaped like the container's ``/opt/ml``::

    <work>/<job-name>/opt/ml/code/                      the staged source (train.py + trainer/)
    <work>/<job-name>/opt/ml/input/data/<channel>       symlinks to the local channel folders
    <work>/<job-name>/opt/ml/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json
    <work>/<job-name>/opt/ml/{model,output/data,output/tensorboard,checkpoints}

the ``SM_*`` variables the SageMaker training toolkit sets, and its command line (``python train.py``
in the code folder with the hyperparameters as sorted ``--name value`` pairs). The log is streamed
and scraped with the same metric regexes as the SageMaker metric definitions, and at the end the
model folder becomes ``<work>/<job-name>/output/model.tar.gz`` and ``output/data`` becomes
``output.tar.gz``, as SageMaker uploads them. ``description.json`` mirrors DescribeTrainingJob.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from trainer.atomic import atomic_path, write_json
from trainer.launch.source import ENTRY_POINT, stage_training_source
from trainer.launch.spec import (
    METRIC_DEFINITIONS,
    DeploySpec,
    HyperValue,
    JobFailedError,
    JobResult,
    JobSpec,
    LaunchError,
    scrape_metrics,
)

HOST = "algo-1"
# SageMaker sends SIGTERM on StopTrainingJob / spot reclaim and SIGKILLs 120 s later.
STOP_GRACE_S = 120
LOG_TAIL_LINES = 20

# Called with the metrics of each epoch line; returning True stops the job (early stopping).
EpochCallback = Callable[[Mapping[str, float]], bool]


@dataclass(frozen=True)
class JobLayout:
    """The folders of one local job (``root`` = ``<work>/<job-name>``)."""

    root: Path

    @property
    def opt_ml(self) -> Path:
        return self.root / "opt" / "ml"

    @property
    def code(self) -> Path:
        return self.opt_ml / "code"

    @property
    def input_data(self) -> Path:
        return self.opt_ml / "input" / "data"

    @property
    def input_config(self) -> Path:
        return self.opt_ml / "input" / "config"

    @property
    def model(self) -> Path:
        return self.opt_ml / "model"

    @property
    def output(self) -> Path:
        return self.opt_ml / "output"

    @property
    def output_data(self) -> Path:
        return self.output / "data"

    @property
    def checkpoints(self) -> Path:
        return self.opt_ml / "checkpoints"

    @property
    def artifacts(self) -> Path:
        """Where SageMaker would upload: ``s3://<output_path>/<job-name>/output/``."""
        return self.root / "output"

    @property
    def log(self) -> Path:
        """Stands in for the CloudWatch stream ``/aws/sagemaker/TrainingJobs/<job>/algo-1-...``."""
        return self.root / "logs" / f"{HOST}.log"

    @property
    def description(self) -> Path:
        return self.root / "description.json"


def encode_hyperparameters(hyperparameters: Mapping[str, HyperValue]) -> dict[str, str]:
    """Each value as a JSON string, as the SageMaker SDK sends them (``"8"``, ``"\\"256x384\\""``)."""
    return {str(key): json.dumps(value) for key, value in hyperparameters.items()}


def decode_hyperparameters(encoded: Mapping[str, str]) -> dict[str, object]:
    """The training toolkit's reading of hyperparameters.json: JSON when it parses, else the text."""
    decoded: dict[str, object] = {}
    for key, value in encoded.items():
        try:
            decoded[key] = json.loads(value)
        except (ValueError, TypeError):
            decoded[key] = value
    return decoded


def to_cmd_args(hyperparameters: Mapping[str, object]) -> list[str]:
    """``--name value`` pairs in sorted key order, as the toolkit builds the script's arguments."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        if isinstance(value, Mapping):
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        args += [f"--{key}" if len(key) > 1 else f"-{key}", "" if value is None else str(value)]
    return args


def count_gpus() -> int:
    """GPUs the way the toolkit counts them (``nvidia-smi --list-gpus``), 0 without a driver."""
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def prepare_job(spec: JobSpec, work: str | Path) -> JobLayout:
    """Create the job folder, stage the code, link the channels and write the config files.

    A job name is used once, as on SageMaker (a second CreateTrainingJob with the same name fails):
    re-running under the same name would mix two runs' files.
    """
    if spec.instance_count != 1:
        raise LaunchError(f"the local backend runs one host; got instance count {spec.instance_count}")
    layout = JobLayout(Path(work).resolve() / spec.job_name)
    if layout.root.exists():
        raise LaunchError(
            f"job {spec.job_name!r} already exists in {layout.root.parent}: "
            "pick another --job-name (SageMaker job names are unique too)"
        )
    channels: dict[str, Path] = {}
    for channel, location in spec.channels.items():
        if "://" in location:
            raise LaunchError(f"channel {channel}: the local backend reads local folders, got {location}")
        folder = Path(location).expanduser().resolve()
        if not folder.is_dir():
            raise LaunchError(f"channel {channel}: folder {location} does not exist")
        channels[channel] = folder

    for folder in (
        layout.input_data,
        layout.input_config,
        layout.model,
        layout.output_data,
        layout.output / "tensorboard",
        layout.artifacts,
        layout.log.parent,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    stage_training_source(layout.code)
    for channel, folder in channels.items():
        # FastFile mode streams S3 objects as files without copying them first; a symlink is the
        # local equivalent.
        (layout.input_data / channel).symlink_to(folder, target_is_directory=True)
    if spec.checkpoint_uri:
        # SageMaker keeps /opt/ml/checkpoints in sync with checkpoint_s3_uri and restores it when a
        # job (or its spot restart) begins; a link to the folder behaves the same way.
        checkpoint_folder = Path(spec.checkpoint_uri).expanduser().resolve()
        checkpoint_folder.mkdir(parents=True, exist_ok=True)
        layout.checkpoints.symlink_to(checkpoint_folder, target_is_directory=True)
    else:
        layout.checkpoints.mkdir()

    hyperparameters = {
        **encode_hyperparameters(spec.hyperparameters),
        **encode_hyperparameters(
            {
                "sagemaker_program": ENTRY_POINT,
                "sagemaker_submit_directory": f"file://{layout.code}",
                "sagemaker_container_log_level": 20,
                "sagemaker_job_name": spec.job_name,
                "sagemaker_region": os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION", "local"),
            }
        ),
    }
    write_json(layout.input_config / "hyperparameters.json", hyperparameters, default=str)
    write_json(
        layout.input_config / "inputdataconfig.json",
        {
            channel: {
                "TrainingInputMode": "FastFile",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
            }
            for channel in channels
        },
        default=str,
    )
    write_json(layout.input_config / "resourceconfig.json", _resource_config(), default=str)
    return layout


def _resource_config() -> dict[str, object]:
    return {
        "current_host": HOST,
        "current_instance_type": "local",
        "current_group_name": "homogeneousCluster",
        "hosts": [HOST],
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": "local", "hosts": [HOST]}
        ],
        "network_interface_name": "eth0",
    }


def script_hyperparameters(layout: JobLayout) -> dict[str, object]:
    """The script's hyperparameters as the toolkit reads them: decoded, ``sagemaker_*`` left out."""
    encoded = json.loads((layout.input_config / "hyperparameters.json").read_text())
    return {k: v for k, v in decode_hyperparameters(encoded).items() if not k.startswith("sagemaker_")}


def container_env(layout: JobLayout, job_name: str) -> dict[str, str]:
    """The ``SM_*`` variables the training toolkit derives from the config files, for this job.

    Values follow the toolkit's encoding: strings as they are, everything else compact JSON.
    ``sagemaker_*`` hyperparameters are the framework's, not the script's, so they are left out of
    ``SM_HPS``, ``SM_HP_*`` and the arguments, as in the container.
    """
    config = layout.input_config
    hps = script_hyperparameters(layout)
    channels = json.loads((config / "inputdataconfig.json").read_text())
    resource = json.loads((config / "resourceconfig.json").read_text())
    values: dict[str, object] = {
        "model_dir": str(layout.model),
        "channels": sorted(channels),
        "output_data_dir": str(layout.output_data),
        "output_dir": str(layout.output),
        "output_intermediate_dir": str(layout.output / "intermediate"),
        "input_dir": str(layout.opt_ml / "input"),
        "input_config_dir": str(config),
        "hps": hps,
        "user_args": to_cmd_args(hps),
        "hosts": resource["hosts"],
        "current_host": resource["current_host"],
        "current_instance_type": resource["current_instance_type"],
        "current_instance_group": resource["current_group_name"],
        "network_interface_name": resource["network_interface_name"],
        "resource_config": resource,
        "input_data_config": channels,
        "num_gpus": count_gpus(),
        "num_cpus": os.cpu_count() or 1,
        "log_level": 20,
        "user_entry_point": ENTRY_POINT,
        "module_name": ENTRY_POINT.removesuffix(".py"),
        "module_dir": str(layout.code),
        "framework_module": "sagemaker_tensorflow_container.training:main",
        "framework_params": {},  # distribution settings; none for one host
    }
    values["training_env"] = {**values, "job_name": job_name, "hyperparameters": hps}
    values.update({f"channel_{name}": str(layout.input_data / name) for name in channels})
    values.update({f"hp_{key}": value for key, value in hps.items()})
    env = {
        f"SM_{key.upper()}": value
        if isinstance(value, str)
        else json.dumps(value, sort_keys=True, separators=(",", ":"))
        for key, value in values.items()
    }
    env["TRAINING_JOB_NAME"] = job_name
    return env


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(container_env(layout, spec.job_name))
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, ENTRY_POINT, *to_cmd_args(script_hyperparameters(layout))]
    started = dt.datetime.now(dt.UTC)
    print(f"[{spec.job_name}] {' '.join(command[1:])}  (in {layout.code})", file=stream, flush=True)

    history: list[dict[str, float]] = []
    final: dict[str, float] = {}
    tail: list[str] = []
    stopped = interrupted = timed_out = False
    with (
        layout.log.open("w") as log,
        subprocess.Popen(
            command,
            cwd=layout.code,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        ) as process,
    ):

        def consume(line: str) -> None:
            nonlocal tail, stopped
            stream.write(line)
            stream.flush()
            log.write(line)
            tail = [*tail[-(LOG_TAIL_LINES - 1) :], line.rstrip()]
            metrics = scrape_metrics(line)
            final.update(metrics)
            if "epoch" in metrics:
                history.append(metrics)
                if on_epoch is not None and not stopped and on_epoch(metrics):
                    stopped = True
                    print(f"[{spec.job_name}] early stopping: sending SIGTERM", file=stream, flush=True)
                    _send_sigterm(process)

        def on_max_run() -> None:
            nonlocal timed_out
            timed_out = True
            print(f"[{spec.job_name}] MaxRuntimeInSeconds ({spec.max_run_s}) reached: sending SIGTERM",
                  file=stream, flush=True)
            _send_sigterm(process)

        # SageMaker stops a job that outlives max_run the same way (SIGTERM, then the grace period).
        watchdog = threading.Timer(spec.max_run_s, on_max_run)
        watchdog.daemon = True
        watchdog.start()
        lines = iter(process.stdout.readline, "")
        try:
            for line in lines:
                consume(line)
        except KeyboardInterrupt:
            interrupted = stopped = True
            print(
                f"[{spec.job_name}] interrupted: sending SIGTERM, waiting up to {STOP_GRACE_S} s",
                file=stream,
                flush=True,
            )
            _send_sigterm(process)
            for line in lines:  # drain, so the job never blocks on a full pipe while it saves
                consume(line)
        returncode = _wait(process)
        watchdog.cancel()

    status = "Stopped" if stopped or timed_out else ("Completed" if returncode == 0 else "Failed")
    secondary = "MaxRuntimeExceeded" if timed_out and not stopped else status
    failure = "" if status != "Failed" else _failure_reason(layout, returncode, tail)
    result = _finish(spec, layout, (status, secondary), failure, final, history, started)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _send_sigterm(process: subprocess.Popen) -> None:
    """SIGTERM to the job's process group (its own session, so a terminal's Ctrl-C does not reach it)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def _wait(process: subprocess.Popen) -> int:
    """The exit code; a job still running STOP_GRACE_S after SIGTERM is killed, as SageMaker does."""
    try:
        return process.wait(timeout=STOP_GRACE_S if process.poll() is None else None)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _failure_reason(layout: JobLayout, returncode: int, tail: list[str]) -> str:
    """SageMaker reports /opt/ml/output/failure when the script wrote one, else the log's end."""
    failure_file = layout.output / "failure"
    if failure_file.is_file() and failure_file.read_text().strip():
        return failure_file.read_text().strip()
    return f"ExecuteUserScriptError: exit code {returncode}\n" + "\n".join(tail)


def _tar_folder(folder: Path, target: Path) -> Path:
    """``folder``'s contents at the root of a gzipped tar, like SageMaker's artifact upload."""
    with atomic_path(target) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return target


def _finish(
    spec: JobSpec,
    layout: JobLayout,
    statuses: tuple[str, str],
    failure: str,
    final: Mapping[str, float],
    history: list[dict[str, float]],
    started: dt.datetime,
) -> JobResult:
    """Package the artifacts (SageMaker uploads them for Completed and Stopped jobs), describe it."""
    status, secondary = statuses
    model_artifact = output_artifact = None
    if status != "Failed":
        model_artifact = str(_tar_folder(layout.model, layout.artifacts / "model.tar.gz"))
    if status != "Failed" or any(layout.output_data.iterdir()):
        output_artifact = str(_tar_folder(layout.output_data, layout.artifacts / "output.tar.gz"))
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
            k: v
            for k, v in decode_hyperparameters(desc["HyperParameters"]).items()
            if not k.startswith("sagemaker_")
        },
        failure_reason=desc.get("FailureReason", ""),
    )


def serve_command(spec: DeploySpec, port: int) -> list[str]:
    """``carvana serve`` for the deployment: the local stand-in for a SageMaker endpoint."""
    return [sys.executable, "-m", "trainer.cli", "serve", "--model", str(Path(spec.model_data).resolve()),
            "--port", str(port), "--endpoint-name", spec.endpoint_name]


def start_endpoint(spec: DeploySpec, port: int, log_path: Path, *,
                   timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start ``carvana serve`` in the background and wait until ``/ping`` answers 200.

    The spec's environment goes to the server as the container's environment would
    (``SAGEMAKER_TFS_*`` batching and worker settings). Instance type, count and serverless settings
    have no local meaning and are ignored.
    """
    if not Path(spec.model_data).exists():
        raise LaunchError(f"--model: {spec.model_data} does not exist")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(serve_command(spec, port), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **spec.environment}, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise JobFailedError(f"carvana serve exited with code {process.returncode}:\n"
                                 + "\n".join(log_path.read_text().splitlines()[-LOG_TAIL_LINES:]))
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            if response.status == 200:
                return process, url
        time.sleep(0.5)
    stop_endpoint(process)
    raise JobFailedError(f"carvana serve did not answer {url}/ping within {timeout_s:.0f} s; see {log_path}")


def stop_endpoint(process: subprocess.Popen) -> None:
    """SIGTERM (in-flight requests finish), then SIGKILL if it lingers."""
    _send_sigterm(process)
    _wait(process)
