"""SageMaker script-mode entry point for the U-Net (also ``carvana train`` and ``python -m trainer.train``).

The same file runs in a SageMaker TensorFlow training container, in the local launcher's copy of
that container's layout, and on a laptop: hyperparameters come as ``--name value`` arguments,
paths from ``SM_*`` variables or flags (see ``trainer.training.config``). A run

1. resumes from the newest checkpoint in the checkpoint folder, if any (spot restarts);
2. trains on a cosine learning-rate schedule over ``--epochs`` or to the end of ``--max-minutes``,
   whichever comes first (or plateau cuts), optionally on smaller photos for the first
   ``--progressive-share`` of the run, with early stopping, a wall-clock budget, the
   loss-behaviour debugger, TensorBoard logs and one ``epoch=N loss=... val_dice=...`` line per
   epoch for the tuner;
3. takes the best epoch's weights (by val_dice) and exports the SavedModel to ``<model_dir>/unet/1``
   with ``assets.extra/training-metadata.json`` saying how training ended;
4. on SIGTERM (SageMaker's stop, MaxRuntimeInSeconds, a spot reclaim; 120 s before SIGKILL) stops
   at the next batch, saves a checkpoint (a restart resumes from it), exports as in 3 with the
   metadata marked ``partial`` and exits 0: the job's model.tar.gz is then a usable model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from trainer.command import run_command
from trainer.data.pipeline import PipelineConfig, count_examples, make_dataset
from trainer.export import export_saved_model
from trainer.model.encoders import build_encoder_unet, set_encoder_trainable
from trainer.model.losses import bce_dice_loss
from trainer.model.metrics import DiceMetric, IoUMetric
from trainer.model.shape import SCRATCH_ENCODER
from trainer.model.unet import build_unet
from trainer.training.callbacks import (
    Checkpointer,
    CosineSchedule,
    EpochLogger,
    HistoryWriter,
    MaskPreview,
    ProgressiveSize,
    RunState,
    StopRequest,
    TimeBudget,
    TrainingInterruptedError,
    load_best_weights,
    restore_checkpoint,
    write_history,
)
from trainer.training.config import TrainConfig, build_parser, format_size
from trainer.training.debugger import REPORT_NAME, Debugger, DebuggerConfig
from trainer.training.log_lines import PARTIAL_METRIC
from trainer.training.runtime import make_strategy, use_mixed_precision

# Monitored by early stopping and learning-rate reduction: smoother than val_dice epoch to epoch.
PLATEAU_METRIC = "val_loss"


@dataclass(frozen=True)
class TrainResult:
    """How a run ended, for the caller (and the tests)."""

    epochs_completed: int
    stop_reason: str  # completed | early_stopping | time_budget | interrupted | already_finished
    best_val_dice: float | None
    export_dir: Path | None
    partial: bool = False  # stopped by a signal: the export holds fewer epochs than asked for


def _unet(config: TrainConfig, *, any_size: bool = False) -> keras.Model:
    """The from-scratch U-Net, or the U-Net on a pretrained backbone (``--encoder``), uncompiled.

    ``any_size``: height and width left open, for progressive resizing's two photo sizes (the
    weights are the same at any size); else ``--image-size``, which the summary and export show.
    """
    m = config.model
    input_shape = (None, None, 3) if any_size else (*m.image_size, 3)
    decoder: dict[str, Any] = {
        "base_filters": m.base_filters,
        "batch_norm": m.batch_norm,
        "dropout": m.dropout,
        "upsampling": m.upsampling,
    }
    if m.encoder == SCRATCH_ENCODER:
        return build_unet(input_shape=input_shape, depth=m.depth, **decoder)
    return build_encoder_unet(
        encoder=m.encoder,
        input_shape=input_shape,
        encoder_weights=m.encoder_weights,
        alpha=m.encoder_alpha,
        **decoder,
    )


def describe_model(config: TrainConfig) -> str:
    """``U-Net depth 4, base 16`` or ``U-Net on resnet50 (imagenet weights), decoder base 16``."""
    m = config.model
    if m.encoder == SCRATCH_ENCODER:
        return f"U-Net depth {m.depth}, base {m.base_filters}"
    alpha = f" alpha {m.encoder_alpha:g}" if m.encoder_alpha != 1.0 else ""
    return f"U-Net on {m.encoder}{alpha} ({m.encoder_weights} weights), decoder base {m.base_filters}"


def build_model(config: TrainConfig, *, encoder_frozen: bool = False) -> keras.Model:
    """The U-Net for ``config``, compiled with Adam, BCE + Dice and the per-image metrics.

    ``encoder_frozen``: a pretrained backbone gets no gradients (see :func:`compile_model`).
    """
    model = _unet(config, any_size=config.progressive)
    if config.model.encoder != SCRATCH_ENCODER:
        set_encoder_trainable(model, not encoder_frozen)
    compile_model(model, config)
    return model


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """Compile with a fresh Adam: after (un)freezing the encoder too, whose variables the optimizer
    must then track (Keras builds the step and the optimizer's slots for the trainable set)."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.optimisation.learning_rate),
        loss=bce_dice_loss,
        metrics=[DiceMetric(), IoUMetric()],
        jit_compile=config.runtime.jit,
    )


