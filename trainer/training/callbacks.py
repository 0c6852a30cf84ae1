"""Keras callbacks of the training entry point: progress lines, checkpoints, SIGTERM, time budget.

A SageMaker spot job can be stopped at any moment (SIGTERM, then a short grace period) and started
again later with the same checkpoint folder, so the run's whole state lives in that folder: the
newest full model (weights *and* optimizer state) as ``.keras``, the best weights so far, and a
small ``state.json`` naming them, with the epoch count, the metric history and the counters of
early stopping and learning-rate reduction. Each file is written under a temporary name and
renamed, and ``state.json`` is renamed last, so a kill at any instant leaves a consistent state.

A stop (SIGTERM) ends ``fit`` at the next batch boundary, after that checkpoint; the entry point
then exports the best weights so far, marked partial, within SageMaker's 120 s grace period.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.atomic import atomic_path, write_json
from trainer.command import CarvanaError
from trainer.training.plots import plot_training_curves

STATE_NAME = "state.json"
BEST_WEIGHTS_NAME = "best.weights.h5"
CHECKPOINT_PREFIX = "ckpt-"
# The metric that picks the best weights (the tuner's objective and the competition's metric).
BEST_METRIC = "val_dice"
# Counters of Keras' EarlyStopping / ReduceLROnPlateau that must survive a restart.
RESUMABLE_ATTRIBUTES = ("wait", "best", "best_epoch", "cooldown_counter")


class CheckpointError(CarvanaError, ValueError):
    """The checkpoint folder holds a state that cannot be resumed; the message names the file."""


class TrainingInterruptedError(Exception):
    """Raised (after saving a checkpoint) to leave ``fit`` at once when a stop signal arrived.

    ``epoch`` is the 1-based epoch that was running and ``batches`` the batches of it done (0 when
    the stop came between epochs or before training began).
    """

    def __init__(self, message: str, *, epoch: int = 0, batches: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batches = batches


def _json_number(value: Any) -> Any:
    """NumPy scalars as plain Python numbers, which JSON can hold; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class RunState:
    """What a restarted job needs to carry on where the last one stopped."""

    epoch: int = 0  # completed epochs
    checkpoint: str | None = None  # file name of the newest full model in the checkpoint folder
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None  # best val_dice so far
    best_epoch: int = 0
    stop_reason: str | None = None  # "early_stopping" once a run has finished that way
    callback_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The checkpoint was saved with the pretrained encoder frozen (--freeze-encoder-epochs): its
    # optimizer holds the decoder's moments only, so it is restored into a frozen model.
    encoder_frozen: bool = False
    # Progressive resizing (--progressive-share) has moved on to --image-size: a resumed job goes on
    # at full size.
    full_size: bool = False

    @classmethod
    def load(cls, checkpoint_dir: Path) -> RunState:
        """The saved state, or a fresh one when the folder holds no (usable) checkpoint."""
        path = checkpoint_dir / STATE_NAME
        if not path.is_file():
            return cls()
        try:
            state = cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(
                f"{path}: not a training state file ({err}); remove it to start afresh"
            ) from err
        if state.checkpoint and not (checkpoint_dir / state.checkpoint).is_file():
            raise CheckpointError(
                f"{path}: names checkpoint {state.checkpoint}, which is missing from {checkpoint_dir}"
            )
        return state

    def save(self, checkpoint_dir: Path) -> None:
        write_json(checkpoint_dir / STATE_NAME, asdict(self))

    def record(self, epoch: int, logs: dict[str, float]) -> bool:
        """Append one epoch's logs to the history; True when it is the best epoch so far."""
        self.epoch = epoch
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        best = logs.get(BEST_METRIC)
        if best is not None and (self.best_value is None or best > self.best_value):
            self.best_value, self.best_epoch = float(best), epoch
            return True
        return False


