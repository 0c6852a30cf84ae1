"""System monitoring of a local training job: the stand-in for SageMaker Profiler's system metrics.

On SageMaker, ``ProfilerConfig`` makes the platform sample CPU, GPU, memory, I/O and network of
the training instances (every 500 ms by default) into ``s3://.../<job>/profiler-output/system/``,
and the ProfilerReport rule (a processing job of AWS's rule image) turns them into
``rule-output/ProfilerReport/profiler-output/profiler-report.html``. Neither runs here. This module
samples the job's process from ``/proc`` instead (no psutil needed) and writes the same kind of
evidence under the same relative paths of the job folder:

    <work>/<job>/profiler-output/system/system-metrics.jsonl         one sample per line
    <work>/<job>/rule-output/ProfilerReport/profiler-output/profiler-report.json
    <work>/<job>/rule-output/ProfilerReport/profiler-output/profiler-report.png

It is our summary of our samples, not AWS's report: no GPU metrics (none are read locally), no
rule verdicts; the README says what each side does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainer.atomic import atomic_path, write_json
from trainer.training.plots import save_figure

DEFAULT_INTERVAL_MS = 500  # SageMaker's default ProfilingIntervalInMilliseconds
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
REPORT_FOLDER = Path("rule-output") / "ProfilerReport" / "profiler-output"
METRICS_FILE = Path("profiler-output") / "system" / "system-metrics.jsonl"


@dataclass(frozen=True)
class Sample:
    """One reading of the job's process and of the machine."""

    elapsed_s: float
    cpu_percent: float  # of one core, like top: 200 = two cores busy
    rss_mb: float
    system_memory_used_percent: float
    read_mb: float  # cumulative bytes the process read from storage
    write_mb: float


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of /proc/<pid>/stat), in seconds.

    Raises ProcessLookupError once the process has exited (a zombie has no memory to report).
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    if fields[0] in ("Z", "X"):
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB


def _io_mb(pid: int) -> tuple[float, float]:
    try:
        values = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except (OSError, ValueError):  # /proc/<pid>/io can be unreadable in some containers
        return 0.0, 0.0
    return int(values.get("read_bytes", 0)) / 2**20, int(values.get("write_bytes", 0)) / 2**20


def _memory_used_percent() -> float:
    lines = Path("/proc/meminfo").read_text().splitlines()
    info = {line.split(":")[0]: int(line.split()[1]) for line in lines}
    return 100.0 * (1 - info["MemAvailable"] / info["MemTotal"])


class SystemMonitor:
    """Samples one process every ``interval_ms`` in a daemon thread until :meth:`stop`."""

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        self.interval_s = interval_ms / 1000
        self.interval_ms = interval_ms
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), name="system-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, pid: int) -> None:
        start = last_wall = time.monotonic()
        try:
            last_cpu = _cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            return
        while not self._stop.wait(self.interval_s):
            try:
                now, cpu = time.monotonic(), _cpu_seconds(pid)
                read_mb, write_mb = _io_mb(pid)
                sample = Sample(
                    elapsed_s=round(now - start, 3),
                    cpu_percent=round(100 * (cpu - last_cpu) / max(now - last_wall, 1e-6), 1),
                    rss_mb=round(_rss_mb(pid), 1),
                    system_memory_used_percent=round(_memory_used_percent(), 1),
                    read_mb=round(read_mb, 2),
                    write_mb=round(write_mb, 2),
                )
            except (OSError, ValueError, IndexError):  # the process has exited (or is a zombie)
                return
            self.samples.append(sample)
            last_wall, last_cpu = now, cpu

    def write(self, job_dir: Path, job_name: str) -> Path | None:
        """Write the samples, the JSON summary and the chart; the report's path (None without samples)."""
        if not self.samples:
            return None
        metrics = job_dir / METRICS_FILE
        with atomic_path(metrics) as tmp:
            tmp.write_text("".join(json.dumps(asdict(s)) + "\n" for s in self.samples))
        folder = job_dir / REPORT_FOLDER
        report = folder / "profiler-report.json"
        write_json(report, summarise(self.samples, job_name, self.interval_ms, metrics))
        plot_samples(self.samples, folder / "profiler-report.png", job_name)
        return report


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(samples: list[Sample], job_name: str, interval_ms: int, metrics: Path) -> dict[str, object]:
    """The report: what was sampled and the distribution of each reading (like OverallSystemUsage)."""
    cpu = [s.cpu_percent for s in samples]
    cores = os.cpu_count() or 1
    return {
        "job_name": job_name,
        "produced_by": "local_aws.training_job.profiler (a stand-in; SageMaker's ProfilerReport is AWS's)",
        "interval_ms": interval_ms,
        "samples": len(samples),
        "duration_s": samples[-1].elapsed_s,
        "cpu": {
            "cores": cores,
            "percent_of_one_core": {
                "mean": round(sum(cpu) / len(cpu), 1),
                "p50": _percentile(cpu, 0.5),
                "p95": _percentile(cpu, 0.95),
                "max": max(cpu),
            },
            "mean_utilisation_of_all_cores_percent": round(sum(cpu) / len(cpu) / cores, 1),
        },
        "memory": {
            "max_rss_mb": max(s.rss_mb for s in samples),
            "max_system_used_percent": max(s.system_memory_used_percent for s in samples),
        },
        "io": {"read_mb": samples[-1].read_mb, "write_mb": samples[-1].write_mb},
        "gpu": "not sampled locally",
        "system_metrics": str(metrics),
    }


def plot_samples(samples: list[Sample], path: Path, job_name: str) -> Path:
    """CPU and memory of the job over time, as a PNG beside the JSON report."""
    times = [s.elapsed_s for s in samples]
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 3.5), constrained_layout=True)
    cpu_ax.plot(times, [s.cpu_percent for s in samples])
    cpu_ax.set(title=f"{job_name}: CPU (% of one core)", xlabel="seconds")
    mem_ax.plot(times, [s.rss_mb for s in samples])
    mem_ax.set(title="resident memory (MB)", xlabel="seconds")
    return save_figure(fig, path, dpi=80)
