"""Endpoint latency and throughput next to the model's own forward time, in one run.

What is timed (all on this machine, one after the other, 127.0.0.1 only, bounded request counts):

* model forward: the SavedModel's ``mask_png`` signature called in-process on the photo's JPEG bytes
  (decode, resize, U-Net, resize back, PNG encode: everything the graph does), alternating call by
  call with the endpoint request below, so both see the same machine load.
* endpoint: ``POST /invocations`` with the same JPEG (``Content-Type: image/jpeg``, ``Accept:
  image/png``) to ``carvana serve`` (a subprocess): input_handler, HTTP to the TF Serving side, JSON
  and base64 both ways, output_handler. The p50 gap between the two is what the serving layer costs.
* throughput: ``--clients`` concurrent clients sending back-to-back requests, with the server's
  batching off, then on (``SAGEMAKER_TFS_ENABLE_BATCHING=true``, max batch size = clients). The
  batch sizes the server actually ran are read from its log.

The photo is the first of ``../shared/carvana/train`` (1918x1280 JPEG) unless ``--photo`` is given;
without the real data a synthetic 1918x1280 sample photo is drawn. The model is ``--model`` (folder
or model.tar.gz); by default an untrained U-Net of the default architecture (depth 4, 16 filters,
256x384 input) is exported, which costs the same time per call as a trained one.

Usage: ``python bench/serve.py [--model DIR|model.tar.gz] [--photo car.jpg] [--requests 30]
[--throughput-requests 40] [--clients 4] [--batch-timeout-micros 5000]``
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from local_aws.endpoint.process import free_port, running_endpoint
from trainer.saved_model_io import saved_model_dir
from trainer.wire import SIGNATURE

DEFAULT_DATA = Path(
    os.environ.get("CARVANA_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "carvana")
)


def pick_photo(path: Path | None, tmp: Path) -> tuple[bytes, str]:
    """The photo's bytes and where it came from."""
    if path is not None:
        return path.read_bytes(), str(path)
    real = sorted((DEFAULT_DATA / "train").glob("*.jpg"))
    if real:
        return real[0].read_bytes(), str(real[0])
    from trainer.data.sample import make_sample

    sample = make_sample(tmp / "sample", cars=1, height=1280, width=1918, seed=0, workers=1)
    first = sorted((sample / "train").glob("*.jpg"))[0]
    return first.read_bytes(), f"{first.name} (synthetic, {DEFAULT_DATA} not found)"


def default_model(tmp: Path) -> Path:
    """An untrained U-Net of the default architecture, exported as training would export it."""
    from trainer.export import export_saved_model
    from trainer.model.unet import build_unet

    return export_saved_model(build_unet(), tmp / "model", (256, 384)).parent.parent


class ModelForward:
    """The SavedModel's ``mask_png`` signature in this process, timed per call."""

    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(folder))
        self._signature = self._loaded.signatures[SIGNATURE]

    def __call__(self, photo: bytes) -> float:
        """Milliseconds for one call, outputs fetched to NumPy as the server fetches them."""
        start = time.perf_counter()
        outputs = self._signature(image_bytes=self._tf.constant([photo]), orientation=self._tf.constant([1]))
        _ = {name: tensor.numpy() for name, tensor in outputs.items()}
        return (time.perf_counter() - start) * 1000


def call(session: requests.Session, url: str, photo: bytes) -> float:
    """One JPEG -> PNG mask request; milliseconds."""
    start = time.perf_counter()
    response = session.post(
        f"{url}/invocations",
        data=photo,
        timeout=300,
        headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
    )
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
        raise RuntimeError(f"endpoint answered {response.status_code}: {response.text[:300]}")
    return elapsed