def training_phases(config: TrainConfig, completed_epochs: int) -> list[tuple[int, bool]]:
    """``[(last epoch, encoder frozen), ...]`` still to train: with ``--freeze-encoder-epochs N``
    epochs 1..N frozen, then the rest unfrozen; one unfrozen phase otherwise."""
    freeze, epochs = config.optimisation.freeze_encoder_epochs, config.stopping.epochs
    phases = []
    if completed_epochs < freeze:
        phases.append((min(freeze, epochs), True))
    if epochs > max(completed_epochs, freeze):
        phases.append((epochs, False))
    return phases


def _training_dataset(config: TrainConfig, global_batch: int, *, small: bool = False) -> tf.data.Dataset:
    """The training photos, augmented and shuffled: at ``--image-size``, or (``small``) at
    ``--progressive-scale``, scaled down or cut out as ``--progressive-mode`` says."""
    size, crop = config.model.image_size, None
    if small and config.pipeline.progressive_mode == "crop":
        crop = config.progressive_size
    elif small:
        size = config.progressive_size
    pipeline = PipelineConfig(
        image_size=size,
        crop_size=crop,
        batch_size=global_batch,
        augment=config.pipeline.augment,
        seed=config.runtime.seed,
        cache=config.pipeline.cache,
        soft_masks=config.pipeline.soft_masks,
    )
    dataset = make_dataset(config.paths.train_dir, pipeline, training=True)
    return _with_length(dataset, config.paths.train_dir, config, global_batch)


def _datasets(
    config: TrainConfig, global_batch: int
) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
    """Training (augmented, shuffled), validation, and the same training photos unaugmented."""
    plain = PipelineConfig(
        image_size=config.model.image_size,
        batch_size=global_batch,
        augment=False,
        soft_masks=config.pipeline.soft_masks,
    )
    return (
        _training_dataset(config, global_batch),
        _with_length(
            make_dataset(config.paths.validation_dir, plain, training=False),
            config.paths.validation_dir,
            config,
            global_batch,
        ),
        make_dataset(config.paths.train_dir, plain, training=False),
    )


def _with_length(
    dataset: tf.data.Dataset, folder: Path, config: TrainConfig, global_batch: int
) -> tf.data.Dataset:
    """Declare the number of batches, which interleaving hides from Keras.

    Keras then shows steps per epoch in its progress bar and does not warn that the "input ran out
    of data" at the end of the first epoch. Workers of a multi-host job each read a shard of the
    files, so there the count would be wrong and is left unknown.
    """
    if config.cluster.multi_worker:
        return dataset
    count = count_examples(folder)
    return dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(count / global_batch)))


def _first_images(dataset: tf.data.Dataset, count: int) -> tuple[tf.Tensor, tf.Tensor] | None:
    """The first ``count`` (image, mask) pairs of a batched dataset as one batch (None if count is 0)."""
    if count <= 0:
        return None
    return next(iter(dataset.unbatch().take(count).batch(count)))


def _schedule_callbacks(config: TrainConfig, start: float) -> dict[str, keras.callbacks.Callback]:
    """The learning-rate callback of ``--lr-schedule`` (by the name its resumable state is saved as)."""
    opt = config.optimisation
    if opt.lr_schedule == "cosine":
        schedule = CosineSchedule(
            config.stopping.epochs,
            opt.learning_rate,
            opt.min_lr,
            max_minutes=config.stopping.max_minutes,
            start_time=start,
        )
        return {"lr_schedule": schedule}
    return {
        "reduce_lr": keras.callbacks.ReduceLROnPlateau(
            monitor=PLATEAU_METRIC,
            factor=opt.lr_factor,
            patience=opt.lr_patience,
            min_lr=opt.min_lr,
            verbose=1,
        )
    }