class StopRequest:
    """Remembers a SIGTERM so training can stop at the next step boundary, after a checkpoint.

    The handler only sets a flag: saving from inside a signal handler could interleave with a
    checkpoint already being written. It stays installed through the export, so a SIGTERM that
    arrives while the SavedModel is being written cannot kill the process half-way.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum
        print(
            f"received {signal.Signals(signum).name}: stopping at the next batch, saving a checkpoint "
            "and exporting the best weights so far",
            flush=True,
        )

    @contextlib.contextmanager
    def installed(self, signals: Sequence[int] = (signal.SIGTERM,)) -> Iterator[StopRequest]:
        previous = {signum: signal.signal(signum, self) for signum in signals}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class Checkpointer(keras.callbacks.Callback):
    """Saves the full model after every epoch (and on a stop request) and the best weights.

    Place it after EarlyStopping and ReduceLROnPlateau in the callback list: their counters are
    restored after their own ``on_train_begin`` resets them, and saved after they have seen the
    epoch.
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        state: RunState,
        stop: StopRequest,
        resumable: dict[str, keras.callbacks.Callback],
        *,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.state = state
        self.stop = stop
        self.resumable = resumable
        # Only the chief of a multi-worker job writes; the others keep the state in memory.
        self.enabled = enabled
        self.epoch = 0  # 1-based epoch running now
        self.batches = 0  # batches of it done

    def on_train_begin(self, logs: dict | None = None) -> None:
        for name, callback in self.resumable.items():
            for attribute, value in self.state.callback_state.get(name, {}).items():
                setattr(callback, attribute, value)
        self._stop_if_requested()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.batches = epoch + 1, 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches = batch + 1
        self._stop_if_requested()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._stop_if_requested()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        if not math.isfinite(logs.get("loss", math.nan)):
            return  # never checkpoint diverged weights over good ones
        is_best = self.state.record(epoch + 1, logs)
        self.state.callback_state = {
            name: {
                attribute: _json_number(getattr(callback, attribute))
                for attribute in RESUMABLE_ATTRIBUTES
                if hasattr(callback, attribute)
            }
            for name, callback in self.resumable.items()
        }
        if is_best and self.enabled:
            with atomic_path(self.checkpoint_dir / BEST_WEIGHTS_NAME) as tmp:
                self.model.save_weights(tmp)
        self.save()
        self.batches = 0  # between epochs: a stop now loses nothing of this one
        self.epoch = epoch + 1
        self._stop_if_requested()

    def save(self) -> None:
        """Write the model as it is now and a state naming it, then drop older checkpoints."""
        if not self.enabled:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        name = f"{CHECKPOINT_PREFIX}{step:09d}.keras"
        with atomic_path(self.checkpoint_dir / name) as tmp:
            self.model.save(tmp)
        self.state.checkpoint = name
        self.state.save(self.checkpoint_dir)
        for old in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*.keras"):
            if old.name != name:
                old.unlink()

    def _stop_if_requested(self) -> None:
        if self.stop.requested:
            # Weights from a part-finished epoch are still better than none; the epoch count stays
            # at the last complete epoch, so the resumed run repeats the unfinished one.
            self.save()
            where = f" ({self.batches} batches into epoch {self.epoch})" if self.batches else ""
            raise TrainingInterruptedError(
                f"stopped by signal after {self.state.epoch} complete epochs{where}; "
                f"checkpoint {self.checkpoint_dir / (self.state.checkpoint or '')}",
                epoch=self.epoch if self.batches else 0,
                batches=self.batches,
            )


def restore_checkpoint(model: keras.Model, checkpoint_dir: Path, state: RunState) -> None:
    """Load the newest checkpoint's weights and optimizer state into a freshly compiled model.

    The model is rebuilt from the current flags rather than deserialised, so XLA, mixed precision
    and the distribution strategy follow this run's settings; the optimizer is built first so
    its slots exist to receive the saved moments and step count.
    """
    if not state.checkpoint:
        return
    model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint_dir / state.checkpoint)


def load_best_weights(model: keras.Model, checkpoint_dir: Path) -> bool:
    """Put the best epoch's weights (by val_dice) into ``model``; False when none were saved."""
    path = checkpoint_dir / BEST_WEIGHTS_NAME
    if not path.is_file():
        return False
    model.load_weights(path)
    return True


def epoch_line(epoch: int, logs: dict[str, float]) -> str:
    """The fixed per-epoch line the hyperparameter tuner scrapes (4 decimals, fixed key order)."""
    values = " ".join(
        f"{key}={logs.get(key, math.nan):.4f}" for key in ("loss", "dice", "val_loss", "val_dice")
    )
    return f"epoch={epoch} {values}"