def paired_latency_ms(
    url: str, forward: ModelForward, photo: bytes, count: int
) -> tuple[list[float], list[float]]:
    """Model-forward and endpoint milliseconds, alternating call by call so that load from anything
    else on the machine weighs on both alike (after three warm-up calls of each)."""
    model_ms, endpoint_ms = [], []
    with requests.Session() as session:
        for index in range(count + 3):
            model = forward(photo)
            endpoint = call(session, url, photo)
            if index >= 3:
                model_ms.append(model)
                endpoint_ms.append(endpoint)
    return model_ms, endpoint_ms


def throughput(url: str, photo: bytes, total: int, clients: int) -> tuple[float, list[float]]:
    """Requests per second over ``total`` requests from ``clients`` concurrent clients, and latencies."""
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(count: int) -> list[float]:
        with requests.Session() as session:
            call(session, url, photo)  # opens the connection (inside the timed window, once per client)
            return [call(session, url, photo) for _ in range(count)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [ms for result in pool.map(client, share) for ms in result]
    return total / (time.perf_counter() - start), latencies


def batch_sizes(log: Path) -> str:
    """``size x count`` of the merged batches the server logged (single requests are not logged)."""
    sizes = collections.Counter(int(n) for n in re.findall(r"batch of (\d+) requests", log.read_text()))
    return ", ".join(f"{size}x{count}" for size, count in sorted(sizes.items())) or "none merged"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/serve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="SavedModel folder, model_dir or model.tar.gz "
        "(default: an untrained default U-Net, exported to a temporary folder)",
    )
    parser.add_argument("--photo", type=Path, help="a JPEG (default: the first real Carvana photo)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests for latency (default 30)")
    parser.add_argument("--throughput-requests", type=int, default=40, help="requests per throughput run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument(
        "--batch-timeout-micros",
        type=int,
        default=5000,
        help="batching window for the batched run (default 5000)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        photo, source = pick_photo(args.photo, tmp)
        model = args.model or default_model(tmp)
        print(
            f"photo: {source} ({len(photo) / 1e3:.0f} KB JPEG); "
            f"model: {args.model or 'untrained default U-Net'}; {os.cpu_count()} CPUs, no GPU used",
            flush=True,
        )

        with saved_model_dir(model) as folder:
            forward_fn = ModelForward(folder)
            runs = {}
            for batching in (False, True):
                env = {
                    "SAGEMAKER_TFS_ENABLE_BATCHING": "true" if batching else "false",
                    "SAGEMAKER_TFS_MAX_BATCH_SIZE": str(args.clients),
                    "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": str(args.batch_timeout_micros),
                }
                port = free_port()
                log = tmp / f"serve-{port}.log"
                with running_endpoint(model, port=port, log_path=log, env=env) as url:
                    if not batching:
                        forward, single = paired_latency_ms(url, forward_fn, photo, args.requests)
                    rate, latencies = throughput(url, photo, args.throughput_requests, args.clients)
                runs[batching] = (rate, latencies, batch_sizes(log))

    print()
    print("| one 1918x1280 JPEG -> PNG mask | p50 ms | p95 ms | n |")
    print("|---|---:|---:|---:|")
    print(
        f"| model forward (mask_png signature, in-process) | {pct(forward, 50):.1f} | {pct(forward, 95):.1f} "
        f"| {len(forward)} |"
    )
    print(
        f"| endpoint POST /invocations (one client) | {pct(single, 50):.1f} | {pct(single, 95):.1f} "
        f"| {len(single)} |"
    )
    print(f"| serving overhead (endpoint - model, p50) | {pct(single, 50) - pct(forward, 50):.1f} | | |")
    print()
    print(
        f"| {args.clients} concurrent clients | requests/s | p50 ms | p95 ms | merged batches (size x count) "
        "|"
    )
    print("|---|---:|---:|---:|---|")
    for batching, label in (
        (False, "batching off"),
        (True, f"batching on (max {args.clients}, {args.batch_timeout_micros} us)"),
    ):
        rate, latencies, batches = runs[batching]
        print(f"| {label} | {rate:.2f} | {pct(latencies, 50):.1f} | {pct(latencies, 95):.1f} | {batches} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