def _callbacks(
    config: TrainConfig,
    state: RunState,
    stop: StopRequest,
    debugger: Debugger,
    probe: tuple[tf.Tensor, tf.Tensor] | None,
    preview: tuple[tf.Tensor, tf.Tensor] | None,
    start: float,
) -> tuple[
    list[keras.callbacks.Callback],
    list[keras.callbacks.Callback],
    keras.callbacks.EarlyStopping | None,
    TimeBudget | None,
]:
    """The run's callbacks in the order they must see each epoch; those that judge the validation
    loss (early stopping, the plateau schedule); and the two whose outcome matters.

    Debugger rules first (a NaN stops the step before anything is saved), then early stopping and
    the learning-rate schedule, then progressive resizing's switch (which the checkpoint records and
    which corrects the budget's estimate of the next epoch), then the checkpoint (which records their
    counters), then the output.
    Early stopping (``--patience``, 0 = off) stays a guard against a run that has stopped learning:
    with the cosine schedule ``--epochs`` has already shaped the rates of every epoch before it.
    The judges sit out progressive resizing's small part (see ``_train``).
    """
    chief = config.cluster.is_chief
    early_stopping = (
        keras.callbacks.EarlyStopping(monitor=PLATEAU_METRIC, patience=config.stopping.patience)
        if config.stopping.patience > 0
        else None
    )
    resumable = {"early_stopping": early_stopping} if early_stopping is not None else {}
    resumable.update(_schedule_callbacks(config, start))
    budget = TimeBudget(config.stopping.max_minutes, start) if config.stopping.max_minutes > 0 else None
    switch = []
    if config.progressive:
        (height, width), (small_height, small_width) = config.model.image_size, config.progressive_size
        switch.append(
            ProgressiveSize(
                state,
                config.pipeline.progressive_share,
                config.stopping.epochs,
                pixel_ratio=height * width / (small_height * small_width),
                budget=budget,
            )
        )
    callbacks: list[keras.callbacks.Callback] = [
        *debugger.callbacks(probe, bce_dice_loss, state.history),
        *resumable.values(),
        *switch,
        Checkpointer(config.paths.checkpoint_dir, state, stop, resumable, enabled=chief),
        # Keras' own progress output (it would otherwise be appended last), then the tuner's line.
        keras.callbacks.ProgbarLogger(),
        EpochLogger(state, start),
        debugger.metrics_logger(),
    ]
    if chief:
        callbacks += [
            HistoryWriter(state, config.paths.output_data_dir),
            keras.callbacks.TensorBoard(
                str(config.paths.tensorboard_dir),
                write_graph=False,
                profile_batch=config.runtime.profile_batches or 0,
            ),
        ]
        if preview is not None:
            callbacks.append(MaskPreview(*preview, config.paths.tensorboard_dir))
    if budget is not None:
        callbacks.append(budget)
    judges = [c for c in (early_stopping, resumable.get("reduce_lr")) if c is not None]
    return callbacks, judges, early_stopping, budget


def export(model: keras.Model, config: TrainConfig, metadata: dict[str, Any] | None = None) -> Path:
    """Export a plain float32 copy of ``model``: the same weights, no mixed precision, no strategy.

    A graph traced under the float16 policy would run float16 convolutions in a CPU TF Serving
    container (slow where supported at all), and distributed variables belong to the training
    strategy; a fresh copy built outside both serves the same everywhere. Leaves the global dtype
    policy at float32 (training is over). The copy is built from the same flags, ``--encoder-weights``
    included (read again from Keras' cache, then overwritten): Keras' EfficientNet has an input
    scaling layer only when built with ``imagenet``, so the copy must be built the same way.
    """
    keras.mixed_precision.set_global_policy("float32")
    plain = _unet(config)
    plain.set_weights(model.get_weights())
    return export_saved_model(
        plain,
        config.paths.model_dir,
        config.model.image_size,
        metadata=metadata,
        refinement=config.export.refinement,
    )


