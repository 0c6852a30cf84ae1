"""Bulk throughput: photos per second through the local Batch Transform, and what a day costs.

A folder of real 1918x1280 Carvana photos (``../shared/carvana/train``, the first ``--photos``; a
synthetic 1918x1280 sample without it) goes through ``local_aws.batch_transform.run_transform``
exactly as ``carvana transform --backend local`` runs it: ``carvana serve`` on the model.tar.gz
with a transform job's container environment, one ``POST /invocations`` per photo, ``<photo>.out``
written per answer. Each ``--concurrency`` value (MaxConcurrentTransforms) is one job on a fresh
output folder; photos/s counts from the container's first ``/ping`` 200 to the last answer, so the
container's start (paid once per job, on AWS too) is reported apart.

The cost line scales this machine's best rate by ``--instance-vcpus / os.cpu_count()`` (the graph
and the network use every core; an assumption, not a measurement of the instance) and prices
``--photos-per-day`` at ``--price-per-hour`` (default: ml.c5.xlarge, us-east-1 on-demand, an
assumption stated in the README) plus ``--startup-minutes`` of instance time per daily job.

Usage: ``python bench/transform.py [--model model.tar.gz] [--photos 64] [--concurrency 1 2 4]
[--accept image/png]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from local_aws.batch_transform import run_transform
from trainer.launch.specs import DEFAULT_TRANSFORM_INSTANCE, TransformResult, TransformSpec
from trainer.wire import MEDIA_MASK_PNG

DEFAULT_DATA = Path(
    os.environ.get("CARVANA_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "carvana")
)
# ml.c5.xlarge: 4 vCPUs; its on-demand price for Batch Transform in us-east-1 as the README states it.
INSTANCE_VCPUS, PRICE_PER_HOUR = 4, 0.204


def photo_folder(tmp: Path, count: int) -> tuple[Path, str]:
    """A folder of ``count`` photos (links to the real ones when present) and where they came from."""
    folder = tmp / "photos"
    folder.mkdir()
    real = sorted((DEFAULT_DATA / "train").glob("*.jpg"))[:count]
    if real:
        for photo in real:
            (folder / photo.name).symlink_to(photo.resolve())
        return folder, f"{len(real)} real Carvana photos from {DEFAULT_DATA / 'train'}"
    from trainer.data.sample import make_sample

    sample = make_sample(
        tmp / "sample", cars=math.ceil(count / 16), height=1280, width=1918, seed=0, workers=1
    )
    for photo in sorted((sample / "train").glob("*.jpg"))[:count]:
        (folder / photo.name).symlink_to(photo.resolve())
    return folder, f"{count} synthetic 1918x1280 photos ({DEFAULT_DATA} not found)"


def default_model(tmp: Path) -> Path:
    """model.tar.gz of an untrained U-Net of the default recipe (as costly per photo as a trained one)."""
    from serving.package import package
    from trainer.export import export_saved_model
    from trainer.model.unet import build_unet
    from trainer.training.config import ModelConfig

    model_dir = tmp / "model"
    export_saved_model(build_unet(), model_dir, ModelConfig().image_size)
    package(model_dir, tmp / "model.tar.gz")
    return tmp / "model.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/transform.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model.tar.gz (default: an untrained default U-Net)")
    parser.add_argument("--photos", type=int, default=64, help="photos per job (default 64)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 2, 4], help="MaxConcurrentTransforms"
    )
    parser.add_argument(
        "--accept", default=MEDIA_MASK_PNG, help="the answers' media type (default image/png)"
    )
    parser.add_argument("--photos-per-day", type=int, default=70_000)
    parser.add_argument("--instance-vcpus", type=int, default=INSTANCE_VCPUS)
    parser.add_argument("--price-per-hour", type=float, default=PRICE_PER_HOUR)
    parser.add_argument(
        "--startup-minutes", type=float, default=10.0, help="instance time per job before work"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-transform-") as tmp_name:
        tmp = Path(tmp_name)
        folder, source = photo_folder(tmp, args.photos)
        model = args.model or default_model(tmp)
        print(f"{source}; model {args.model or 'untrained default U-Net'}; {os.cpu_count()} CPUs", flush=True)
        results: dict[int, TransformResult] = {}
        for concurrency in args.concurrency:
            spec = TransformSpec(
                job_name=f"bench-transform-{concurrency}",
                model_data=str(model),
                input=str(folder),
                output=str(tmp / f"out-{concurrency}"),
                accept=args.accept,
                max_concurrent_transforms=concurrency,
            )
            results[concurrency] = result = run_transform(spec, tmp / "jobs")
            if result.status != "Completed":
                raise SystemExit(f"job {spec.job_name} {result.status}: {result.failure_reason}")

    print()
    print(f"| MaxConcurrentTransforms | photos | container start s | photos/s ({os.cpu_count()} CPUs) |")
    print("|---:|---:|---:|---:|")
    for concurrency, result in results.items():
        print(
            f"| {concurrency} | {result.transformed} | {result.startup_seconds:.1f} "
            f"| {result.photos_per_second:.2f} |"
        )
    best = max(results, key=lambda c: results[c].photos_per_second)
    rate = results[best].photos_per_second * args.instance_vcpus / (os.cpu_count() or 1)
    hours = args.photos_per_day / rate / 3600 + args.startup_minutes / 60
    print()
    print(
        f"{args.photos_per_day} photos/day on one {DEFAULT_TRANSFORM_INSTANCE} ({args.instance_vcpus} vCPUs, "
        f"assumed {rate:.1f} photos/s = this machine's best x {args.instance_vcpus}/{os.cpu_count()}): "
        f"{hours:.2f} instance-hours incl. {args.startup_minutes:.0f} min start = "
        f"${hours * args.price_per_hour:.2f}/day at ${args.price_per_hour}/h, "
        f"${hours * args.price_per_hour * 30:.0f}/month"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
