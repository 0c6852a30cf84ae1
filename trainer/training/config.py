"""Training configuration: one typed dataclass per concern, built from the command line and SM_*.

The same ``trainer/train.py`` runs inside a SageMaker training container (hyperparameters arrive as
``--name value`` arguments, paths as ``SM_*`` variables) and on a laptop (``carvana train``, no
``SM_*`` at all). Every path therefore resolves in one order: explicit flag, then the SageMaker
variable, then a local default under ``./runs`` so nothing tries to write to ``/opt/ml`` by accident.

Each hyperparameter is declared once, below, as a field of its concern (model, pipeline,
optimisation, stopping, runtime, export) with its help, range and tuner range
(``trainer.training.hyperparameters``): the entry point's flags, the launcher's flags, the SageMaker
hyperparameters and the tuner's search space are all derived from these declarations.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trainer.command import parse_arguments
from trainer.data import layout
from trainer.model.shape import (
    DEFAULT_REFINEMENT,
    ENCODER_WEIGHTS,
    ENCODERS,
    SCRATCH_ENCODER,
    UPSAMPLING_MODES,
    EdgeRefinement,
    check_input_size,
    scaled_size,
)
from trainer.training.hyperparameters import (
    POSITIVE,
    Bounds,
    ConfigError,
    HyperValue,
    Span,
    add_arguments,
    concern_values,
    declarations,
    hyperparameter,
)

# Where a run without SM_* variables puts everything (relative to the working directory).
LOCAL_ROOT = Path("runs")
MIXED_PRECISION_MODES = ("auto", "true", "false")
VERBOSE_MODES = ("auto", "0", "1", "2")
LR_SCHEDULES = ("cosine", "plateau")
PROGRESSIVE_MODES = ("resize", "crop")


def parse_size(value: str) -> tuple[int, int]:
    """``--image-size``'s reader: the project's one size syntax, with the error argparse shows."""
    try:
        return layout.parse_size(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


def format_size(size: tuple[int, int]) -> str:
    """``(256, 384)`` -> ``"256x384"``, the flag's spelling."""
    return "x".join(map(str, size))


def format_profile_batches(batches: tuple[int, int] | None) -> str:
    """``(3, 4)`` -> ``"3,4"``, None -> ``"0"``, the flag's spelling."""
    return ",".join(map(str, batches)) if batches else "0"


@dataclass(frozen=True)
class ModelConfig:
    """model: the U-Net's input size, shape and regularisation.

    The defaults are the recipe measured on 2 CPU cores (train on 40 real cars, evaluate on 8 at
    1918x1280, ``--max-minutes 28``; README, Results): at 128x192 the model stopped improving at
    0.988 full-resolution Dice within 13 minutes, at 192x288 it was still improving when the budget
    ran out, so 192x288 is the default.
    """

    image_size: tuple[int, int] = hyperparameter(
        (192, 288),
        "HEIGHTxWIDTH, divisible by 2**depth (by 32 with a pretrained --encoder)",
        parse=parse_size,
        text=format_size,
        launcher=True,
    )
    encoder: str = hyperparameter(
        SCRATCH_ENCODER,
        "unet = the from-scratch encoder of --depth poolings; else a Keras Applications backbone "
        "under a U-Net decoder (skips at strides 2-16, bottleneck at 32)",
        choices=ENCODERS,
        launcher=True,
    )
    encoder_weights: str = hyperparameter(
        "imagenet",
        "pretrained --encoder's weights: imagenet (Keras downloads them), none (random) or the path "
        "of a weights file of that backbone; unused by --encoder unet",
        metavar="imagenet|none|PATH",
    )
    encoder_alpha: float = hyperparameter(
        1.0,
        "MobileNetV2's width multiplier (ImageNet weights: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)",
        bounds=POSITIVE,
    )
    depth: int = hyperparameter(4, "--encoder unet: number of 2x poolings", bounds=POSITIVE)
    base_filters: int = hyperparameter(16, "filters of level 1, x2 per level (decoder too)", bounds=POSITIVE)
    upsampling: str = hyperparameter("transpose", "decoder upsampling", choices=UPSAMPLING_MODES)
    dropout: float = hyperparameter(0.0, "spatial dropout at the bottleneck", bounds=Bounds(0.0, 1.0))
    batch_norm: bool = hyperparameter(True, "true|false")