def train(config: TrainConfig) -> TrainResult:
    """Train (resuming when a checkpoint exists) and export; see the module docstring.

    The SIGTERM handler is installed first and stays until the export is written: a stop during
    start-up or during the export cannot kill the process before it leaves a model.
    """
    stop = StopRequest()
    with stop.installed():
        return _train(config, stop)


def _train(config: TrainConfig, stop: StopRequest) -> TrainResult:
    start = time.monotonic()
    strategy = make_strategy(config.cluster)  # first: a multi-worker strategy must precede other TF work
    keras.utils.set_random_seed(config.runtime.seed)
    mixed = use_mixed_precision(config.runtime.mixed_precision)
    chief = config.cluster.is_chief
    paths = config.paths
    if chief:
        for folder in (paths.checkpoint_dir, paths.output_data_dir, paths.tensorboard_dir):
            folder.mkdir(parents=True, exist_ok=True)
    global_batch = config.optimisation.batch_size * strategy.num_replicas_in_sync
    train_ds, val_ds, plain_train_ds = _datasets(config, global_batch)
    print(
        f"data: {count_examples(config.paths.train_dir)} training photos in {config.paths.train_dir}, "
        f"{count_examples(config.paths.validation_dir)} validation in {config.paths.validation_dir}; "
        f"{strategy.num_replicas_in_sync} replica(s), batch {global_batch}, "
        f"{'mixed float16' if mixed else 'float32'}, XLA {'on' if config.runtime.jit else 'off'}",
        flush=True,
    )

    state = RunState.load(config.paths.checkpoint_dir)
    phases = training_phases(config, state.epoch)
    # A checkpoint is restored into the model as it was saved (frozen or not), so its optimizer
    # state fits; the phase loop below then (un)freezes as the schedule says.
    frozen = state.encoder_frozen if state.checkpoint else bool(phases) and phases[0][1]
    with strategy.scope():
        model = build_model(config, encoder_frozen=frozen)
        if state.checkpoint:
            restore_checkpoint(model, config.paths.checkpoint_dir, state)
            print(f"resuming after epoch {state.epoch} from {config.paths.checkpoint_dir / state.checkpoint}")
    freezing = config.optimisation.freeze_encoder_epochs
    print(
        f"model: {describe_model(config)}, {model.count_params():,} parameters"
        f"{f', encoder frozen for {freezing} epochs' if freezing else ''}, "
        f"{config.optimisation.lr_schedule} learning-rate schedule over {config.stopping.epochs} epochs",
        flush=True,
    )

    interrupted: TrainingInterruptedError | None = None
    if state.stop_reason == "early_stopping" or not phases:
        print(f"training already finished after epoch {state.epoch}: exporting only", flush=True)
        stop_reason = "already_finished"
    else:
        debugger_config = DebuggerConfig()
        debugger = Debugger(
            paths.output_data_dir / REPORT_NAME,
            debugger_config,
            resume=state.epoch > 0,
            tensorboard_dir=paths.tensorboard_dir if chief else None,
        )
        callbacks, judges, early_stopping, budget = _callbacks(
            config,
            state,
            stop,
            debugger,
            _first_images(plain_train_ds, debugger_config.probe_images),
            _first_images(val_ds, config.runtime.preview_images),
            start,
        )
        small_ds = None
        if config.progressive and not state.full_size:
            small_ds = _training_dataset(config, global_batch, small=True)
            options, full = config.pipeline, format_size(config.model.image_size)
            how = "photos" if options.progressive_mode == "resize" else f"crops of the {full} photos"
            print(
                f"progressive resizing: {format_size(config.progressive_size)} {how} for the first "
                f"{options.progressive_share:.0%} of the run, then {full}",
                flush=True,
            )

        def stopping() -> bool:
            ended_early = early_stopping is not None and early_stopping.stopped_epoch > 0
            return ended_early or (budget is not None and budget.exhausted)

        try:
            for last_epoch, phase_frozen in phases:
                if phase_frozen != frozen:
                    frozen = phase_frozen
                    with strategy.scope():
                        set_encoder_trainable(model, not frozen)
                        compile_model(model, config)
                    print(f"encoder {'frozen' if frozen else 'unfrozen'} from epoch {state.epoch + 1}")
                state.encoder_frozen = frozen  # recorded with every checkpoint of this phase
                # Twice when progressive resizing switches to full size within this phase.
                # The small part's validation (at full size) judges nothing: the model sees the cars
                # larger there than it trains on, so val_loss swings and grows until the switch,
                # and early stopping or the plateau schedule would end the run or cut the rate on it.
                while True:
                    small = small_ds is not None and not state.full_size
                    model.fit(
                        small_ds if small else train_ds,
                        validation_data=val_ds,
                        initial_epoch=state.epoch,
                        epochs=last_epoch,
                        callbacks=[c for c in callbacks if not (small and c in judges)],
                        shuffle=False,  # the pipeline shuffles; Keras cannot shuffle a tf.data.Dataset
                        verbose=config.runtime.verbosity,
                    )
                    if not (small and state.full_size) or state.epoch >= last_epoch or stopping():
                        break
                    print(
                        f"progressive resizing: {format_size(config.model.image_size)} photos from "
                        f"epoch {state.epoch + 1}",
                        flush=True,
                    )
                if stopping():
                    break
        except TrainingInterruptedError as err:
            interrupted = err
            print(
                f"interrupted: {err}; exporting now, rerun with the same checkpoint folder to resume",
                flush=True,
            )
        finally:
            debugger.close()
        if interrupted is not None:
            stop_reason = "interrupted"
        elif early_stopping is not None and early_stopping.stopped_epoch > 0:
            stop_reason = state.stop_reason = "early_stopping"
            if chief:
                state.save(config.paths.checkpoint_dir)
        else:
            stop_reason = "time_budget" if budget is not None and budget.exhausted else "completed"

    if not chief:
        return TrainResult(state.epoch, stop_reason, state.best_value, None, interrupted is not None)
    write_history(state.history, config.paths.output_data_dir)
    weights = "best_checkpoint" if load_best_weights(model, config.paths.checkpoint_dir) else "current"
    if weights == "best_checkpoint":
        # Tuners (SageMaker's and the local one) take the LAST val_dice in the log as the objective:
        # this line makes that the score of the weights actually exported, not of the last epoch.
        print(f"exporting the best epoch ({state.best_epoch}): val_dice={state.best_value:.4f}", flush=True)
    else:
        print("exporting the current weights: no epoch has finished yet", flush=True)
    metadata = run_metadata(config, state, stop_reason, weights, interrupted, stop.signal)
    export_dir = export(model, config, metadata)
    # Scraped by the metric definitions: a stopped job's FinalMetricDataList says its model is partial.
    print(f"{PARTIAL_METRIC}={int(metadata['partial'])}", flush=True)
    minutes = (time.monotonic() - start) / 60
    print(
        f"done ({stop_reason}) after {state.epoch} epochs in {minutes:.1f} min: "
        f"{'PARTIAL ' if metadata['partial'] else ''}SavedModel {export_dir}, "
        f"curves and reports in {paths.output_data_dir}, TensorBoard logs in {paths.tensorboard_dir}",
        flush=True,
    )
    return TrainResult(state.epoch, stop_reason, state.best_value, export_dir, metadata["partial"])