class EpochLogger(keras.callbacks.Callback):
    """Prints the tuner's epoch line and, under it, a human summary without ``key=value`` pairs.

    The summary avoids ``=`` so no tuner regex (``loss=``, ``val_dice=``) can match it by accident.
    """

    def __init__(self, state: RunState, start_time: float) -> None:
        super().__init__()
        self.state = state
        self.start_time = start_time

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(epoch_line(epoch + 1, logs or {}), flush=True)
        minutes = (time.monotonic() - self.start_time) / 60
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        best = ""
        if self.state.best_value is not None:
            best = f", best val_dice {self.state.best_value:.4f} at epoch {self.state.best_epoch}"
        print(f"  {minutes:.1f} min in all, learning rate {learning_rate:.2e}{best}", flush=True)


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites ``history.csv`` and ``training-curves.png`` after each epoch (whole run, resumes too)."""

    def __init__(self, state: RunState, output_data_dir: Path) -> None:
        super().__init__()
        self.state = state
        self.output_data_dir = output_data_dir

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        write_history(self.state.history, self.output_data_dir)


def write_history(history: dict[str, list[float]], output_data_dir: Path) -> None:
    """``history.csv`` (one row per epoch) and ``training-curves.png`` from the run's history."""
    if not history:
        return
    keys = sorted(history)
    rows = zip(*(history[key] for key in keys), strict=False)
    with atomic_path(output_data_dir / "history.csv") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        writer.writerows([index, *(f"{v:.6g}" for v in row)] for index, row in enumerate(rows, start=1))
    plot_training_curves(history, output_data_dir / "training-curves.png")


class TimeBudget(keras.callbacks.Callback):
    """Stops training at an epoch end once the next epoch would not finish within ``max_minutes``.

    The budget is meant to end a job before SageMaker's MaxRuntimeInSeconds does (the launcher
    derives it from ``max_run``), with time left to export: so it stops when the time used plus
    the longest epoch so far would cross it, not only after an epoch has crossed it.
    """

    def __init__(self, max_minutes: float, start_time: float) -> None:
        super().__init__()
        self.max_minutes = max_minutes
        self.start_time = start_time
        self.exhausted = False
        self.epoch_start = start_time
        self.longest_epoch_min = 0.0
        self._new_size = False  # from expect_longer_epochs until the next epoch starts

    def expect_longer_epochs(self, ratio: float) -> None:
        """The coming epochs will take about ``ratio`` times the longest so far (progressive
        resizing's switch to full-size photos): estimate the next one that way, then time the
        longer epochs afresh. The guess scales the slowest small epoch, a busy moment of a shared
        machine among them (2.5 min where the others took 1.4), and kept as a floor it ended runs
        an epoch early."""
        self.longest_epoch_min *= ratio
        self._new_size = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_start = time.monotonic()
        if self._new_size:  # the guess judged the last small epoch's end; from here, measurements
            self.longest_epoch_min, self._new_size = 0.0, False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        minutes = (now - self.start_time) / 60
        self.longest_epoch_min = max(self.longest_epoch_min, (now - self.epoch_start) / 60)
        if minutes >= self.max_minutes:
            reason = f"reached after epoch {epoch + 1} ({minutes:.1f} min)"
        elif minutes + self.longest_epoch_min > self.max_minutes:
            reason = (
                f"would be crossed by epoch {epoch + 2} ({minutes:.1f} min used, epochs take up to "
                f"{self.longest_epoch_min:.1f} min)"
            )
        else:
            return
        self.exhausted = True
        self.model.stop_training = True
        print(f"time budget of {self.max_minutes:g} min {reason}: stopping", flush=True)


def run_progress(epochs_done: float, epochs: int, max_minutes: float, start_time: float) -> float:
    """How far through the run it is (1 = the end): epochs done over the ``epochs`` planned or, with
    a wall-clock budget (``max_minutes`` > 0), the minutes since ``start_time`` over the budget,
    whichever is further. The one measure of the learning-rate schedule and of progressive resizing.
    """
    progress = epochs_done / max(epochs, 1)
    if max_minutes > 0:
        progress = max(progress, (time.monotonic() - start_time) / 60 / max_minutes)
    return progress