@dataclass(frozen=True)
class PipelineOptions:
    """input pipeline: augmentation, caching (decoding a JPEG costs about as much as a step) and
    progressive resizing (the first part of the run on smaller photos, several times the steps a
    minute, then --image-size)."""

    augment: bool = hyperparameter(True, "flip/zoom/shift/colour")
    cache: bool = hyperparameter(True, "keep decoded photos in RAM")
    soft_masks: bool = hyperparameter(
        False,
        "train and validate on the share of each pixel the car covers (the records' mask/coverage, "
        "or a larger mask area-averaged) instead of that share cut at 0.5; true|false",
    )
    progressive_scale: float = hyperparameter(
        0.67,
        "side of the training photos of the run's first --progressive-share, as a share of "
        "--image-size's (rounded down to a size the model takes: 192x288 x 0.67 = 128x192)",
        bounds=Bounds(0.0, 1.0, low_inclusive=False),
    )
    progressive_mode: str = hyperparameter(
        "resize",
        "how the small photos are made: resize = the whole photo scaled down; crop = a random "
        "window of the photo at --image-size (the car at the scale the model sees in use)",
        choices=PROGRESSIVE_MODES,
    )
    progressive_share: float = hyperparameter(
        0.5,
        "share of the run at --progressive-scale before --image-size (as the cosine schedule counts "
        "it: epochs over --epochs or minutes over --max-minutes, whichever is further), switched at "
        "an epoch end; validation is always at --image-size; 0 = off",
        bounds=Bounds(0.0, 1.0, note="0 = off"),
    )


@dataclass(frozen=True)
class ExportOptions:
    """export: the served mask's edge refinement, built into the SavedModel (trainer.refine)."""

    refine_radius: int = hyperparameter(
        DEFAULT_REFINEMENT.radius,
        "edge refinement: the guided filter's window radius in pixels of --image-size; it snaps the "
        "mask's edge to the photo's edges, drawn at twice --image-size; 0 = off",
        bounds=Bounds(low=0.0, note="0 = off"),
    )
    refine_eps: float = hyperparameter(
        DEFAULT_REFINEMENT.eps,
        "guided filter's regularisation (squared colour, 0..1 scale): smaller follows fainter edges",
        bounds=POSITIVE,
    )

    @property
    def refinement(self) -> EdgeRefinement:
        return EdgeRefinement(radius=self.refine_radius, eps=self.refine_eps)


@dataclass(frozen=True)
class OptimisationConfig:
    """optimisation: batch, Adam's learning rate and its reduction on plateau."""

    # 4: twice the steps of 8 in the same minutes, +0.0007 mean Dice on two seeds (README, Results).
    batch_size: int = hyperparameter(
        4, "images per step per replica", bounds=POSITIVE, search=(4, 8, 16), launcher=True
    )
    learning_rate: float = hyperparameter(
        1e-3, "Adam's initial rate", bounds=POSITIVE, search=Span(1e-4, 3e-3, log=True), launcher=True
    )
    lr_schedule: str = hyperparameter(
        "cosine",
        "cosine = decay to min-lr, step by step, over --epochs or by --max-minutes, whichever ends "
        "first (the run's length shapes the run); "
        "plateau = cut by lr-factor after lr-patience epochs without val_loss gain",
        choices=LR_SCHEDULES,
    )
    lr_patience: int = hyperparameter(3, "plateau schedule: epochs without gain before an LR cut")
    lr_factor: float = hyperparameter(
        0.5,
        "plateau schedule: learning-rate multiplier at a cut",
        bounds=Bounds(0.0, 1.0, low_inclusive=False),
    )
    min_lr: float = hyperparameter(1e-5, "floor of the learning rate (the cosine schedule's end)")
    freeze_encoder_epochs: int = hyperparameter(
        0,
        "pretrained --encoder: train the decoder alone (backbone frozen, its batch norms in inference "
        "mode) for this many epochs, then everything (recompiled, fresh Adam); 0 = never frozen",
        bounds=Bounds(low=0.0, note="0 = never frozen"),
    )


