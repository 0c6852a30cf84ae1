"""The local stand-in for a SageMaker Batch Transform job: a folder of photos through the endpoint.

It runs what a transform job runs: the same model.tar.gz and ``code/inference.py``, served by
``carvana serve`` (local_aws/endpoint/, started with :func:`running_endpoint`) with the variables
SageMaker sets in a transform job's container (``SAGEMAKER_BATCH=true``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``,
``SAGEMAKER_BATCH_STRATEGY=SINGLE_RECORD``, ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``; AWS docs,
"Custom Inference Code with Batch Transform"), and the contract of a job with SplitType None and
BatchStrategy SingleRecord:

- every file under the input folder is one record, sent whole as the body of one
  ``POST /invocations`` with the job's ``Content-Type`` and ``Accept``, at most
  ``max_concurrent_transforms`` at a time;
- a record over ``MaxPayloadInMB`` is an error ("Exceeding the MaxPayloadInMB limit causes an
  error", docs ``batch-transform-errors``), and is not sent;
- a 200 answer becomes ``<output>/<relative path>.out`` (docs ``batch-transform``: "the output files
  are named input1.csv.out"), written whole or not at all (trainer/atomic.py);
- a refused record leaves no ``.out``, the other records are still transformed, and the job ends
  **Failed** ("If an input file contains a bad record, the transform job doesn't create an output
  file for that input file ... a transform job continues to process input files even if it fails to
  process one ... SageMaker marks the job as failed", docs ``batch-transform-errors``). Failed
  invocations are retried up to ``InvocationsMaxRetries`` times when the answer is 5xx or none came
  (the real container answers 500 for every handler error, so AWS retries a bad photo too and
  fails it all the same; a 4xx from ``carvana serve`` is final at once, the same outcome sooner).

What it adds, for a folder on one machine: a job already partly done resumes (an input whose
``.out`` exists is skipped), a progress bar, and ``<work>/<job>/description.json`` (status, counts,
each failed record with the container's status and message) beside the endpoint's log. What it does
not do: S3 (input and output are folders), several instances, the container image itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TextIO

import requests
from tqdm import tqdm

from local_aws.endpoint.process import EndpointStartError, free_port, running_endpoint
from trainer.atomic import atomic_path, write_json
from trainer.launch.errors import JobFailedError, LaunchError
from trainer.launch.specs import TransformFailure, TransformResult, TransformSpec
from trainer.wire import MB

OUTPUT_SUFFIX = ".out"
DESCRIPTION = "description.json"
# On 2 shared cores a worker importing TensorFlow and loading the model can take minutes.
ENDPOINT_START_TIMEOUT_S = 240.0


def list_inputs(folder: Path) -> list[str]:
    """Every file under ``folder`` (an S3 prefix's objects), as sorted relative POSIX paths."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def output_path(output: Path, relative: str) -> Path:
    """Where the answer for input ``relative`` goes: ``<output>/<relative>.out``."""
    return output / f"{relative}{OUTPUT_SUFFIX}"


class _Invoker:
    """Sends one record to the endpoint as Batch Transform would, with its retries."""

    def __init__(self, spec: TransformSpec, url: str) -> None:
        self.spec = spec
        self.url = f"{url}/invocations"
        self.headers = {"Content-Type": spec.content_type, "Accept": spec.accept}
        self.limit = spec.max_payload_mb * MB

    def __call__(self, relative: str, source: Path, target: Path) -> TransformFailure | None:
        """Write ``target`` from ``source``'s answer; the failure instead when it was refused."""
        size = source.stat().st_size
        if size > self.limit:
            return TransformFailure(
                relative,
                None,
                f"object is {size} bytes, over MaxPayloadInMB={self.spec.max_payload_mb} "
                f"({self.limit} bytes): with SplitType None each object is sent whole",
            )
        body = source.read_bytes()
        failure = TransformFailure(relative, None, "not sent")
        for _attempt in range(1 + self.spec.invocation_retries):
            try:
                response = requests.post(
                    self.url, data=body, headers=self.headers, timeout=self.spec.invocation_timeout_s
                )
            except requests.RequestException as err:
                failure = TransformFailure(relative, None, f"no answer from the container: {err}")
                continue
            if response.status_code == 200:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(response.content)
                return None
            failure = TransformFailure(relative, response.status_code, _message(response))
            if response.status_code < 500:
                break  # the handler refused the photo itself: another try would be refused alike
            with contextlib.suppress(ValueError):
                time.sleep(min(float(response.headers.get("Retry-After", "0")), 1.0))
        return failure


def _message(response: requests.Response) -> str:
    """The container's error message (``{"error": ...}`` or the body's text)."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def _describe(spec: TransformSpec, result: TransformResult, total: int) -> dict[str, object]:
    """``description.json``: DescribeTransformJob's fields for the job, and what this run did."""
    return {
        "TransformJobName": spec.job_name,
        "TransformJobStatus": result.status,
        "FailureReason": result.failure_reason,
        "ModelData": spec.model_data,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input}},
            "ContentType": spec.content_type,
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": spec.output, "Accept": spec.accept},
        "BatchStrategy": "SingleRecord",
        "MaxConcurrentTransforms": spec.max_concurrent_transforms,
        "MaxPayloadInMB": spec.max_payload_mb,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": spec.invocation_timeout_s,
            "InvocationsMaxRetries": spec.invocation_retries,
        },
        "Environment": spec.container_environment,
        "Inputs": total,
        "Transformed": result.transformed,
        "Skipped": result.skipped,
        "Seconds": round(result.seconds, 3),
        "StartupSeconds": round(result.startup_seconds, 3),
        "PhotosPerSecond": round(result.photos_per_second, 3),
        "Failures": [{"input": f.input, "status": f.status, "message": f.message} for f in result.failures],
    }


