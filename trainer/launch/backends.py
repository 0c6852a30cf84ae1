"""The two backends behind the same calls: ``fit``, ``tune``, ``deploy``, ``delete_endpoint``.

A notebook or the CLI picks one with :func:`make_backend` and then never asks which it has: the
local backend runs jobs as subprocesses in SageMaker-shaped folders under ``work`` and serves with
``carvana serve``; the SageMaker backend (imported only when asked for, since the SDK is slow to
import) runs the same specs on AWS.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from trainer.launch import local
from trainer.launch.spec import (
    DeployResult,
    DeploySpec,
    JobResult,
    JobSpec,
    LaunchError,
    TuningResult,
    TuningSpec,
)

if TYPE_CHECKING:
    from trainer.launch.sagemaker_backend import SageMakerSettings

BACKENDS = ("local", "sagemaker")
DEFAULT_WORK = Path("jobs")
DEFAULT_PORT = 8080


class Backend(Protocol):
    """What both backends offer."""

    def fit(self, spec: JobSpec) -> JobResult: ...

    def tune(self, spec: TuningSpec) -> TuningResult: ...

    def model_data(self, job_name: str) -> str: ...

    def deploy(self, spec: DeploySpec) -> DeployResult: ...

    def delete_endpoint(self, endpoint_name: str) -> None: ...


@dataclass
class LocalBackend:
    """Jobs under ``work/<job-name>/``, tuning studies under ``work/<tuning-job>/``, local endpoints."""

    work: Path = DEFAULT_WORK
    stream: TextIO | None = None  # where job logs go (default stdout)
    port: int = DEFAULT_PORT
    _endpoints: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def fit(self, spec: JobSpec) -> JobResult:
        return local.run_job(spec, self.work, stream=self.stream)

    def tune(self, spec: TuningSpec) -> TuningResult:
        from trainer.launch.tuning import tune  # Optuna and matplotlib only when tuning

        return tune(spec, self.work, stream=self.stream)

    def model_data(self, job_name: str) -> str:
        result = local.load_result(Path(self.work) / job_name)
        if result.model_artifact is None:
            raise LaunchError(f"job {job_name} is {result.status}: it left no model.tar.gz")
        return result.model_artifact

    def deploy(self, spec: DeploySpec) -> DeployResult:
        """Start ``carvana serve`` on ``port``; it runs until :meth:`delete_endpoint` (or exit)."""
        if spec.endpoint_name in self._endpoints:
            raise LaunchError(f"endpoint {spec.endpoint_name} is already running")
        process, url = local.start_endpoint(
            spec, self.port, Path(self.work) / "endpoints" / f"{spec.endpoint_name}.log")
        self._endpoints[spec.endpoint_name] = process
        return DeployResult(endpoint_name=spec.endpoint_name, model_data=str(spec.model_data), url=url,
                            command=tuple(local.serve_command(spec, self.port)))

    def wait_endpoint(self, endpoint_name: str) -> int:
        """Block until the endpoint's server exits (the CLI's foreground mode); its exit code."""
        return self._endpoints[endpoint_name].wait()

    def delete_endpoint(self, endpoint_name: str) -> None:
        process = self._endpoints.pop(endpoint_name, None)
        if process is None:
            raise LaunchError(f"no local endpoint {endpoint_name} was started by this backend")
        local.stop_endpoint(process)


def make_backend(name: str, *, work: Path = DEFAULT_WORK, settings: SageMakerSettings | None = None,
                 stream: TextIO | None = None, port: int = DEFAULT_PORT) -> Backend:
    """``"local"`` or ``"sagemaker"`` (which needs ``settings``: role, bucket, region)."""
    if name == "local":
        return LocalBackend(work=Path(work), stream=stream, port=port)
    if name == "sagemaker":
        if settings is None:
            raise LaunchError("the sagemaker backend needs settings (--role, --bucket)")
        from trainer.launch.sagemaker_backend import SageMakerBackend  # the SDK takes seconds to import

        return SageMakerBackend(settings)
    raise LaunchError(f"--backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