def cosine_learning_rate(progress: float, initial: float, floor: float) -> float:
    """The rate at ``progress`` (0 = start, 1 = end, clipped) of a cosine decay from ``initial`` to
    ``floor``."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + 0.5 * (initial - floor) * (1 + math.cos(math.pi * progress))


class CosineSchedule(keras.callbacks.Callback):
    """Cosine decay of the learning rate, set before every step, reaching ``floor`` at the run's end.

    The run ends after ``epochs`` epochs or, with a wall-clock budget (``max_minutes`` > 0), when the
    budget runs out, whichever comes first: progress is the larger of the steps done over the steps
    planned and the minutes used over the budget. So ``epochs`` shapes the whole run (a tuner's
    epochs range compares different runs, not one run stopped at different points), and a run that
    the budget stops still gets the schedule's low-rate end, where most of a cosine's gain is made,
    instead of being cut off at a high rate. Minutes count from ``start_time``, the clock of
    :class:`TimeBudget`; a resumed job counts its own minutes again from its start, while its steps
    continue from the checkpoint.
    """

    def __init__(
        self, epochs: int, initial: float, floor: float, *, max_minutes: float = 0.0, start_time: float = 0.0
    ) -> None:
        super().__init__()
        self.epochs = max(epochs, 1)
        self.initial = initial
        self.floor = floor
        self.max_minutes = max_minutes
        self.start_time = start_time
        self.epoch = 0
        self.epoch_rate = initial

    def progress(self, batch: int) -> float:
        """How far through the run the coming step is, from 0 to 1."""
        # A multi-worker job's epochs have no known length (trainer.train): whole epochs count there.
        steps = self.params.get("steps")
        epochs_done = self.epoch + (batch / steps if steps else 0.0)
        return run_progress(epochs_done, self.epochs, self.max_minutes, self.start_time)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        rate = cosine_learning_rate(self.progress(batch), self.initial, self.floor)
        self.model.optimizer.learning_rate = rate
        if batch == 0:
            self.epoch_rate = rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:  # the epoch's first rate, as Keras' LearningRateScheduler logs it
            logs["learning_rate"] = self.epoch_rate


class ProgressiveSize(keras.callbacks.Callback):
    """Ends the small-photo part of progressive resizing at the first epoch end ``share`` through the
    run (:func:`run_progress`), so the entry point fits on ``--image-size`` photos from there.

    It marks ``state.full_size`` before the checkpoint of that epoch is written (place it before the
    Checkpointer), so a job resumed from it carries on at full size. With a wall-clock ``budget``
    the minutes count on its clock, and it is told that the coming epochs take ``pixel_ratio``
    (full-size pixels over small) times longer, so it does not start one it cannot finish.
    """

    def __init__(
        self, state: RunState, share: float, epochs: int, *, pixel_ratio: float, budget: TimeBudget | None
    ) -> None:
        super().__init__()
        self.state = state
        self.share = share
        self.epochs = epochs
        self.pixel_ratio = pixel_ratio
        self.budget = budget

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.state.full_size:
            return
        budget = self.budget
        minutes, start = (budget.max_minutes, budget.start_time) if budget is not None else (0.0, 0.0)
        if run_progress(epoch + 1, self.epochs, minutes, start) < self.share:
            return
        self.state.full_size = True
        self.model.stop_training = True
        if budget is not None:
            budget.expect_longer_epochs(self.pixel_ratio)


class MaskPreview(keras.callbacks.Callback):
    """Logs a few validation photos beside their true and predicted masks to TensorBoard per epoch."""

    def __init__(self, images: tf.Tensor, masks: tf.Tensor, log_dir: Path) -> None:
        super().__init__()
        self.images = images
        self.masks = masks
        self.log_dir = log_dir / "predictions"
        self.writer: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Opened per fit: a frozen-encoder run fits twice (trainer.train) and closes it after each.
        self.writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probabilities = tf.sigmoid(tf.cast(self.model(self.images, training=False), tf.float32))
        # photo | truth | predicted probability, side by side, one picture per photo.
        panels = tf.concat(
            [self.images, tf.image.grayscale_to_rgb(self.masks), tf.image.grayscale_to_rgb(probabilities)],
            axis=2,
        )
        with self.writer.as_default():
            tf.summary.image(
                "validation_masks",
                panels,
                step=epoch + 1,
                max_outputs=len(panels),
                description="photo | true mask | predicted car probability",
            )
        self.writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.writer.close()
