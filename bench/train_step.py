"""Training throughput (images/s) of the default recipe with and without XLA, and per encoder, in one run.

``--jit`` is a training flag, and whether it pays depends on the machine: XLA fuses the U-Net's
elementwise work (batch norm, ReLU, the loss) into fewer kernels, which helps most on a GPU and may
not help on a few CPU cores. This measures the exact model ``carvana train`` compiles (same
builder, loss, metrics and optimizer, via ``trainer.train.build_model``) on synthetic tensors, so
the figure is the model's step time and not the input pipeline's. Compilation and the first steps
are excluded (``--warmup``); timed rounds alternate the settings.

``--encoder unet,mobilenetv2,resnet50`` compares encoders (``--xla off`` halves the models to
compile); pretrained backbones are built with random weights (the same step time, no download)
and timed unfrozen, the fine-tuning step.

    python bench/train_step.py [--steps 5] [--rounds 2] [--warmup 3] [--encoder unet,mobilenetv2]
        [--xla both|off|on] [carvana train flags: --image-size ...]
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

from trainer.model.shape import ENCODERS
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


XLA_MODES = {"both": (False, True), "off": (False,), "on": (True,)}


def compiled_model(
    config: TrainConfig, encoder: str, jit: bool, batch: tuple[tf.Tensor, tf.Tensor], warmup: int
) -> keras.Model:
    """The training model of ``encoder`` (random weights) with ``jit_compile=jit``, traced, compiled
    and run ``warmup`` steps."""
    keras.utils.set_random_seed(config.runtime.seed)
    alpha = config.model.encoder_alpha if encoder == "mobilenetv2" else 1.0
    model_config = dataclasses.replace(
        config.model, encoder=encoder, encoder_weights="none", encoder_alpha=alpha
    )
    runtime = dataclasses.replace(config.runtime, jit=jit)
    model = build_model(dataclasses.replace(config, model=model_config, runtime=runtime))
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
        description="Training images/s with and without XLA (jit_compile), per encoder, at the default "
        "training size. Other flags are carvana train's (--image-size, --batch-size, --depth, ...).",
    )
    parser.add_argument(
        "--encoder",
        default="unet",
        help=f"comma-separated encoders to compare, of {', '.join(ENCODERS)}",
    )
    parser.add_argument("--xla", choices=tuple(XLA_MODES), default="both", help="XLA settings to time")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both modes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    args, rest = parser.parse_known_args(argv)
    if min(args.steps, args.rounds, args.warmup) < 1:
        parser.error("--steps, --rounds and --warmup must be >= 1")
    encoders = [name.strip() for name in args.encoder.split(",") if name.strip()]
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown or not encoders:
        parser.error(f"--encoder: expected names among {', '.join(ENCODERS)}, got {args.encoder!r}")
    # The flags are checked with one of the encoders here (mobilenetv2 if listed: --encoder-alpha
    # is its flag), and with each when its model is built (sizes divisible by 32 for a backbone).
    first = "mobilenetv2" if "mobilenetv2" in encoders else encoders[0]
    config = TrainConfig.from_args(train_parser().parse_args([*rest, "--encoder", first]), environ={})

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU only ({os.cpu_count()} cores)"
    height, width = config.model.image_size
    print(
        f"TF {tf.__version__}, {device}; encoders {', '.join(encoders)} (unet: depth "
        f"{config.model.depth}), {config.model.base_filters} base filters, {config.model.upsampling} "
        f"upsampling; {height}x{width}, batch {config.optimisation.batch_size}; "
        f"{args.warmup} warm-up steps, then {args.rounds} x {args.steps} timed steps per setting",
        flush=True,
    )
    batch = synthetic_batch(config.optimisation.batch_size, height, width, seed=config.runtime.seed)
    settings = [(encoder, jit) for encoder in encoders for jit in XLA_MODES[args.xla]]
    models = {setting: compiled_model(config, *setting, batch, args.warmup) for setting in settings}
    # Rounds alternate the settings, so a change in machine load (shared cores) hits all alike.
    seconds = dict.fromkeys(settings, 0.0)
    for _ in range(args.rounds):
        for setting, model in models.items():
            seconds[setting] += timed_steps(model, batch, args.steps)
    images = args.rounds * args.steps * config.optimisation.batch_size
    rate = {setting: images / seconds[setting] for setting in settings}
    for (encoder, jit), model in models.items():
        print(
            f"{encoder:>14} XLA {'on ' if jit else 'off'}: {rate[encoder, jit]:8.2f} images/s "
            f"({images} images in {seconds[encoder, jit]:.1f} s, {model.count_params():,} parameters)"
        )
    if args.xla == "both":
        for encoder in encoders:
            print(f"{encoder:>14} XLA speed-up: {rate[encoder, True] / rate[encoder, False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
