"""Load benchmark: N clients, real photos mixed with bad ones, a bounded number of requests.

What it does (127.0.0.1 only; it stops by itself after ``--requests``):

* starts ``carvana serve`` (a subprocess) on ``--model`` (default: an untrained U-Net of the default
  architecture, which costs what a trained one costs per call), with any ``--serve-arg``;
* ``--clients`` threads (default 8) send ``--requests`` requests in all (default 2000) to
  ``POST /invocations``: real photos from ``../shared/carvana/train`` (the synthetic sample maker when
  absent), and every ``--bad-every``-th request a bad one, in turn: a truncated JPEG (400, the
  graph's decoder), a PNG bomb header claiming 90000x90000 pixels (413, from its header), an empty
  body (400) and a photo sent as ``text/plain`` (415);
* a **wrong answer** is a good photo not answered 200 with a PNG mask of the photo's own size, or a
  bad one not answered its expected status with a JSON ``{"error": ...}``; 503 (the admission
  gate's "full, retry") is counted apart;
* prints requests/s, p50/p99 latency of good and bad requests, the wrong answers, the 503 count,
  and the gunicorn worker's RSS (``VmRSS`` in ``/proc/<pid>/status``) after a warm-up, at the end,
  and its peak (``VmHWM``).

``--largest`` sends, instead of the real photos, one of them scaled up to the largest photo the
pixel limit allows (``CARVANA_MAX_PIXELS``, trainer.wire.MAX_PIXELS): with ``--serve-arg
--max-inflight=8`` (no gate, as the real container, whose gevent workers take every request) the
peak RSS over the warm-up RSS is what 8 concurrent largest photos cost.

Usage: ``python bench/load.py [--model DIR|model.tar.gz] [--clients 8] [--requests 2000]
[--bad-every 5] [--largest] [--serve-arg=--max-inflight=8 ...]``
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image
from serve import DEFAULT_DATA, default_model, pct

from local_aws.endpoint.process import free_port, start_endpoint, stop_endpoint
from trainer.wire import MAX_PIXELS, WireError, photo_header


@dataclass(frozen=True)
class Case:
    """One kind of request: its body, Content-Type, and the answer it must get."""

    name: str
    body: bytes
    content_type: str
    status: int
    size: tuple[int, int] | None = None  # (width, height) of the mask a good photo must get


def real_photos(count: int, tmp: Path) -> list[bytes]:
    photos = sorted((DEFAULT_DATA / "train").glob("*.jpg"))
    if not photos:
        from trainer.data.sample import make_sample

        print(f"{DEFAULT_DATA} not found: synthetic 1918x1280 photos", flush=True)
        sample = make_sample(tmp / "sample", cars=1, height=1280, width=1918, seed=0, workers=1)
        photos = sorted((sample / "train").glob("*.jpg"))
    return [path.read_bytes() for path in photos[:: max(len(photos) // count, 1)][:count]]


def largest(photo: bytes, max_pixels: int) -> bytes:
    """``photo`` scaled up to the most pixels the limit allows (same aspect), as a JPEG."""
    with Image.open(io.BytesIO(photo)) as image:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        size = (int(image.width * scale), int(image.height * scale))
        out = io.BytesIO()
        image.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def cases(photos: list[bytes]) -> tuple[list[Case], list[Case]]:
    good = []
    for index, photo in enumerate(photos):
        header = photo_header(photo)
        good.append(Case(f"photo{index}", photo, "image/jpeg", 200, header.display_size))
    bad = [
        Case("truncated-jpeg", photos[0][: len(photos[0]) // 2], "image/jpeg", 400),
        Case("png-bomb", png_bomb(90000, 90000), "image/png", 413),
        Case("empty", b"", "image/jpeg", 400),
        Case("wrong-content-type", photos[0], "text/plain", 415),
    ]
    return good, bad


def wrong(case: Case, response: requests.Response) -> str | None:
    """Why the answer is wrong for the case, or None when it is right."""
    if response.status_code != case.status:
        return f"{case.name}: {response.status_code} (expected {case.status}): {response.text[:200]}"
    if case.status != 200:
        try:
            assert isinstance(response.json()["error"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return f"{case.name}: {case.status} without a JSON error: {response.text[:200]}"
        return None
    try:
        header = photo_header(response.content)
        with Image.open(io.BytesIO(response.content)) as mask:
            mask.load()
            mode = mask.mode
    except (WireError, OSError) as err:
        return f"{case.name}: 200 but not a PNG: {err}"
    if case.size is None:
        return f"{case.name}: a good case without the mask size it must get"
    if (header.media_type, (header.width, header.height), mode) != ("image/png", case.size, "1"):
        got = f"{header.media_type} {header.width}x{header.height} {mode}"
        return f"{case.name}: mask {got}, expected image/png {case.size[0]}x{case.size[1]} 1-bit"
    return None


def worker_pids(master: int) -> list[int]:
    """gunicorn's workers: the processes whose parent is the server's master process."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def memory_mb(pids: list[int], field: str = "VmRSS") -> float:
    """Sum of ``field`` (VmRSS now, VmHWM peak) over ``pids``, in MB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])  # kB
    return total / 1024


def run(url: str, good: list[Case], bad: list[Case], total: int, clients: int, bad_every: int) -> dict:
    """Send ``total`` requests from ``clients`` threads; latencies, wrong answers, 503s."""
    counter = itertools.count()
    good_cycle, bad_cycle = itertools.cycle(good), itertools.cycle(bad)
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {"good": [], "bad": []}
    wrongs: list[str] = []
    statuses: Counter[int] = Counter()

    def client() -> None:
        with requests.Session() as session:
            while (index := next(counter)) < total:
                with lock:
                    case = next(bad_cycle) if index % bad_every == bad_every - 1 else next(good_cycle)
                started = time.perf_counter()
                try:
                    headers = {"Content-Type": case.content_type, "Accept": "image/png"}
                    response = session.post(
                        f"{url}/invocations", data=case.body, timeout=300, headers=headers
                    )
                except requests.RequestException as err:
                    with lock:
                        wrongs.append(f"{case.name}: {err!r}")
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                problem = None if response.status_code == 503 else wrong(case, response)
                with lock:
                    statuses[response.status_code] += 1
                    latencies["good" if case.status == 200 else "bad"].append(elapsed)
                    if problem:
                        wrongs.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "latencies": latencies, "wrong": wrongs, "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="SavedModel folder, model_dir or model.tar.gz (default: an untrained default U-Net)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all (default 2000)")
    parser.add_argument("--bad-every", type=int, default=5, help="every n-th request is bad (default 5)")
    parser.add_argument("--photos", type=int, default=16, help="distinct real photos (default 16)")
    parser.add_argument(
        "--largest",
        action="store_true",
        help=f"send photos scaled to the pixel limit ({MAX_PIXELS}, or CARVANA_MAX_PIXELS)",
    )
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra carvana serve argument, e.g. --serve-arg=--max-inflight=8",
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.bad_every, args.photos) < 1:
        parser.error("--clients, --requests, --bad-every and --photos must be >= 1")

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        photos = real_photos(args.photos, tmp)
        if args.largest:
            limit = int(os.environ.get("CARVANA_MAX_PIXELS", MAX_PIXELS))
            photos = [largest(photo, limit) for photo in photos[:2]]
        good, bad = cases(photos)
        model = args.model or default_model(tmp)
        port = free_port()
        log_path = tmp / "serve.log"
        process = start_endpoint(model, *args.serve_arg, port=port, log_path=log_path, timeout_s=300)
        url = f"http://127.0.0.1:{port}"
        try:
            pids = worker_pids(process.pid)
            loaded = memory_mb(pids)
            warm = run(url, good, bad, 2 * args.clients, args.clients, args.bad_every)  # loads every path
            before = memory_mb(pids)
            result = run(url, good, bad, args.requests, args.clients, args.bad_every)
            after, peak = memory_mb(pids), memory_mb(pids, "VmHWM")
        finally:
            stop_endpoint(process)

    size = good[0].size
    assert size is not None  # good cases always carry the mask size they must get
    lat = result["latencies"]
    kilobytes = sum(len(case.body) for case in good) / len(good) / 1e3
    print(
        f"\n{args.requests} requests, {args.clients} clients, every {args.bad_every}th bad; "
        f"{len(good)} photo(s) {size[0]}x{size[1]} ({kilobytes:.0f} KB); "
        f"model {args.model or 'untrained default U-Net'}; serve args {args.serve_arg or 'defaults'}; "
        f"{os.cpu_count()} CPUs (shared)"
    )
    print(f"throughput {args.requests / result['seconds']:.2f} requests/s over {result['seconds']:.1f} s")
    for kind in ("good", "bad"):
        if lat[kind]:
            p50, p99 = pct(lat[kind], 50), pct(lat[kind], 99)
            print(f"{kind}: n={len(lat[kind])} p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(
        f"statuses {dict(sorted(result['statuses'].items()))}; 503s {result['statuses'][503]}; "
        f"wrong answers {len(result['wrong'])} (warm-up: {len(warm['wrong'])})"
    )
    for problem in (warm["wrong"] + result["wrong"])[:10]:
        print("  wrong:", problem)
    print(
        f"worker RSS (pids {pids}): {loaded:.0f} MB with the model loaded, {before:.0f} MB after "
        f"warm-up, {after:.0f} MB at the end; peak {peak:.0f} MB"
    )
    return 1 if result["wrong"] or warm["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