def run_metadata(
    config: TrainConfig,
    state: RunState,
    stop_reason: str,
    weights: str,
    interrupted: TrainingInterruptedError | None,
    signum: int | None,
) -> dict[str, Any]:
    """What ``assets.extra/training-metadata.json`` says about the export (see trainer.model_metadata)."""
    partial = interrupted is not None
    return {
        "partial": partial,
        "reason": signal.Signals(signum).name if partial and signum else stop_reason,
        "stop_reason": stop_reason,
        "weights": weights,  # best_checkpoint: the best val_dice epoch; current: no epoch had finished
        "epochs_completed": state.epoch,
        "epochs_planned": config.stopping.epochs,
        "best_epoch": state.best_epoch or None,
        "val_dice": state.best_value,
        "stopped_in_epoch": (interrupted.epoch or None) if interrupted else None,
        "batches_into_epoch": interrupted.batches if interrupted else None,
        "lr_schedule": config.optimisation.lr_schedule,
        "encoder": config.model.encoder,
        "image_size": list(config.model.image_size),
        "edge_refinement": asdict(config.export.refinement),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _command(args: argparse.Namespace) -> int:
    train(TrainConfig.from_args(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train and export; exit 0 on success or a SIGTERM stop (a partial export), 1 on divergence, 2 on
    bad input."""
    return run_command(build_parser(), _command, argv, ignore_unknown=True)


if __name__ == "__main__":
    sys.exit(main())