@dataclass(frozen=True)
class StoppingConfig:
    """stopping: epochs, early stopping and the wall-clock budget."""

    epochs: int = hyperparameter(
        100,
        "epochs to train (also the cosine schedule's length)",
        bounds=POSITIVE,
        search=Span(10, 40),
        launcher=True,
    )
    patience: int = hyperparameter(
        10, "early stopping: epochs without val_loss gain; 0 = off", bounds=Bounds(low=0.0, note="0 = off")
    )
    max_minutes: float = hyperparameter(
        0.0,
        "wall-clock budget: stop at the epoch end after which the next epoch would cross it, then "
        "export; 0 = none (carvana fit/tune set it from --max-run)",
        bounds=Bounds(low=0.0, note="0 = no budget"),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """runtime: seed, compilation, precision, profiling and progress output."""

    seed: int = hyperparameter(0, "weights, shuffling and augmentation")
    jit: bool = hyperparameter(False, "compile the step with XLA")
    mixed_precision: str = hyperparameter(
        "auto", "float16 compute; auto = only with a GPU", choices=MIXED_PRECISION_MODES
    )
    profile_batches: tuple[int, int] | None = hyperparameter(
        (3, 4),
        "training steps traced by the TensorBoard profiler; 0 = off",
        parse=parse_profile_batches,
        text=format_profile_batches,
        metavar="START,STOP",
    )
    preview_images: int = hyperparameter(
        3, "validation photos whose predicted masks go to TensorBoard each epoch"
    )
    verbose: str = hyperparameter(
        "auto",
        "Keras progress: 1 = bar, 2 = a line per epoch, auto = bar on a terminal",
        choices=VERBOSE_MODES,
    )

    @property
    def verbosity(self) -> int:
        """Keras fit verbosity: a live progress bar on a terminal, one line per epoch in a log."""
        if self.verbose == "auto":
            return 1 if os.isatty(1) else 2
        return int(self.verbose)


@dataclass(frozen=True)
class Paths:
    """Where the run reads and writes (not hyperparameters: the platform or the caller sets them)."""

    train_dir: Path
    validation_dir: Path
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    tensorboard_dir: Path

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        io = parser.add_argument_group("data and outputs (default: the SM_* variables, else ./runs/...)")
        io.add_argument("--data", help="folder holding train/ and validation/ TFRecords [./runs/tfrecords]")
        io.add_argument("--train", help="training TFRecords [SM_CHANNEL_TRAIN, else DATA/train]")
        io.add_argument(
            "--validation", help="validation TFRecords [SM_CHANNEL_VALIDATION, else DATA/validation]"
        )
        io.add_argument(
            "--model-dir", help="where unet/1/ (the SavedModel) goes [SM_MODEL_DIR, ./runs/model]"
        )
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

    @classmethod
    def resolve(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Paths:
        """Flag > SM_* variable > ./runs default, for each path."""
        sm_model_dir = env.get("SM_MODEL_DIR")
        sm_output_dir = env.get("SM_OUTPUT_DATA_DIR")
        data = Path(args.data) if args.data else LOCAL_ROOT / "tfrecords"
        # SageMaker's TF estimator passes --model_dir s3://.../model for its own use: only a local
        # path there can be a place to write to.
        legacy = args.model_dir_legacy if "://" not in (args.model_dir_legacy or "://") else None
        # Inside SageMaker (and the local launcher's copy of its layout) /opt/ml/model and
        # /opt/ml/output/data have /opt/ml/checkpoints and /opt/ml/output/tensorboard beside them.
        checkpoint_default = (Path(sm_model_dir).parent if sm_model_dir else LOCAL_ROOT) / "checkpoints"
        tensorboard_default = (Path(sm_output_dir).parent if sm_output_dir else LOCAL_ROOT) / "tensorboard"
        return cls(
            train_dir=Path(args.train or env.get("SM_CHANNEL_TRAIN") or data / "train"),
            validation_dir=Path(args.validation or env.get("SM_CHANNEL_VALIDATION") or data / "validation"),
            model_dir=Path(args.model_dir or legacy or sm_model_dir or LOCAL_ROOT / "model"),
            output_data_dir=Path(args.output_data_dir or sm_output_dir or LOCAL_ROOT / "output"),
            checkpoint_dir=Path(args.checkpoint_dir or checkpoint_default),
            tensorboard_dir=Path(args.tensorboard_dir or tensorboard_default),
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs, by concern; ``carvana train --help`` says what each means."""

    paths: Paths
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    optimisation: OptimisationConfig = field(default_factory=OptimisationConfig)
    stopping: StoppingConfig = field(default_factory=StoppingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    export: ExportOptions = field(default_factory=ExportOptions)
    cluster: Cluster = field(default_factory=Cluster)

    def __post_init__(self) -> None:
        """Fail before TensorFlow starts, naming the flag, rather than minutes into a job."""
        concerns = {f.name: getattr(self, f.name) for f in fields(self)}
        for declaration in declarations(TrainConfig):
            for concern in concerns.values():
                if hasattr(concern, declaration.name):
                    declaration.check(getattr(concern, declaration.name))
        model = self.model
        try:
            check_input_size(*model.image_size, model.depth, encoder=model.encoder)
        except ValueError as err:
            raise ConfigError(f"--image-size: {err}") from None
        if self.progressive:
            try:
                self.progressive_size  # noqa: B018 (computed here to fail before TensorFlow starts)
            except ValueError as err:
                raise ConfigError(f"--progressive-scale: {err}") from None
        if model.encoder == SCRATCH_ENCODER and self.optimisation.freeze_encoder_epochs:
            raise ConfigError(
                "--freeze-encoder-epochs: applies to a pretrained --encoder (mobilenetv2, ...), "
                "not to the from-scratch unet"
            )
        if model.encoder_alpha != 1.0 and model.encoder != "mobilenetv2":
            raise ConfigError(
                f"--encoder-alpha: MobileNetV2's width multiplier, expected 1.0 with --encoder "
                f"{model.encoder}, got {model.encoder_alpha}"
            )
        weights, pretrained = model.encoder_weights, model.encoder != SCRATCH_ENCODER
        if pretrained and weights not in ENCODER_WEIGHTS and not Path(weights).is_file():
            raise ConfigError(
                f"--encoder-weights: expected imagenet, none or the path of a weights file, got "
                f"{weights!r} (no such file)"
            )

    @property
    def progressive(self) -> bool:
        """Progressive resizing is on (``--progressive-share`` > 0)."""
        return self.pipeline.progressive_share > 0

    @property
    def progressive_size(self) -> tuple[int, int]:
        """The training photos' size before progressive resizing's switch (``--progressive-scale``)."""
        model = self.model
        return scaled_size(
            model.image_size, self.pipeline.progressive_scale, model.depth, encoder=model.encoder
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TrainConfig:
        """Resolve paths (flag > SM_* variable > ./runs default) and check the hyperparameters."""
        env = os.environ if environ is None else environ
        return cls(
            paths=Paths.resolve(args, env), cluster=Cluster.from_env(env), **concern_values(cls, vars(args))
        )


@dataclass(frozen=True)
class Recipe:
    """A named set of hyperparameter values (field name -> value) for ``carvana fit/tune --recipe``."""

    summary: str
    values: Mapping[str, Any]

    def hyperparameters(self) -> dict[str, HyperValue]:
        """The values as a SageMaker HyperParameters dict (flag names, flag text)."""
        declared = {d.name: d for d in declarations(TrainConfig)}
        return {declared[name].flag: declared[name].sagemaker_value(v) for name, v in self.values.items()}


# ``cpu`` is the defaults (README, Results: measured on 2 cores). ``gpu`` is for one NVIDIA GPU with
# tensor cores (ml.g5.xlarge: an A10G, 24 GB): a pretrained ResNet50 at 4x the CPU recipe's pixels,
# float16 compute, the backbone frozen for 2 epochs while the random decoder settles, then a cosine
# from 5e-4. Chosen from the literature, NOT measured here (no GPU; README, Encoders and the GPU recipe).
RECIPES: dict[str, Recipe] = {
    "cpu": Recipe("the defaults, measured on 2 CPU cores (README, Results)", {}),
    "gpu": Recipe(
        "pretrained ResNet50 U-Net, 512x768, mixed float16, 40 epochs (unmeasured: see README)",
        {
            "image_size": (512, 768),
            "encoder": "resnet50",
            "encoder_weights": "imagenet",
            "batch_size": 8,
            "learning_rate": 5e-4,
            "freeze_encoder_epochs": 2,
            "epochs": 40,
            "mixed_precision": "true",
        },
    ),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to options that have a default; the paths' defaults are in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The entry point's arguments: the declared hyperparameters plus local overrides for every path."""
    parser = argparse.ArgumentParser(
        prog="carvana train",
        description="Train the U-Net on TFRecords and export the SavedModel. This is the SageMaker "
        "script-mode entry point; without SM_* variables everything defaults to ./runs/.",
        formatter_class=_HelpFormatter,
    )
    Paths.add_arguments(parser)
    add_arguments(parser, TrainConfig)
    return parser


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Parse known arguments into a TrainConfig; raises ConfigError for unusable values.

    Unknown arguments are reported and ignored: SageMaker and its tuner may pass hyperparameters
    this script does not use, and failing the whole job over one would waste it.
    """
    return TrainConfig.from_args(parse_arguments(build_parser(), argv, ignore_unknown=True), environ)
