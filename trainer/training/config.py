"""Training configuration: one dataclass built from the command line and the SageMaker environment.

The same ``trainer/train.py`` runs inside a SageMaker training container (hyperparameters arrive as
``--name value`` arguments, paths as ``SM_*`` variables) and on a laptop (``carvana train``, no
``SM_*`` at all). Every path therefore resolves in one order: explicit flag, then the SageMaker
variable, then a local default under ``./runs`` so nothing tries to write to ``/opt/ml`` by accident.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.model.unet import UPSAMPLING_MODES, check_input_size

# Where a run without SM_* variables puts everything (relative to the working directory).
LOCAL_ROOT = Path("runs")
MIXED_PRECISION_MODES = ("auto", "true", "false")
VERBOSE_MODES = ("auto", "0", "1", "2")


class ConfigError(ValueError):
    """A hyperparameter or path is unusable; the message names the flag and what was expected."""


def str2bool(value: str) -> bool:
    """SageMaker passes every hyperparameter as a string, so booleans are spelled out."""
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_size(value: str) -> tuple[int, int]:
    """``"256x384"`` -> ``(256, 384)``: height x width, as everywhere in the project."""
    try:
        height, width = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x384, got {value!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive HEIGHTxWIDTH, got {value!r}")
    return height, width


def parse_profile_batches(value: str) -> tuple[int, int] | None:
    """``"3,4"`` -> ``(3, 4)`` (1-based training steps to trace), ``"0"`` -> None (no profiling)."""
    if value.strip() in {"", "0"}:
        return None
    try:
        start, stop = (int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START,STOP such as 3,4 or 0, got {value!r}") from None
    if not 0 < start <= stop:
        raise argparse.ArgumentTypeError(f"expected 0 < START <= STOP, got {value!r}")
    return start, stop


@dataclass(frozen=True)
class Cluster:
    """The hosts of a (possibly multi-host) SageMaker job and which one this is."""

    hosts: tuple[str, ...] = ("localhost",)
    current_host: str = "localhost"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Cluster:
        hosts = tuple(json.loads(environ["SM_HOSTS"])) if environ.get("SM_HOSTS") else ()
        if not hosts:
            return cls()
        current = environ.get("SM_CURRENT_HOST", hosts[0])
        if current not in hosts:
            raise ConfigError(f"SM_CURRENT_HOST {current!r} is not one of SM_HOSTS {list(hosts)}")
        return cls(hosts=hosts, current_host=current)

    @property
    def multi_worker(self) -> bool:
        return len(self.hosts) > 1

    @property
    def is_chief(self) -> bool:
        """The first host writes the model, checkpoints and reports; the others only train."""
        return self.current_host == self.hosts[0]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; see ``build_parser`` for what each field means.

    The defaults are the recipe measured on 2 CPU cores (train on 40 real cars, evaluate on 8 at
    1918x1280, ``--max-minutes 28``; README, Results): at 128x192 the model stopped improving at
    0.988 full-resolution Dice within 13 minutes, at 192x288 it was still improving when the budget
    ran out, so 192x288 is the default. Decoded photos are cached because decoding a JPEG costs
    about as much as a training step.
    """

    train_dir: Path
    validation_dir: Path
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    tensorboard_dir: Path
    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    image_size: tuple[int, int] = (192, 288)
    depth: int = 4
    base_filters: int = 16
    upsampling: str = "transpose"
    dropout: float = 0.0
    batch_norm: bool = True
    augment: bool = True
    cache: bool = True
    max_minutes: float = 0.0
    jit: bool = False
    mixed_precision: str = "auto"
    patience: int = 10
    lr_patience: int = 3
    lr_factor: float = 0.5
    min_lr: float = 1e-5
    seed: int = 0
    profile_batches: tuple[int, int] | None = (3, 4)
    preview_images: int = 3
    verbose: str = "auto"
    cluster: Cluster = field(default_factory=Cluster)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TrainConfig:
        """Resolve paths (flag > SM_* variable > ./runs default) and check the hyperparameters."""
        env = os.environ if environ is None else environ
        sm_model_dir = env.get("SM_MODEL_DIR")
        sm_output_dir = env.get("SM_OUTPUT_DATA_DIR")
        data = Path(args.data) if args.data else LOCAL_ROOT / "tfrecords"
        # SageMaker's TF estimator passes --model_dir s3://.../model for its own use: only a local
        # path there can be a place to write to.
        legacy = args.model_dir_legacy if "://" not in (args.model_dir_legacy or "://") else None
        model_dir = Path(args.model_dir or legacy or sm_model_dir or LOCAL_ROOT / "model")
        output_data_dir = Path(args.output_data_dir or sm_output_dir or LOCAL_ROOT / "output")
        # Inside SageMaker (and the local launcher's copy of its layout) /opt/ml/model and
        # /opt/ml/output/data have /opt/ml/checkpoints and /opt/ml/output/tensorboard beside them.
        checkpoint_default = (Path(sm_model_dir).parent if sm_model_dir else LOCAL_ROOT) / "checkpoints"
        tensorboard_default = (Path(sm_output_dir).parent if sm_output_dir else LOCAL_ROOT) / "tensorboard"
        config = cls(
            train_dir=Path(args.train or env.get("SM_CHANNEL_TRAIN") or data / "train"),
            validation_dir=Path(args.validation or env.get("SM_CHANNEL_VALIDATION") or data / "validation"),
            model_dir=model_dir,
            output_data_dir=output_data_dir,
            checkpoint_dir=Path(args.checkpoint_dir or checkpoint_default),
            tensorboard_dir=Path(args.tensorboard_dir or tensorboard_default),
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            image_size=args.image_size,
            depth=args.depth,
            base_filters=args.base_filters,
            upsampling=args.upsampling,
            dropout=args.dropout,
            batch_norm=args.batch_norm,
            augment=args.augment,
            cache=args.cache,
            max_minutes=args.max_minutes,
            jit=args.jit,
            mixed_precision=args.mixed_precision,
            patience=args.patience,
            lr_patience=args.lr_patience,
            lr_factor=args.lr_factor,
            min_lr=args.min_lr,
            seed=args.seed,
            profile_batches=args.profile_batches,
            preview_images=args.preview_images,
            verbose=args.verbose,
            cluster=Cluster.from_env(env),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Fail before TensorFlow starts, naming the flag, rather than minutes into a job."""
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--learning-rate": self.learning_rate,
            "--depth": self.depth,
            "--base-filters": self.base_filters,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{flag} must be positive, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.max_minutes < 0:
            raise ConfigError(f"--max-minutes must be >= 0 (0 = no budget), got {self.max_minutes}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"--lr-factor must be in (0, 1), got {self.lr_factor}")
        try:
            check_input_size(*self.image_size, self.depth)
        except ValueError as err:
            raise ConfigError(f"--image-size: {err}") from None

    @property
    def verbosity(self) -> int:
        """Keras fit verbosity: a live progress bar on a terminal, one line per epoch in a log."""
        if self.verbose == "auto":
            return 1 if os.isatty(1) else 2
        return int(self.verbose)


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to options that have a default; the paths' defaults are in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The entry point's arguments: SageMaker hyperparameters plus local overrides for every path."""
    d = {name: f.default for name, f in TrainConfig.__dataclass_fields__.items()}
    parser = argparse.ArgumentParser(
        prog="carvana train",
        description="Train the U-Net on TFRecords and export the SavedModel. This is the SageMaker "
        "script-mode entry point; without SM_* variables everything defaults to ./runs/.",
        formatter_class=_HelpFormatter,
    )
    io = parser.add_argument_group("data and outputs (default: the SM_* variables, else ./runs/...)")
    io.add_argument("--data", help="folder holding train/ and validation/ TFRecords [./runs/tfrecords]")
    io.add_argument("--train", help="training TFRecords [SM_CHANNEL_TRAIN, else DATA/train]")
    io.add_argument("--validation", help="validation TFRecords [SM_CHANNEL_VALIDATION, else DATA/validation]")
    io.add_argument("--model-dir", help="where unet/1/ (the SavedModel) goes [SM_MODEL_DIR, ./runs/model]")
    io.add_argument(
        "--model_dir", dest="model_dir_legacy", help="set by SageMaker's TF estimator; ignored if s3://"
    )
    io.add_argument(
        "--output-data-dir", help="curves, history, debugger report [SM_OUTPUT_DATA_DIR, ./runs/output]"
    )
    io.add_argument(
        "--checkpoint-dir", help="checkpoints, resumed from [/opt/ml/checkpoints, ./runs/checkpoints]"
    )
    io.add_argument(
        "--tensorboard-dir", help="TensorBoard logs [/opt/ml/output/tensorboard, ./runs/tensorboard]"
    )

    model = parser.add_argument_group("model")
    size = "x".join(map(str, d["image_size"]))
    model.add_argument(
        "--image-size", type=parse_size, default=size, help="HEIGHTxWIDTH, divisible by 2**depth"
    )
    model.add_argument("--depth", type=int, default=d["depth"], help="number of 2x poolings")
    model.add_argument(
        "--base-filters", type=int, default=d["base_filters"], help="filters of level 1, x2 per level"
    )
    model.add_argument(
        "--upsampling", choices=UPSAMPLING_MODES, default=d["upsampling"], help="decoder upsampling"
    )
    model.add_argument(
        "--dropout", type=float, default=d["dropout"], help="spatial dropout at the bottleneck"
    )
    model.add_argument(
        "--batch-norm", type=str2bool, default=d["batch_norm"], metavar="BOOL", help="true|false"
    )

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=d["epochs"], help="most epochs to train")
    fit.add_argument("--batch-size", type=int, default=d["batch_size"], help="images per step per replica")
    fit.add_argument("--learning-rate", type=float, default=d["learning_rate"], help="Adam's initial rate")
    fit.add_argument(
        "--augment", type=str2bool, default=d["augment"], metavar="BOOL", help="flip/zoom/shift/colour"
    )
    fit.add_argument(
        "--cache", type=str2bool, default=d["cache"], metavar="BOOL", help="keep decoded photos in RAM"
    )
    fit.add_argument(
        "--max-minutes",
        type=float,
        default=d["max_minutes"],
        help="wall-clock budget: stop after the epoch that crosses it, then export; 0 = none",
    )
    fit.add_argument(
        "--patience", type=int, default=d["patience"], help="early stopping: epochs without val_loss gain"
    )
    fit.add_argument(
        "--lr-patience", type=int, default=d["lr_patience"], help="epochs without gain before an LR cut"
    )
    fit.add_argument(
        "--lr-factor", type=float, default=d["lr_factor"], help="learning-rate multiplier at a cut"
    )
    fit.add_argument("--min-lr", type=float, default=d["min_lr"], help="floor of the learning rate")
    fit.add_argument("--seed", type=int, default=d["seed"], help="weights, shuffling and augmentation")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--jit", type=str2bool, default=d["jit"], metavar="BOOL", help="compile the step with XLA"
    )
    runtime.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_MODES,
        default=d["mixed_precision"],
        help="float16 compute; auto = only with a GPU",
    )
    runtime.add_argument(
        "--profile-batches",
        type=parse_profile_batches,
        default=",".join(map(str, d["profile_batches"])),
        metavar="START,STOP",
        help="training steps traced by the TensorBoard profiler; 0 = off",
    )
    runtime.add_argument(
        "--preview-images",
        type=int,
        default=d["preview_images"],
        help="validation photos whose predicted masks go to TensorBoard each epoch",
    )
    runtime.add_argument(
        "--verbose",
        choices=VERBOSE_MODES,
        default=d["verbose"],
        help="Keras progress: 1 = bar, 2 = a line per epoch, auto = bar on a terminal",
    )
    return parser


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Parse known arguments into a TrainConfig; raises ConfigError for unusable values.

    Unknown arguments are reported and ignored: SageMaker and its tuner may pass hyperparameters
    this script does not use, and failing the whole job over one would waste it.
    """
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        print(f"carvana train: ignoring unknown arguments {' '.join(unknown)}", flush=True)
    return TrainConfig.from_args(args, environ)
