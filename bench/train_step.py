"""Training throughput (images/s) of the default recipe with and without XLA, in one run.

``--jit`` is a training flag, and whether it pays depends on the machine: XLA fuses the U-Net's
elementwise work (batch norm, ReLU, the loss) into fewer kernels, which helps most on a GPU and may
not help on a few CPU cores. This measures the exact model ``carvana train`` compiles (same
builder, loss, metrics and optimizer, via ``trainer.train.build_model``) on synthetic tensors, so
the figure is the model's step time and not the input pipeline's. Compilation and the first steps
are excluded (``--warmup``); timed rounds alternate the modes.

    python bench/train_step.py [--steps 5] [--rounds 2] [--warmup 3] [carvana train flags: --image-size ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from trainer.train import build_model
from trainer.training.config import TrainConfig
from trainer.training.config import build_parser as train_parser


def synthetic_batch(batch_size: int, height: int, width: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """Random photos in [0, 1] and an ellipse mask per image (a car-sized blob, not noise)."""
    rng = np.random.default_rng(seed)
    images = rng.random((batch_size, height, width, 3), dtype=np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    masks = np.empty((batch_size, height, width, 1), np.float32)
    for i in range(batch_size):
        cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
        ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.3, 0.45) * width
        masks[i, ..., 0] = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    return tf.constant(images), tf.constant(masks)


def compiled_model(
    config: TrainConfig, jit: bool, batch: tuple[tf.Tensor, tf.Tensor], warmup: int
) -> keras.Model:
    """The training model with ``jit_compile=jit``, traced, compiled and run ``warmup`` steps."""
    keras.utils.set_random_seed(config.runtime.seed)
    model = build_model(dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, jit=jit)))
    for _ in range(warmup):
        model.train_on_batch(*batch)
    return model


def timed_steps(model: keras.Model, batch: tuple[tf.Tensor, tf.Tensor], steps: int) -> float:
    """Seconds for ``steps`` training steps (each returns its loss as a float, so each is finished)."""
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*batch)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/train_step.py",
        description="Training images/s with and without XLA (jit_compile) at the default training size. "
        "Other flags are carvana train's (--image-size, --batch-size, --depth, --base-filters, ...).",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both modes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    args, rest = parser.parse_known_args(argv)
    if min(args.steps, args.rounds, args.warmup) < 1:
        parser.error("--steps, --rounds and --warmup must be >= 1")
    config = TrainConfig.from_args(train_parser().parse_args(rest), environ={})

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU only ({os.cpu_count()} cores)"
    height, width = config.model.image_size
    print(
        f"TF {tf.__version__}, {device}; U-Net depth {config.model.depth}, "
        f"{config.model.base_filters} base filters, {config.model.upsampling} upsampling; "
        f"{height}x{width}, batch {config.optimisation.batch_size}; "
        f"{args.warmup} warm-up steps, then {args.rounds} x {args.steps} timed steps per mode",
        flush=True,
    )
    batch = synthetic_batch(config.optimisation.batch_size, height, width, seed=config.runtime.seed)
    models = {jit: compiled_model(config, jit, batch, args.warmup) for jit in (False, True)}
    # Rounds alternate the two modes, so a change in machine load (shared cores) hits both alike.
    seconds = {False: 0.0, True: 0.0}
    for _ in range(args.rounds):
        for jit, model in models.items():
            seconds[jit] += timed_steps(model, batch, args.steps)
    images = args.rounds * args.steps * config.optimisation.batch_size
    rate = {jit: images / seconds[jit] for jit in models}
    for jit in models:
        mode = "on " if jit else "off"
        print(f"XLA {mode}: {rate[jit]:8.2f} images/s ({images} images in {seconds[jit]:.1f} s)")
    print(f"XLA speed-up: {rate[True] / rate[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
