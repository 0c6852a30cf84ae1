"""Where the training step runs: distribution strategy, TF_CONFIG and mixed precision.

One GPU or CPU uses the default strategy; several local GPUs ``MirroredStrategy``; several SageMaker
hosts (``SM_HOSTS``) ``MultiWorkerMirroredStrategy``, whose ``TF_CONFIG`` is built from the host list
unless the platform already set one. Mixed precision pays off only on GPUs with tensor cores; on a
CPU float16 is emulated and slower, so ``auto`` enables it only when a GPU is present.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping

import keras
import tensorflow as tf

from trainer.training.config import Cluster

# The port the workers of a multi-host job talk on (any free port works; all hosts must agree).
WORKER_PORT = 2222


def tf_config_for(cluster: Cluster, port: int = WORKER_PORT) -> dict:
    """The ``TF_CONFIG`` of ``cluster.current_host`` in a job over ``cluster.hosts`` (all workers)."""
    return {
        "cluster": {"worker": [f"{host}:{port}" for host in cluster.hosts]},
        "task": {"type": "worker", "index": cluster.hosts.index(cluster.current_host)},
    }


def make_strategy(
    cluster: Cluster, environ: MutableMapping[str, str] | None = None
) -> tf.distribute.Strategy:
    """The strategy for this machine and job; sets ``TF_CONFIG`` for a multi-host job."""
    env = os.environ if environ is None else environ
    if cluster.multi_worker:
        env.setdefault("TF_CONFIG", json.dumps(tf_config_for(cluster)))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def use_mixed_precision(mode: str) -> bool:
    """Set the global Keras dtype policy for ``mode`` (auto|true|false); True when float16 is on."""
    enabled = mode == "true" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")
    return enabled
