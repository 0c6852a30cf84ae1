"""``carvana fit|tune|deploy|transform --backend local|sagemaker``: launch training, tuning,
endpoints and Batch Transform jobs.

The same flags describe a job for either backend; ``--backend local`` (the default) runs it here in
a SageMaker-shaped folder, ``--backend sagemaker`` sends it to AWS (``--role``, ``--bucket``).

Examples::

    carvana fit --data demo/tfrecords --epochs 3 --image-size 128x192
    carvana tune --data demo/tfrecords --max-jobs 6 --epochs 2 --range learning-rate=1e-4:1e-2
    carvana deploy --job-name carvana-unet-250101-120000-000          # local: carvana serve on :8080
    carvana transform --model model.tar.gz --input photos/ --output masks/   # photos/a.jpg -> masks/a.jpg.out
    carvana fit --backend sagemaker --data s3://my-bucket/carvana/tfrecords --spot \\
        --role arn:aws:iam::123456789012:role/SageMakerExecution --bucket my-bucket
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from trainer.command import run_command
from trainer.launch.backends import (
    BACKENDS,
    DEFAULT_PORT,
    DEFAULT_WORK,
    Backend,
    LocalBackend,
    make_backend,
    serve_command,
)
from trainer.launch.errors import JobFailedError, LaunchError
from trainer.launch.naming import MAX_TUNING_JOB_NAME, unique_name
from trainer.launch.search_space import SEARCH_SPACE, Categorical, Range, parse_range
from trainer.launch.specs import (
    DEFAULT_ENDPOINT_INSTANCE,
    DEFAULT_TRAINING_INSTANCE,
    DeploySpec,
    JobResult,
    JobSpec,
    TransformResult,
    TransformSpec,
    TuningSpec,
)
from trainer.model_metadata import describe as describe_metadata
from trainer.model_metadata import read_metadata
from trainer.training.config import RECIPES, TrainConfig
from trainer.training.hyperparameters import ConfigError, Declaration, HyperValue, by_flag
from trainer.wire import MEDIA_MASK_PNG

COMMANDS = ("fit", "tune", "deploy", "transform")
# The entry point's hyperparameters by flag name; those declared ``launcher=True`` are flags here too.
HYPERPARAMETERS: dict[str, Declaration] = by_flag(TrainConfig)
LAUNCHER_HYPERPARAMETERS = tuple(d for d in HYPERPARAMETERS.values() if d.launcher)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show (None, False, or already in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def coerce(value: str) -> HyperValue:
    """``"8"`` -> 8, ``"1e-3"`` -> 0.001, anything else stays text (sent as SageMaker would)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; ``flag`` names the option in errors."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"{flag} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def hyperparameter_value(declaration: Declaration, value: object) -> HyperValue:
    """A checked value of a declared hyperparameter as the job gets it; LaunchError naming the flag."""
    try:
        declaration.check(value)
    except ConfigError as err:
        raise LaunchError(str(err)) from None
    return declaration.sagemaker_value(value)


