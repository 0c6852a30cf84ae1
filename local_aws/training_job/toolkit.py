"""The SageMaker training toolkit, emulated: the container's ``/opt/ml``, its config files, SM_* and argv.

A local job gets a folder shaped like the container's ``/opt/ml``::

    <work>/<job-name>/opt/ml/code/                      the staged source (train.py + trainer/)
    <work>/<job-name>/opt/ml/input/data/<channel>       symlinks to the local channel folders
    <work>/<job-name>/opt/ml/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json
    <work>/<job-name>/opt/ml/{model,output/data,output/tensorboard,checkpoints}

the ``SM_*`` variables the training toolkit derives from those files, and its command line
(``python train.py`` in the code folder with the hyperparameters as sorted ``--name value`` pairs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from local_aws.training_job.artifacts import sync_checkpoints
from trainer.atomic import write_json
from trainer.launch.errors import LaunchError
from trainer.launch.source import ENTRY_POINT, stage_training_source
from trainer.launch.specs import JobSpec
from trainer.training.hyperparameters import HyperValue

HOST = "algo-1"


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
    sync_checkpoints(layout, spec.checkpoint_uri)

    hyperparameters = {
        **encode_hyperparameters(spec.job_hyperparameters),
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


def script_command(layout: JobLayout) -> list[str]:
    """``python train.py --name value ...``: how the toolkit runs the entry point (in ``layout.code``)."""
    return [sys.executable, ENTRY_POINT, *to_cmd_args(script_hyperparameters(layout))]


def script_environment(layout: JobLayout, job_name: str) -> dict[str, str]:
    """This process's environment without its own SM_* variables, plus the container's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(container_env(layout, job_name))
    env["PYTHONUNBUFFERED"] = "1"
    return env
