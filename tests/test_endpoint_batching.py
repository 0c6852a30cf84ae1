"""local_aws/endpoint/batching.py: concurrent requests merged into one model call, each caller getting
its own rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from local_aws.endpoint.batching import Batcher, BatchingConfig


class Model:
    """A model function that records the batch sizes it was called with; rows < 0 make it fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.calls.append((signature, len(x)))
        if (x < 0).any():
            raise ValueError(f"negative input in a batch of {len(x)}")
        return {"double": x * 2, "sum": x.reshape(len(x), -1).sum(axis=1)}


def submit_all(batcher: Batcher, requests: list[tuple[str, np.ndarray]]) -> list[object]:
    def one(request: tuple[str, np.ndarray]) -> object:
        try:
            return batcher.submit(request[0], {"x": request[1]})
        except ValueError as err:
            return err

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_requests_share_one_call() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(enabled=True, max_batch_size=8, timeout_micros=500_000))
    inputs = [np.full((1, 2, 2), i, dtype=np.float32) for i in range(4)]
    results = submit_all(batcher, [("sig", x) for x in inputs])
    batcher.close()
    assert model.calls == [("sig", 4)]
    assert batcher.batch_sizes == {4: 1}
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result["double"], x * 2)
        np.testing.assert_array_equal(result["sum"], [x.sum()])


def test_only_compatible_requests_merge_and_max_batch_size_holds() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(enabled=True, max_batch_size=3, timeout_micros=300_000))
    requests = [
        ("a", np.ones((1, 2))),
        ("a", np.ones((1, 2))),
        ("b", np.ones((1, 2))),
        ("a", np.ones((1, 5))),
        ("a", np.ones((2, 2))),
    ]
    results = submit_all(batcher, requests)
    batcher.close()
    assert sum(size for _, size in model.calls) == 6
    assert all(size <= 3 for _, size in model.calls)
    assert ("b", 1) in model.calls and ("a", 1) in model.calls  # other signature, other shape: alone
    assert [len(r["double"]) for r in results] == [1, 1, 1, 1, 2]


def test_a_failing_request_does_not_fail_its_neighbours() -> None:
    model = Model()
    batcher = Batcher(model, BatchingConfig(enabled=True, max_batch_size=4, timeout_micros=500_000))
    results = submit_all(
        batcher, [("s", np.array([[1.0]])), ("s", np.array([[-1.0]])), ("s", np.array([[2.0]]))]
    )
    batcher.close()
    assert isinstance(results[1], ValueError) and "batch of 1" in str(results[1])
    np.testing.assert_array_equal(results[0]["double"], [[2.0]])
    np.testing.assert_array_equal(results[2]["double"], [[4.0]])


def test_config_from_the_container_environment() -> None:
    assert BatchingConfig.from_env({}) == BatchingConfig(enabled=False, max_batch_size=8, timeout_micros=1000)
    env = {
        "SAGEMAKER_TFS_ENABLE_BATCHING": "TRUE",
        "SAGEMAKER_TFS_MAX_BATCH_SIZE": "4",
        "SAGEMAKER_TFS_BATCH_TIMEOUT_MICROS": "0",
    }
    assert BatchingConfig.from_env(env) == BatchingConfig(enabled=True, max_batch_size=4, timeout_micros=0)
    with pytest.raises(ValueError, match="SAGEMAKER_TFS_ENABLE_BATCHING must be 'true' or 'false'"):
        BatchingConfig.from_env({"SAGEMAKER_TFS_ENABLE_BATCHING": "yes"})
    with pytest.raises(ValueError, match="SAGEMAKER_TFS_MAX_BATCH_SIZE must be >= 1"):
        BatchingConfig.from_env({"SAGEMAKER_TFS_MAX_BATCH_SIZE": "0"})
