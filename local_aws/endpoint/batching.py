"""Server-side batching: concurrent ``:predict`` requests merged into one model call.

The SageMaker TF Serving container turns ``SAGEMAKER_TFS_ENABLE_BATCHING=true`` into TF Serving's
batching (``max_batch_size``, ``batch_timeout_micros``): the first request of a batch waits up to
the timeout for others, and all of them run as one call. ``carvana serve`` does the same with one
batcher thread, so the knobs mean the same thing locally, and it is honest about what they buy: on
CPU a bigger batch amortises per-call overhead, it does not make pixels cheaper.

Requests are merged only when they share a signature and the non-batch dimensions and dtypes of
every input (TF Serving's rule, without padding). If a merged call fails, each request is run alone,
so a bad photo gets its own error and does not fail its neighbours.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]
RunFn = Callable[[str, Tensors], dict[str, np.ndarray]]


def _env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "true" if default else "false").strip().lower()
    if value not in {"true", "false"}:
        raise ValueError(f"{name} must be 'true' or 'false', got {value!r}")
    return value == "true"


def env_number(
    env: Mapping[str, str], name: str, default: Any, minimum: float, kind: Callable[[str], Any] = int
) -> Any:
    """``kind(env[name])`` checked against ``minimum``; ``default`` when unset (ValueError naming it)."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {expected}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class BatchingConfig:
    """The container's batching knobs, with its defaults (off, 8 instances, 1000 microseconds)."""

    enabled: bool = False
    max_batch_size: int = 8
    timeout_micros: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchingConfig:
        """``SAGEMAKER_TFS_ENABLE_BATCHING`` / ``_MAX_BATCH_SIZE`` / ``_BATCH_TIMEOUT_MICROS``."""
        return cls(
            enabled=_env_flag(env, "SAGEMAKER_TFS_ENABLE_BATCHING", cls.enabled),
            max_batch_size=env_number(env, "SAGEMAKER_TFS_MAX_BATCH_SIZE", cls.max_batch_size, 1),
            timeout_micros=env_number(env, "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS", cls.timeout_micros, 0),
        )


@dataclass
class _Job:
    signature: str
    inputs: Tensors
    key: Hashable
    size: int
    future: Future = field(default_factory=Future)


def _key(signature: str, inputs: Tensors) -> Hashable:
    return signature, tuple(sorted((n, a.shape[1:], a.dtype.str) for n, a in inputs.items()))


class Batcher:
    """Run ``run(signature, inputs)`` for concurrent callers, merging their batches when allowed."""

    def __init__(self, run: RunFn, config: BatchingConfig) -> None:
        self._run = run
        self._max = config.max_batch_size
        self._timeout = config.timeout_micros / 1e6
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: collections.deque[_Job] = collections.deque()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, signature: str, inputs: Tensors) -> dict[str, np.ndarray]:
        """Block until the request has run (alone or in a batch); its outputs or its exception."""
        size = len(next(iter(inputs.values()))) if inputs else 0
        job = _Job(signature, inputs, _key(signature, inputs), size)
        self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        """Stop the batcher thread once the queued requests have run."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` plus whatever matching jobs arrive before the timeout; ``True`` when stopping."""
        batch, size = [first], first.size
        for job in list(self._carry):
            if job.key == first.key and size + job.size <= self._max:
                self._carry.remove(job)
                batch.append(job)
                size += job.size
        deadline = time.monotonic() + self._timeout
        while size < self._max:
            remaining = deadline - time.monotonic()
            try:
                queued = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is None:
                return batch, True
            if queued.key == first.key and size + queued.size <= self._max:
                batch.append(queued)
                size += queued.size
            else:
                self._carry.append(queued)
        return batch, False

    def _loop(self) -> None:
        stopping = False
        while not (stopping and not self._carry):
            first = self._carry.popleft() if self._carry else self._queue.get()
            if first is None:
                stopping = True
                continue
            batch, stop = self._gather(first)
            stopping = stopping or stop
            self._execute(batch)

    def _run_one(self, job: _Job) -> None:
        try:
            job.future.set_result(self._run(job.signature, job.inputs))
        except Exception as err:
            job.future.set_exception(err)

    def _execute(self, batch: list[_Job]) -> None:
        self.batch_sizes[sum(job.size for job in batch)] += 1
        if len(batch) == 1:
            self._run_one(batch[0])
            return
        sizes = [job.size for job in batch]
        log.info(
            "batch of %d requests (%d instances) in one %s call", len(batch), sum(sizes), batch[0].signature
        )
        merged = {name: np.concatenate([job.inputs[name] for job in batch]) for name in batch[0].inputs}
        try:
            outputs = self._run(batch[0].signature, merged)
            if any(len(tensor) != sum(sizes) for tensor in outputs.values()):
                raise ValueError("an output's batch dimension does not match the merged inputs")
        except Exception:
            for job in batch:
                self._run_one(job)
            return
        splits = np.cumsum(sizes)[:-1]
        parts = {name: np.split(tensor, splits) for name, tensor in outputs.items()}
        for index, job in enumerate(batch):
            job.future.set_result({name: pieces[index] for name, pieces in parts.items()})
