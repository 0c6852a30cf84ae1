"""Running the job's process as SageMaker does: log streaming, metric scraping, stopping.

The log is streamed to the caller and to ``logs/algo-1.log`` (the CloudWatch stream's stand-in) and
scraped with the SageMaker metric definitions. Stopping follows SageMaker: SIGTERM (StopTrainingJob,
early stopping, MaxRuntimeInSeconds, spot reclaim), then SIGKILL 120 s later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from local_aws.training_job.profiler import SystemMonitor
from trainer.launch.metrics import scrape_metrics

# SageMaker sends SIGTERM on StopTrainingJob / spot reclaim and SIGKILLs 120 s later.
STOP_GRACE_S = 120
LOG_TAIL_LINES = 20

# Called with the metrics of each epoch line; returning True stops the job (early stopping).
EpochCallback = Callable[[Mapping[str, float]], bool]


@dataclass
class Outcome:
    """How the process ended and what its log reported."""

    returncode: int = 0
    stopped: bool = False  # asked to stop: early stopping or Ctrl-C
    timed_out: bool = False  # MaxRuntimeInSeconds reached
    interrupted: bool = False  # Ctrl-C: the caller re-raises KeyboardInterrupt once it has finished
    final: dict[str, float] = field(default_factory=dict)  # the last value of each metric
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch line
    tail: list[str] = field(default_factory=list)  # the log's last lines, for a failure reason


def supervise(
    command: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    name: str,
    max_run_s: float,
    stream: TextIO,
    on_epoch: EpochCallback | None = None,
    monitor: SystemMonitor | None = None,
) -> Outcome:
    """Run ``command`` to its end, streaming and scraping its log; see the module docstring.

    ``on_epoch`` may stop the job early, which sends SIGTERM as SageMaker's early stopping does.
    Ctrl-C stops the job the same way (the log is drained meanwhile, so the job never blocks on a
    full pipe while it saves) and is reported as ``interrupted``. ``monitor`` samples the process
    from its start to its end (SageMaker Profiler's system monitoring, locally).
    """
    outcome = Outcome()
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        ) as process,
    ):
        if monitor is not None:
            monitor.start(process.pid)

        def consume(line: str) -> None:
            stream.write(line)
            stream.flush()
            log.write(line)
            outcome.tail = [*outcome.tail[-(LOG_TAIL_LINES - 1) :], line.rstrip()]
            metrics = scrape_metrics(line)
            outcome.final.update(metrics)
            if "epoch" in metrics:
                outcome.history.append(metrics)
                if on_epoch is not None and not outcome.stopped and on_epoch(metrics):
                    outcome.stopped = True
                    print(f"[{name}] early stopping: sending SIGTERM", file=stream, flush=True)
                    send_sigterm(process)

        def on_max_run() -> None:
            outcome.timed_out = True
            print(
                f"[{name}] MaxRuntimeInSeconds ({max_run_s}) reached: sending SIGTERM",
                file=stream,
                flush=True,
            )
            send_sigterm(process)

        # SageMaker stops a job that outlives max_run the same way (SIGTERM, then the grace period).
        watchdog = threading.Timer(max_run_s, on_max_run)
        watchdog.daemon = True
        watchdog.start()
        assert process.stdout is not None  # started with stdout=PIPE
        lines = iter(process.stdout.readline, "")
        try:
            for line in lines:
                consume(line)
        except KeyboardInterrupt:
            outcome.interrupted = outcome.stopped = True
            print(
                f"[{name}] interrupted: sending SIGTERM, waiting up to {STOP_GRACE_S} s",
                file=stream,
                flush=True,
            )
            send_sigterm(process)
            for line in lines:
                consume(line)
        outcome.returncode = wait_or_kill(process)
        watchdog.cancel()
        if monitor is not None:
            monitor.stop()
    return outcome


def send_sigterm(process: subprocess.Popen) -> None:
    """SIGTERM to the job's process group (its own session, so a terminal's Ctrl-C does not reach it)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def wait_or_kill(process: subprocess.Popen) -> int:
    """The exit code; a job still running STOP_GRACE_S after SIGTERM is killed, as SageMaker does."""
    try:
        return process.wait(timeout=STOP_GRACE_S if process.poll() is None else None)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()