def hp_values(items: list[str] | None) -> dict[str, HyperValue]:
    """``--hp NAME=VALUE``: a declared hyperparameter read and checked as the entry point reads it,
    any other name passed on as a number or text (the entry point reports and ignores it)."""
    values: dict[str, HyperValue] = {}
    for name, text in parse_key_values(items, "--hp").items():
        declaration = HYPERPARAMETERS.get(name)
        if declaration is None:
            values[name] = coerce(text)
            continue
        try:
            parsed = declaration.parse(text)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise LaunchError(f"--hp {name}={text}: {err}") from None
        if declaration.choices is not None and parsed not in declaration.choices:
            raise LaunchError(f"--hp {name}={text}: expected one of {', '.join(declaration.choices)}")
        values[name] = hyperparameter_value(declaration, parsed)
    return values


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="run here in a SageMaker-shaped folder, or on SageMaker",
    )
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="local backend: folder holding <job-name>/ folders"
    )
    aws = parser.add_argument_group("SageMaker backend")
    aws.add_argument("--role", help="execution role ARN (default $SAGEMAKER_ROLE)")
    aws.add_argument("--bucket", help="S3 bucket for code, outputs, checkpoints (default $CARVANA_BUCKET)")
    aws.add_argument("--prefix", default="carvana-unet", help="key prefix inside the bucket")
    aws.add_argument("--region", help="AWS region (default: the AWS configuration)")
    aws.add_argument(
        "--profiler-interval-ms",
        type=int,
        default=500,
        choices=(100, 200, 500, 1000, 5000, 60000),
        help="system monitoring interval (CPU, GPU, memory, I/O)",
    )
    aws.add_argument(
        "--profiler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SageMaker Profiler system monitoring (off: disable_profiler=True, no rules)",
    )
    aws.add_argument(
        "--profiler-rules",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ProfilerReport and the system-metric profiler rules (processing jobs AWS runs "
        "beside the training job)",
    )
    aws.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the job or endpoint (streaming training logs)",
    )


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (local folders, or s3:// prefixes for SageMaker)")
    data.add_argument("--data", help="carvana convert's output, holding train/ and validation/")
    data.add_argument("--train", help="training channel (default DATA/train)")
    data.add_argument("--validation", help="validation channel (default DATA/validation)")
    hps = parser.add_argument_group("hyperparameters (default: the entry point's)")
    hps.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="cpu",
        help="a named set of hyperparameters the flags below override: "
        + "; ".join(f"{name} = {recipe.summary}" for name, recipe in RECIPES.items()),
    )
    for d in LAUNCHER_HYPERPARAMETERS:
        hps.add_argument(
            f"--{d.flag}",
            dest=d.name,
            type=d.parse,
            choices=d.choices,
            metavar=d.metavar,
            help=f"{d.help}; carvana train's default {d.text(d.default)}",
        )
    hps.add_argument(
        "--hp",
        action="append",
        metavar="NAME=VALUE",
        help="any other flag of carvana train, e.g. --hp depth=3 --hp max-minutes=50",
    )
    job = parser.add_argument_group("job")
    job.add_argument("--job-name", help="default: carvana-unet-<timestamp> (carvana-tune-... for tune)")
    job.add_argument("--instance-type", default=DEFAULT_TRAINING_INSTANCE)
    job.add_argument("--instance-count", type=int, default=1)
    job.add_argument("--volume-size", type=int, default=30, help="GB of EBS per instance")
    job.add_argument("--max-run", type=int, default=3 * 3600, help="seconds before SageMaker stops the job")
    job.add_argument("--spot", action="store_true", help="managed spot training (up to ~70%% cheaper)")
    job.add_argument("--max-wait", type=int, help="spot: seconds of run plus waiting (default 2 x max-run)")
    job.add_argument("--checkpoint-uri", help="checkpoint location resumed from (s3:// or a local folder)")
    job.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tags on the job (repeatable)")


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one of fit, tune, deploy."""
    parser = argparse.ArgumentParser(
        prog=f"carvana {command}", description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter
    )
    _add_backend_options(parser)
    if command in ("fit", "tune"):
        _add_job_options(parser)
    if command == "tune":
        tune = parser.add_argument_group("tuning (objective: val_dice, maximised)")
        tune.add_argument(
            "--max-jobs",
            type=int,
            default=8,
            help="trials in all (a resumed study counts the ones already finished)",
        )
        tune.add_argument(
            "--max-parallel-jobs", type=int, default=2, help="SageMaker only; local runs one trial at a time"
        )
        default_ranges = " ".join(_describe_range(r) for r in SEARCH_SPACE)
        tune.add_argument(
            "--range",
            action="append",
            metavar="NAME=LOW:HIGH|A,B,C",
            help=f"replace or add a range; default {default_ranges}. A hyperparameter "
            "set with a flag above is fixed and not tuned",
        )
        tune.add_argument(
            "--early-stopping",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="stop trials worse than the median (SageMaker Auto, Optuna median pruner)",
        )
        tune.add_argument("--seed", type=int, default=0, help="search seed")
    if command == "deploy":
        model = parser.add_argument_group("model (one of)")
        model.add_argument("--model", help="model.tar.gz (s3:// on SageMaker) or, locally, a model folder")
        model.add_argument("--job-name", help="a completed training job whose model.tar.gz to deploy")
        ep = parser.add_argument_group("endpoint")
        ep.add_argument("--endpoint-name", help="default carvana-unet-<timestamp>")
        ep.add_argument(
            "--instance-type",
            default=DEFAULT_ENDPOINT_INSTANCE,
            help="real-time endpoint instance (ml.g4dn.xlarge for a GPU)",
        )
        ep.add_argument("--instance-count", type=int, default=1)
        ep.add_argument(
            "--serverless", action="store_true", help="serverless endpoint (CPU, pay per request)"
        )
        ep.add_argument("--memory-mb", type=int, default=4096, help="serverless memory: 1024..6144")
        ep.add_argument("--max-concurrency", type=int, default=5, help="serverless concurrent invocations")
        ep.add_argument(
            "--env",
            action="append",
            metavar="KEY=VALUE",
            help="container environment, e.g. SAGEMAKER_TFS_ENABLE_BATCHING=true",
        )
        ep.add_argument("--tag", action="append", metavar="KEY=VALUE")
        ep.add_argument("--delete", metavar="ENDPOINT", help="delete this endpoint, its config and model")
        ep.add_argument("--port", type=int, default=DEFAULT_PORT, help="local endpoint port")
        ep.add_argument(
            "--print-only",
            action="store_true",
            help="local: print the carvana serve command instead of running it",
        )
    if command == "transform":
        _add_transform_options(parser)
    return parser


def _add_transform_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (one of)")
    model.add_argument("--model", help="model.tar.gz (s3:// on SageMaker) or, locally, a model folder")
    model.add_argument("--training-job", help="a completed training job whose model.tar.gz to use")
    data = parser.add_argument_group("records: every object under --input is one photo")
    data.add_argument("--input", required=True, help="s3:// prefix (SageMaker) or folder (local) of photos")
    data.add_argument(
        "--output", required=True, help="s3:// prefix or folder for <input object>.out, one per photo"
    )
    data.add_argument(
        "--accept",
        default=MEDIA_MASK_PNG,
        help="the answers' media type, passed to the container as Accept (any the handler offers: "
        "image/png, application/json, 'image/png; variant=cutout', ...)",
    )
    data.add_argument(
        "--content-type",
        default=TransformSpec.content_type,
        help="the records' Content-Type (the bytes decide JPEG or PNG)",
    )
    job = parser.add_argument_group("job")
    job.add_argument("--job-name", help="default carvana-transform-<timestamp>")
    job.add_argument("--instance-type", default=TransformSpec.instance_type)
    job.add_argument("--instance-count", type=int, default=1, help="instances sharing the objects")
    job.add_argument(
        "--max-concurrent-transforms",
        type=int,
        default=TransformSpec.max_concurrent_transforms,
        help="requests in flight per instance (the local backend: in all)",
    )
    job.add_argument(
        "--max-payload",
        type=int,
        default=TransformSpec.max_payload_mb,
        help="MB: a larger photo fails its record (the handler's own byte limit is the same 6 MB)",
    )
    job.add_argument(
        "--invocation-timeout",
        type=int,
        default=TransformSpec.invocation_timeout_s,
        help="seconds per request",
    )
    job.add_argument(
        "--max-retries",
        type=int,
        default=TransformSpec.invocation_retries,
        help="retries of a failed request (5xx or no answer)",
    )
    job.add_argument("--env", action="append", metavar="KEY=VALUE", help="container environment")
    job.add_argument("--tag", action="append", metavar="KEY=VALUE")


def _describe_range(space: Range) -> str:
    if isinstance(space, Categorical):
        return f"{space.name}={','.join(map(str, space.values))}"
    return f"{space.name}={space.low}:{space.high}"


def job_spec_from_args(args: argparse.Namespace, default_name: str) -> JobSpec:
    """The backend-neutral job described by the flags."""
    train = args.train or (f"{args.data.rstrip('/')}/train" if args.data else None)
    validation = args.validation or (f"{args.data.rstrip('/')}/validation" if args.data else None)
    if not train or not validation:
        raise LaunchError(
            "--data (holding train/ and validation/) or both --train and --validation are required"
        )
    return JobSpec(
        job_name=args.job_name or default_name,
        channels={"train": train, "validation": validation},
        hyperparameters={**RECIPES[args.recipe].hyperparameters(), **explicit_hyperparameters(args)},
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size,
        max_run_s=args.max_run,
        spot=args.spot,
        max_wait_s=args.max_wait,
        checkpoint_uri=args.checkpoint_uri,
        tags=parse_key_values(args.tag, "--tag"),
    )


def explicit_hyperparameters(args: argparse.Namespace) -> dict[str, HyperValue]:
    """The hyperparameters given by a launcher flag or ``--hp`` (a recipe's are not among them)."""
    hyperparameters: dict[str, HyperValue] = {
        d.flag: hyperparameter_value(d, getattr(args, d.name))
        for d in LAUNCHER_HYPERPARAMETERS
        if getattr(args, d.name) is not None
    }
    hyperparameters.update(hp_values(args.hp))
    return hyperparameters


def tuning_spec_from_args(args: argparse.Namespace) -> TuningSpec:
    """The search: default ranges, replaced or extended by --range, minus hyperparameters fixed by flags.

    A recipe's values are the trials' defaults, not fixed: a tuned one is replaced in each trial
    (SageMaker's tuner drops a static hyperparameter that has a range; the local tuner overrides it).
    """
    job = job_spec_from_args(args, unique_name("carvana-tune", MAX_TUNING_JOB_NAME))
    ranges = {r.name: r for r in SEARCH_SPACE}
    for text in args.range or []:
        space = parse_range(text)
        ranges[space.name] = space
    for fixed in explicit_hyperparameters(args):
        ranges.pop(fixed, None)
    return TuningSpec(
        job=job,
        ranges=tuple(ranges.values()),
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        early_stopping=args.early_stopping,
        seed=args.seed,
    )


def _settings(args: argparse.Namespace):  # -> SageMakerSettings, imported only for that backend
    if args.backend != "sagemaker":
        return None
    from trainer.launch.sagemaker_backend import SageMakerSettings

    return SageMakerSettings.from_args(args)


def _print_metrics(heading: str, metrics: Mapping[str, float]) -> None:
    """``  heading: name=value ...``, leaving out the epoch counter (it is not a score); nothing if empty.

    Shared by fit and tune so a job's metrics read the same in both reports.
    """
    shown = {k: v for k, v in metrics.items() if k != "epoch"}
    if shown:
        print(f"  {heading}: " + " ".join(f"{k}={v:.4f}" for k, v in shown.items()))


def _print_locations(locations: Iterable[tuple[str, object]]) -> None:
    """``  label: location`` for each output that exists (a failed job or tuner leaves some unset)."""
    for label, value in locations:
        if value:
            print(f"  {label}: {value}")


def _print_job(result: JobResult) -> None:
    print(f"job {result.job_name}: {result.status}")
    _print_metrics("final metrics", result.final_metrics)
    _print_locations((("model", result.model_artifact), ("output", result.output_artifact)))


def run_fit(args: argparse.Namespace, backend: Backend) -> int:
    result = backend.fit(job_spec_from_args(args, unique_name("carvana-unet")))
    _print_job(result)
    if result.status == "Failed":
        raise JobFailedError(result.failure_reason)
    return 0


def run_tune(args: argparse.Namespace, backend: Backend) -> int:
    spec = tuning_spec_from_args(args)
    result = backend.tune(spec)
    print(f"tuning job {result.tuning_job_name}: {result.status}")
    if result.best_job_name:
        tuned = " ".join(f"{k}={v}" for k, v in result.best_hyperparameters.items())
        print(f"  best job {result.best_job_name}: val_dice={result.best_objective:.4f} ({tuned})")
        _print_metrics("its final metrics", result.best_metrics)
    _print_locations((("results", result.results_csv), ("plot", result.plot_png)))
    return 0 if result.status != "Failed" else 1


def run_deploy(args: argparse.Namespace, backend: Backend) -> int:
    if args.delete:
        backend.delete_endpoint(args.delete)
        print(f"deleted endpoint {args.delete}")
        return 0
    if bool(args.model) == bool(args.job_name):
        raise LaunchError("give exactly one of --model and --job-name")
    model_data = _model_data(backend, args.model, args.job_name)
    spec = DeploySpec(
        endpoint_name=args.endpoint_name or unique_name("carvana-unet"),
        model_data=model_data,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        serverless=args.serverless,
        memory_mb=args.memory_mb,
        max_concurrency=args.max_concurrency,
        environment=parse_key_values(args.env, "--env"),
        tags=parse_key_values(args.tag, "--tag"),
    )
    if args.backend == "local":
        return _deploy_locally(spec, args, backend)
    result = backend.deploy(spec)
    print(
        f"endpoint {result.endpoint_name} ({'serverless' if spec.serverless else spec.instance_type})\n"
        f"  model {result.model_name}: {result.model_data}\n  image: {result.image_uri}\n"
        f"  delete it when done: carvana deploy --backend sagemaker --delete {result.endpoint_name}"
    )
    return 0


def run_transform(args: argparse.Namespace, backend: Backend) -> int:
    if bool(args.model) == bool(args.training_job):
        raise LaunchError("give exactly one of --model and --training-job")
    model_data = _model_data(backend, args.model, args.training_job)
    spec = TransformSpec(
        job_name=args.job_name or unique_name("carvana-transform"),
        model_data=model_data,
        input=args.input,
        output=args.output,
        accept=args.accept,
        content_type=args.content_type,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        max_concurrent_transforms=args.max_concurrent_transforms,
        max_payload_mb=args.max_payload,
        invocation_timeout_s=args.invocation_timeout,
        invocation_retries=args.max_retries,
        environment=parse_key_values(args.env, "--env"),
        tags=parse_key_values(args.tag, "--tag"),
    )
    result = backend.transform(spec)
    _print_transform(result)
    if result.status == "Failed":
        raise JobFailedError(result.failure_reason)
    return 0


# At most this many failed records are listed on the terminal; description.json has them all.
SHOWN_FAILURES = 10


def _print_transform(result: TransformResult) -> None:
    print(f"transform job {result.job_name}: {result.status} -> {result.output}")
    if result.report is not None:  # the local backend's own counts
        print(
            f"  {result.transformed} transformed, {result.skipped} already done (skipped), "
            f"{len(result.failures)} failed, in {result.seconds:.1f} s "
            f"({result.startup_seconds:.1f} s starting the container, "
            f"then {result.photos_per_second:.2f} photos/s)"
        )
        for failure in result.failures[:SHOWN_FAILURES]:
            status = f"{failure.status} " if failure.status is not None else ""
            print(f"  failed {failure.input}: {status}{failure.message}")
        if len(result.failures) > SHOWN_FAILURES:
            print(f"  ... {len(result.failures) - SHOWN_FAILURES} more")
        print(f"  report: {result.report}")


def _model_data(backend: Backend, model: str | None, job_name: str | None) -> str:
    """The model to deploy or transform with: ``model`` itself (its training state printed, for a
    local archive or folder; s3:// is not read), else the job's model.tar.gz."""
    if model:
        _print_model_state(read_metadata(model))
        return model
    assert job_name is not None  # the callers check that exactly one is given
    return _job_model(backend, job_name)


def _job_model(backend: Backend, job_name: str) -> str:
    """The job's model.tar.gz, saying whether it is partial (a job stopped by SIGTERM exports too)."""
    result = backend.describe_job(job_name)
    model = result.deployable_model()
    if result.model_partial:
        print(
            f"note: job {job_name} was {result.status.lower()} before it finished: its model is PARTIAL "
            "(the best epoch's weights when it stopped; see assets.extra/training-metadata.json)"
        )
    return model


def _print_model_state(metadata: Mapping[str, object] | None) -> None:
    if metadata is not None and metadata.get("partial"):
        print(f"note: {describe_metadata(metadata)}")


def _deploy_locally(spec: DeploySpec, args: argparse.Namespace, backend: Backend) -> int:
    """Print the serve command, or run the endpoint in the foreground until Ctrl-C."""
    if args.print_only:
        print(" ".join(serve_command(spec, args.port)))
        return 0
    if not isinstance(backend, LocalBackend):
        raise TypeError("local deploy needs the local backend")
    result = backend.deploy(spec)
    print(
        f"endpoint {result.endpoint_name} serving {result.model_data} at {result.url} "
        f"(POST {result.url}/invocations); Ctrl-C stops it",
        flush=True,
    )
    try:
        backend.wait_endpoint(spec.endpoint_name)
    finally:
        backend.delete_endpoint(spec.endpoint_name)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``argv[0]`` is the command (fit, tune or deploy), the rest its flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: carvana {{{','.join(COMMANDS)}}} --backend local|sagemaker ...", file=sys.stderr)
        return 2
    command = argv[0]

    def body(args: argparse.Namespace) -> int:
        backend = make_backend(
            args.backend, work=args.work, settings=_settings(args), port=getattr(args, "port", DEFAULT_PORT)
        )
        commands = {"fit": run_fit, "tune": run_tune, "deploy": run_deploy, "transform": run_transform}
        return commands[command](args, backend)

    return run_command(build_parser(command), body, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
