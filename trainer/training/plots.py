"""Training curves as a PNG: the first thing a person opens after a run (or during one)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from trainer.atomic import atomic_path

# (panel title, metric) pairs; each panel draws the training metric and its val_ twin.
PANELS = (("loss (BCE + soft Dice)", "loss"), ("mean Dice per image", "dice"))


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Write loss and Dice per epoch, training and validation, to ``path`` (replaced whole)."""
    path = Path(path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4), constrained_layout=True)
    for ax, (title, key) in zip(axes, PANELS, strict=True):
        for name, style in ((key, "-o"), (f"val_{key}", "-s")):
            values = history.get(name, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.has_data():
            ax.legend()
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Light grid on every panel, then ``fig`` written to ``path`` whole (atomically) and closed.

    Every chart the project writes (curves, tuning, system monitoring) is read while a job runs,
    so none may be seen half-written.
    """
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path
