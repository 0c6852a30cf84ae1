"""The two backends behind the same calls: ``fit``, ``tune``, ``deploy``, ``delete_endpoint``,
``transform``.

A notebook or the CLI picks one with :func:`make_backend` and then never asks which it has: the
local backend hands the specs to the local stand-ins (``local_aws``: training jobs as subprocesses
in SageMaker-shaped folders under ``work``, an Optuna tuner, ``carvana serve`` as the endpoint and
behind a local Batch Transform job);
the SageMaker backend (imported only when asked for, since the SDK is slow to import) runs the same
specs on AWS. The launcher never ships into a job (``source.py`` leaves it out), so it may use the
stand-ins.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from local_aws.training_job.job import load_result, run_job
from trainer.launch.errors import JobFailedError, LaunchError
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

if TYPE_CHECKING:
    from trainer.launch.sagemaker_backend import SageMakerSettings

BACKENDS = ("local", "sagemaker")
DEFAULT_WORK = Path("jobs")
DEFAULT_PORT = 8080
# A local endpoint gets as long as a job to finish in-flight requests after SIGTERM.
ENDPOINT_STOP_GRACE_S = 120


class Backend(Protocol):
    """What both backends offer."""

    def fit(self, spec: JobSpec) -> JobResult: ...

    def tune(self, spec: TuningSpec) -> TuningResult: ...

    def describe_job(self, job_name: str) -> JobResult: ...

    def deploy(self, spec: DeploySpec) -> DeployResult: ...

    def delete_endpoint(self, endpoint_name: str) -> None: ...

    def transform(self, spec: TransformSpec) -> TransformResult: ...


@dataclass
class LocalBackend:
    """Jobs under ``work/<job-name>/``, tuning studies under ``work/<tuning-job>/``, local endpoints."""

    work: Path = DEFAULT_WORK
    stream: TextIO | None = None  # where job logs go (default stdout)
    port: int = DEFAULT_PORT
    _endpoints: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def fit(self, spec: JobSpec) -> JobResult:
        return run_job(spec, self.work, stream=self.stream)

    def tune(self, spec: TuningSpec) -> TuningResult:
        from local_aws.tuning import tune  # Optuna and matplotlib only when tuning

        return tune(spec, self.work, stream=self.stream)

    def describe_job(self, job_name: str) -> JobResult:
        return load_result(Path(self.work) / job_name)

    def deploy(self, spec: DeploySpec) -> DeployResult:
        """Start ``carvana serve`` on ``port`` and wait for ``/ping``; it runs until :meth:`delete_endpoint`.

        The spec's environment goes to the server as the container's environment would
        (``SAGEMAKER_TFS_*`` batching and worker settings). Instance type, count and serverless
        settings have no local meaning and are ignored.
        """
        # The endpoint stand-in is needed by deploy only.
        from local_aws.endpoint.process import EndpointStartError, start_endpoint

        if spec.endpoint_name in self._endpoints:
            raise LaunchError(f"endpoint {spec.endpoint_name} is already running")
        model = Path(spec.model_data)
        if not model.exists():
            raise LaunchError(f"--model: {spec.model_data} does not exist")
        log_path = Path(self.work) / "endpoints" / f"{spec.endpoint_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            process = start_endpoint(
                model.resolve(),
                "--endpoint-name",
                spec.endpoint_name,
                port=self.port,
                log_path=log_path,
                env=dict(spec.environment),
            )
        except EndpointStartError as err:
            raise JobFailedError(str(err)) from None
        self._endpoints[spec.endpoint_name] = process
        return DeployResult(
            endpoint_name=spec.endpoint_name,
            model_data=str(spec.model_data),
            url=f"http://127.0.0.1:{self.port}",
            command=tuple(serve_command(spec, self.port)),
        )

    def wait_endpoint(self, endpoint_name: str) -> int:
        """Block until the endpoint's server exits (the CLI's foreground mode); its exit code."""
        return self._endpoints[endpoint_name].wait()

    def transform(self, spec: TransformSpec) -> TransformResult:
        """A Batch Transform job over a folder (local_aws/batch_transform.py), its files under
        ``work/<job-name>/`` (description.json, the endpoint's log)."""
        from local_aws.batch_transform import run_transform  # starts an endpoint: only when asked

        return run_transform(spec, self.work, stream=self.stream)

    def delete_endpoint(self, endpoint_name: str) -> None:
        process = self._endpoints.pop(endpoint_name, None)
        if process is None:
            raise LaunchError(f"no local endpoint {endpoint_name} was started by this backend")
        process.terminate()  # SIGTERM: in-flight requests finish
        try:
            process.wait(timeout=ENDPOINT_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_command(spec: DeploySpec, port: int) -> list[str]:
    """``carvana serve`` for the deployment, as ``carvana deploy --print-only`` shows it."""
    return [
        sys.executable,
        "-m",
        "trainer.cli",
        "serve",
        "--model",
        str(Path(spec.model_data).resolve()),
        "--port",
        str(port),
        "--endpoint-name",
        spec.endpoint_name,
    ]


def make_backend(
    name: str,
    *,
    work: Path = DEFAULT_WORK,
    settings: SageMakerSettings | None = None,
    stream: TextIO | None = None,
    port: int = DEFAULT_PORT,
) -> Backend:
    """``"local"`` or ``"sagemaker"`` (which needs ``settings``: role, bucket, region)."""
    if name == "local":
        return LocalBackend(work=Path(work), stream=stream, port=port)
    if name == "sagemaker":
        if settings is None:
            raise LaunchError("the sagemaker backend needs settings (--role, --bucket)")
        from trainer.launch.sagemaker_backend import SageMakerBackend  # the SDK takes seconds to import

        return SageMakerBackend(settings)
    raise LaunchError(f"--backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
