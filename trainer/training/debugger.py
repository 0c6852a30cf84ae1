"""Loss-behaviour debugger: Keras callbacks that watch a run for the classic ways training fails.

SageMaker Debugger's built-in rules (loss not decreasing, overfit, vanishing/exploding gradients)
relied on tensor collection that no longer works with tf.keras on TF 2.19, so the same checks live
here as plain callbacks. Each finding is printed the moment it happens (so it shows in the job's
log) and collected in ``debugger-report.json``, which is rewritten whole after every finding and
every epoch, so it is current even when a job is killed.

The findings are also published where SageMaker users look: once per epoch a line of counts
(``debugger_findings=2 debugger_overfitting=1 ... grad_norm=3.1e-01``) that the estimator's metric
definitions scrape into CloudWatch metrics (``trainer.launch.metrics``; a CloudWatch alarm on
``debugger_findings`` can page someone), and TensorBoard scalars and text under ``debugger/``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from trainer.atomic import write_json
from trainer.command import CarvanaError
from trainer.training.log_lines import (
    DEBUGGER_RULES,
    FINDINGS_METRIC,
    GRAD_NORM_METRIC,
    debugger_line,
    rule_metric,
)

REPORT_NAME = "debugger-report.json"


class NonFiniteLossError(CarvanaError, RuntimeError):
    """The training loss became NaN or infinite; training stopped at that step."""

    exit_code = 1  # the run diverged: not a usage mistake


@dataclass(frozen=True)
class DebuggerConfig:
    """Thresholds of the rules; the defaults suit a BCE + Dice U-Net trained with Adam."""

    stall_epochs: int = 5  # epochs without a new best training loss before "loss_not_decreasing"
    stall_min_delta: float = 1e-3  # relative improvement that counts as "decreasing"
    overfit_epochs: int = 3  # consecutive epochs of val_loss up while loss goes down
    vanishing_norm: float = 1e-7  # global gradient norm below this: gradients vanished
    exploding_norm: float = 1e3  # ... above this: gradients exploded
    probe_images: int = 4  # images in the fixed batch the gradient norm is measured on


@dataclass(frozen=True)
class Finding:
    """One rule firing: what, when, and the numbers behind it."""

    rule: str
    epoch: int
    message: str
    details: dict[str, Any]
    time: float


class Debugger:
    """Collects findings and gradient norms and keeps ``debugger-report.json`` up to date."""

    def __init__(
        self,
        report_path: str | Path,
        config: DebuggerConfig,
        *,
        resume: bool = False,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        self.report_path = Path(report_path)
        self.config = config
        self.findings: list[dict[str, Any]] = []
        self.gradient_norms: list[dict[str, Any]] = []
        # TensorBoard: scalars and the findings' text under <tensorboard_dir>/debugger (None: no writer).
        self.writer = None
        if tensorboard_dir:
            self.writer = tf.summary.create_file_writer(str(Path(tensorboard_dir) / "debugger"))
        if resume and self.report_path.is_file():
            # A resumed run continues the interrupted run's report rather than starting over.
            previous = json.loads(self.report_path.read_text())
            self.findings = list(previous.get("findings", []))
            self.gradient_norms = list(previous.get("gradient_norms", []))

    def record(self, rule: str, epoch: int, message: str, **details: Any) -> None:
        """Log a finding now and add it to the report."""
        finding = Finding(rule=rule, epoch=epoch, message=message, details=details, time=time.time())
        self.findings.append(asdict(finding))
        print(f"debugger: [{rule}] epoch {epoch}: {message}", flush=True)
        if self.writer is not None:
            with self.writer.as_default():
                tf.summary.text("debugger/finding", f"**{rule}** (epoch {epoch}): {message}", step=epoch)
            self.writer.flush()
        self.write()

    def record_gradient_norm(self, epoch: int, norm: float) -> None:
        self.gradient_norms.append({"epoch": epoch, "global_norm": norm})

    def publish(self, epoch: int) -> None:
        """Print the metrics line and write the same numbers to TensorBoard, for ``epoch``."""
        norm = self.gradient_norms[-1]["global_norm"] if self.gradient_norms else None
        print(debugger_line(self.findings, norm), flush=True)
        if self.writer is None:
            return
        with self.writer.as_default():
            tf.summary.scalar(f"debugger/{FINDINGS_METRIC}", len(self.findings), step=epoch)
            for rule in DEBUGGER_RULES:
                count = sum(f["rule"] == rule for f in self.findings)
                tf.summary.scalar(f"debugger/{rule_metric(rule)}", count, step=epoch)
            if norm is not None and math.isfinite(norm):
                tf.summary.scalar(f"debugger/{GRAD_NORM_METRIC}", norm, step=epoch)
        self.writer.flush()

    def metrics_logger(self) -> keras.callbacks.Callback:
        """The callback publishing the metrics once per epoch (after the tuner's epoch line)."""
        return MetricsPublisher(self)

    def close(self) -> None:
        """Write the report a last time and close the TensorBoard writer."""
        self.write()
        if self.writer is not None:
            self.writer.close()

    def rules_fired(self) -> list[str]:
        return [finding["rule"] for finding in self.findings]

    def write(self) -> Path:
        report = {
            "status": "findings" if self.findings else "ok",
            "findings": self.findings,
            "gradient_norms": self.gradient_norms,
            "rules": asdict(self.config),
        }
        write_json(self.report_path, report)  # NaN/inf norms stay (json's default allow_nan)
        return self.report_path

    def callbacks(
        self,
        probe: tuple[tf.Tensor, tf.Tensor] | None,
        loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        history: Mapping[str, Sequence[float]] | None = None,
    ) -> list[keras.callbacks.Callback]:
        """All the rules as callbacks; ``history`` seeds them when a run resumes."""
        history = history or {}
        rules: list[keras.callbacks.Callback] = [
            NonFiniteLoss(self),
            LossNotDecreasing(self, history.get("loss", ())),
            Overfitting(self, history.get("loss", ()), history.get("val_loss", ())),
        ]
        if probe is not None:
            rules.append(GradientNorm(self, probe, loss_fn))
        rules.append(ReportWriter(self))
        return rules


class NonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite (nothing after it is useful)."""

    def __init__(self, debugger: Debugger) -> None:
        super().__init__()
        self.debugger = debugger
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            message = f"training loss is {loss} at step {batch + 1}: stopping"
            self.debugger.record("nonfinite_loss", self.epoch, message, step=batch + 1, loss=str(loss))
            raise NonFiniteLossError(
                f"training diverged at epoch {self.epoch}: {message}; see the debugger report"
            )


class LossNotDecreasing(keras.callbacks.Callback):
    """Fires when the best training loss of the last N epochs is no better than the best before them."""

    def __init__(self, debugger: Debugger, losses: Sequence[float] = ()) -> None:
        super().__init__()
        self.debugger = debugger
        self.losses = list(losses)
        # Index of the first epoch of the window being judged (moves on after each finding).
        self.window_start = 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.losses.append(float((logs or {}).get("loss", math.nan)))
        n = self.debugger.config.stall_epochs
        if len(self.losses) - self.window_start < n:
            return
        before = min(self.losses[: len(self.losses) - n])
        recent = min(self.losses[-n:])
        if recent > before - self.debugger.config.stall_min_delta * abs(before):
            self.debugger.record(
                "loss_not_decreasing",
                epoch + 1,
                f"best training loss of the last {n} epochs {recent:.4f} is no lower than the earlier "
                f"best {before:.4f}",
                recent_best=recent,
                earlier_best=before,
                window=n,
            )
            self.window_start = len(self.losses)


class Overfitting(keras.callbacks.Callback):
    """Fires when val_loss has risen while training loss fell, N epochs running."""

    def __init__(
        self, debugger: Debugger, losses: Sequence[float] = (), val_losses: Sequence[float] = ()
    ) -> None:
        super().__init__()
        self.debugger = debugger
        self.previous = (losses[-1], val_losses[-1]) if losses and val_losses else None
        self.streak = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "val_loss" not in logs:
            return
        current = (float(logs["loss"]), float(logs["val_loss"]))
        if self.previous is not None and current[0] < self.previous[0] and current[1] > self.previous[1]:
            self.streak += 1
        else:
            self.streak = 0
        self.previous = current
        if self.streak == self.debugger.config.overfit_epochs:
            self.debugger.record(
                "overfitting",
                epoch + 1,
                f"val_loss rose and training loss fell for {self.streak} epochs in a row "
                f"(loss {current[0]:.4f}, val_loss {current[1]:.4f})",
                loss=current[0],
                val_loss=current[1],
                epochs=self.streak,
            )


class GradientNorm(keras.callbacks.Callback):
    """Measures the global gradient norm on one fixed batch after each epoch.

    A fixed batch (and inference-mode batch norm and dropout, so measuring changes nothing) makes
    the numbers comparable from epoch to epoch; the norm of all gradients together is what
    vanishes or explodes first.
    """

    def __init__(
        self,
        debugger: Debugger,
        probe: tuple[tf.Tensor, tf.Tensor],
        loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    ) -> None:
        super().__init__()
        self.debugger = debugger
        self.images, self.masks = probe
        self.loss_fn = loss_fn

    def global_norm(self) -> float:
        with tf.GradientTape() as tape:
            logits = self.model(self.images, training=False)
            loss = tf.reduce_mean(self.loss_fn(self.masks, logits))
        grads = tape.gradient(loss, self.model.trainable_variables)
        return float(tf.linalg.global_norm([g for g in grads if g is not None]))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        norm = self.global_norm()
        self.debugger.record_gradient_norm(epoch + 1, norm)
        config = self.debugger.config
        if not math.isfinite(norm) or norm > config.exploding_norm:
            self.debugger.record(
                "exploding_gradients",
                epoch + 1,
                f"global gradient norm {norm:.3g} > {config.exploding_norm:g}",
                global_norm=norm,
            )
        elif norm < config.vanishing_norm:
            self.debugger.record(
                "vanishing_gradients",
                epoch + 1,
                f"global gradient norm {norm:.3g} < {config.vanishing_norm:g}",
                global_norm=norm,
            )


class ReportWriter(keras.callbacks.Callback):
    """Rewrites the report after every epoch (gradient norms) and at the end of training."""

    def __init__(self, debugger: Debugger) -> None:
        super().__init__()
        self.debugger = debugger

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.debugger.write()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.debugger.write()


class MetricsPublisher(keras.callbacks.Callback):
    """Publishes the debugger's counts and the gradient norm after each epoch (:meth:`Debugger.publish`)."""

    def __init__(self, debugger: Debugger) -> None:
        super().__init__()
        self.debugger = debugger

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.debugger.publish(epoch + 1)
