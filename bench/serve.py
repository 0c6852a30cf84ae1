"""Endpoint latency and throughput next to the model's own forward time, in one run.

What is timed (all on this machine, one after the other, 127.0.0.1 only, bounded request counts):

* network forward: the U-Net alone at its input size (the SavedModel's ``predict_images`` signature
  on one float image already at ``--size``, in-process): the floor no endpoint can go under.
* model forward: the SavedModel's ``mask_png`` signature called in-process on the photo's JPEG bytes
  (decode, resize, U-Net, resize back, PNG encode: everything the graph does).
* endpoint: ``POST /invocations`` with the same JPEG (``Content-Type: image/jpeg``, ``Accept:
  image/png``) to ``carvana serve`` (a subprocess): input_handler, HTTP to the TF Serving side, JSON
  and base64 both ways, output_handler. The p50 gap to the model forward is what the serving layer
  costs; the endpoint's p50 over the network's p50 is the figure the issue bounds (<= 2x).
  The three are timed call by call in turn, so load from anything else on the machine weighs on all
  alike; the ratios of one run are what to compare, not absolute milliseconds of a loaded machine.
* throughput: ``--clients`` concurrent clients sending back-to-back requests, with the server's
  batching off, then on (``SAGEMAKER_TFS_ENABLE_BATCHING=true``, max batch size = clients). The
  batch sizes the server actually ran are read from its log.

The photo is the first of ``../shared/carvana/train`` (1918x1280 JPEG) unless ``--photo`` is given;
without the real data a synthetic 1918x1280 sample photo is drawn. The model is ``--model`` (folder
or model.tar.gz, exported at ``--size``); by default an untrained U-Net of the default recipe (depth
4, 16 filters, 192x288 input) is exported, which costs the same time per call as a trained one.

Usage: ``python bench/serve.py [--model DIR|model.tar.gz --size HxW] [--photo car.jpg] [--requests 30]
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

from local_aws.endpoint.process import free_port, running_endpoint
from trainer.saved_model_io import IMAGES_SIGNATURE, saved_model_dir
from trainer.training.config import ModelConfig, format_size, parse_size
from trainer.wire import SIGNATURE

DEFAULT_SIZE = ModelConfig().image_size  # the default recipe's input size

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


def default_model(tmp: Path, size: tuple[int, int]) -> Path:
    """An untrained U-Net of the default architecture, exported as training would export it."""
    from trainer.export import export_saved_model
    from trainer.model.unet import build_unet

    return export_saved_model(build_unet(), tmp / "model", size).parent.parent


class ModelForward:
    """The SavedModel in this process: ``mask_png`` on the photo's bytes, or the network alone."""

    def __init__(self, folder: Path, size: tuple[int, int]) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(folder))
        self._signature = self._loaded.signatures[SIGNATURE]
        self._network = self._loaded.signatures[IMAGES_SIGNATURE]
        self._model_sized = tf.random.uniform([1, *size, 3], seed=0)

    @staticmethod
    def _timed(call: Callable[[], dict[str, Any]]) -> float:
        """Milliseconds for one call, outputs fetched to NumPy as the server fetches them."""
        start = time.perf_counter()
        _ = {name: tensor.numpy() for name, tensor in call().items()}
        return (time.perf_counter() - start) * 1000

    def __call__(self, photo: bytes) -> float:
        """``mask_png`` on the photo: everything the graph does for one request."""
        tf = self._tf
        return self._timed(
            lambda: self._signature(image_bytes=tf.constant([photo]), orientation=tf.constant([1]))
        )

    def network(self) -> float:
        """The U-Net on one image already at its input size (``predict_images``: nothing to resize)."""
        return self._timed(lambda: self._network(images=self._model_sized))


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


def paired_latency_ms(url: str, forward: ModelForward, photo: bytes, count: int) -> dict[str, list[float]]:
    """Network, model-forward and endpoint milliseconds, in turn call by call so that load from
    anything else on the machine weighs on all alike (after three warm-up calls of each)."""
    timings: dict[str, list[float]] = {"network": [], "model": [], "endpoint": []}
    with requests.Session() as session:
        for index in range(count + 3):
            sample = {
                "network": forward.network(),
                "model": forward(photo),
                "endpoint": call(session, url, photo),
            }
            if index >= 3:
                for name, ms in sample.items():
                    timings[name].append(ms)
    return timings


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
    parser.add_argument(
        "--size",
        type=parse_size,
        default=format_size(DEFAULT_SIZE),
        help="the model's input size HxW (default %(default)s: the default recipe's)",
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
        model = args.model or default_model(tmp, args.size)
        print(
            f"photo: {source} ({len(photo) / 1e3:.0f} KB JPEG); "
            f"model: {args.model or 'untrained default U-Net'} at {format_size(args.size)}; "
            f"{os.cpu_count()} CPUs, no GPU used",
            flush=True,
        )

        with saved_model_dir(model) as folder:
            forward_fn = ModelForward(folder, args.size)
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
                        timings = paired_latency_ms(url, forward_fn, photo, args.requests)
                    rate, latencies = throughput(url, photo, args.throughput_requests, args.clients)
                runs[batching] = (rate, latencies, batch_sizes(log))

    network, single = timings["network"], timings["endpoint"]
    rows = (
        (f"network forward ({IMAGES_SIGNATURE} at {format_size(args.size)}, in-process)", network),
        (f"model forward ({SIGNATURE} signature on the JPEG, in-process)", timings["model"]),
        ("endpoint POST /invocations (one client)", single),
    )
    print()
    print("| one photo -> PNG mask | p50 ms | p95 ms | n | p50 / network p50 |")
    print("|---|---:|---:|---:|---:|")
    for label, values in rows:
        print(
            f"| {label} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {len(values)} "
            f"| {pct(values, 50) / pct(network, 50):.2f}x |"
        )
    overhead = pct(single, 50) - pct(timings["model"], 50)
    print(f"| serving overhead (endpoint - model forward, p50) | {overhead:.1f} | | | |")
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