def _failure_reason(failures: list[TransformFailure], total: int) -> str:
    first = failures[0]
    status = f"{first.status}: " if first.status is not None else ""
    return (
        f"ClientError: {len(failures)} of {total} input objects could not be transformed (no "
        f"{OUTPUT_SUFFIX} written for them); first {first.input}: {status}{first.message}"
    )


@contextlib.contextmanager
def _endpoint(spec: TransformSpec, job_dir: Path) -> Iterator[str]:
    """``carvana serve`` on the job's model with a transform job's container environment."""
    env = spec.container_environment
    try:
        with running_endpoint(
            Path(spec.model_data).resolve(),
            # Admit every concurrent transform: Batch Transform's requests never queue behind a gate.
            "--max-inflight",
            str(spec.max_concurrent_transforms),
            port=free_port(),
            log_path=job_dir / "endpoint.log",
            env=env,
            timeout_s=ENDPOINT_START_TIMEOUT_S,
        ) as url:
            yield url
    except EndpointStartError as err:
        raise JobFailedError(f"transform job {spec.job_name}: the container did not start: {err}") from None


def run_transform(spec: TransformSpec, work: Path, *, stream: TextIO | None = None) -> TransformResult:
    """Run the job over ``spec.input`` into ``spec.output``; resumes where an earlier run stopped.

    Returns the result (Completed, or Failed with the failed records); raises LaunchError for a
    job that cannot start (no input folder or model) and JobFailedError when the container cannot.
    An interruption (Ctrl-C) leaves every ``.out`` written so far whole, and the job Stopped.
    """
    source, output, model = Path(spec.input), Path(spec.output), Path(spec.model_data)
    if not source.is_dir():
        raise LaunchError(f"--input: {source} is not a folder (the local backend reads a folder of photos)")
    if not model.exists():
        raise LaunchError(f"--model: {model} does not exist")
    inputs = list_inputs(source)
    if not inputs:
        raise LaunchError(f"--input: no files under {source} (each file is one photo to transform)")
    job_dir = Path(work) / spec.job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    pending = [name for name in inputs if not output_path(output, name).exists()]
    started = time.perf_counter()
    failures: list[TransformFailure] = []
    status, startup = "Stopped", 0.0
    try:
        if pending:
            failures, startup = _transform_all(spec, job_dir, source, output, pending, stream)
        status = "Failed" if failures else "Completed"
    finally:
        result = TransformResult(
            job_name=spec.job_name,
            status=status,
            output=str(output),
            failure_reason=_failure_reason(failures, len(inputs)) if failures else "",
            transformed=len(pending) - len(failures) if status != "Stopped" else 0,
            skipped=len(inputs) - len(pending),
            failures=tuple(failures),
            seconds=time.perf_counter() - started,
            startup_seconds=startup,
            report=job_dir / DESCRIPTION,
        )
        write_json(job_dir / DESCRIPTION, _describe(spec, result, len(inputs)))
    return result


def _transform_all(
    spec: TransformSpec, job_dir: Path, source: Path, output: Path, pending: list[str], stream: TextIO | None
) -> tuple[list[TransformFailure], float]:
    """Every pending record through the endpoint, ``max_concurrent_transforms`` at a time; the
    failures, and the seconds the container took to start."""
    failures: list[TransformFailure] = []
    started = time.perf_counter()
    with _endpoint(spec, job_dir) as url:
        startup = time.perf_counter() - started
        invoke = _Invoker(spec, url)
        pool = ThreadPoolExecutor(spec.max_concurrent_transforms, thread_name_prefix="transform")
        try:
            futures: list[Future[TransformFailure | None]] = [
                pool.submit(invoke, name, source / name, output_path(output, name)) for name in pending
            ]
            with tqdm(total=len(pending), desc="transform", unit="photo", file=stream) as bar:
                for future in as_completed(futures):
                    if (failure := future.result()) is not None:
                        failures.append(failure)
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: running requests finish whole
    return sorted(failures, key=lambda f: f.input), startup
