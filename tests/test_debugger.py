"""The loss-behaviour debugger on real (tiny) Keras training runs: each rule fires and is reported."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from trainer.model.losses import bce_dice_loss
from trainer.model.unet import build_unet
from trainer.training.debugger import REPORT_NAME, Debugger, DebuggerConfig, NonFiniteLossError, Overfitting


def tiny_model(learning_rate: float = 1e-2) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_unet(input_shape=(16, 16, 3), depth=1, base_filters=2)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bce_dice_loss)
    return model


def tiny_data(count: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((count, 16, 16, 3), dtype=np.float32)
    return images, (images[..., :1] > 0.5).astype(np.float32)


def fit(model, debugger, images, masks, epochs: int) -> None:
    callbacks = debugger.callbacks((images[:2], masks[:2]), bce_dice_loss)
    model.fit(images, masks, batch_size=2, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def read_report(tmp_path):
    return json.loads((tmp_path / REPORT_NAME).read_text())


def test_nan_loss_stops_training_at_once_and_is_reported(tmp_path, capsys):
    images, masks = tiny_data()
    images[4] = np.nan  # the third batch of two
    debugger = Debugger(tmp_path / REPORT_NAME, DebuggerConfig())
    with pytest.raises(NonFiniteLossError, match="epoch 1: training loss is nan at step 3"):
        fit(tiny_model(), debugger, images, masks, epochs=3)
    report = read_report(tmp_path)
    assert report["status"] == "findings"
    (finding,) = report["findings"]
    assert finding["rule"] == "nonfinite_loss"
    assert finding["epoch"] == 1 and finding["details"]["step"] == 3
    assert "debugger: [nonfinite_loss] epoch 1" in capsys.readouterr().out


def test_loss_that_does_not_decrease_is_reported(tmp_path):
    images, masks = tiny_data()
    debugger = Debugger(tmp_path / REPORT_NAME, DebuggerConfig(stall_epochs=2))
    # Learning rate 0: the weights never move, so the training loss stays where it started.
    fit(tiny_model(learning_rate=0.0), debugger, images, masks, epochs=3)
    report = read_report(tmp_path)
    assert [f["rule"] for f in report["findings"]] == ["loss_not_decreasing"]
    assert report["findings"][0]["epoch"] == 3
    assert [n["epoch"] for n in report["gradient_norms"]] == [1, 2, 3]


def test_a_learning_model_raises_no_findings(tmp_path):
    images, masks = tiny_data()
    debugger = Debugger(tmp_path / REPORT_NAME, DebuggerConfig(stall_epochs=2))
    fit(tiny_model(), debugger, images, masks, epochs=3)
    report = read_report(tmp_path)
    assert report["status"] == "ok" and report["findings"] == []
    norms = [n["global_norm"] for n in report["gradient_norms"]]
    assert len(norms) == 3 and all(0 < n < 1e3 for n in norms)


def test_gradient_norm_thresholds(tmp_path):
    images, masks = tiny_data()
    exploding = Debugger(tmp_path / "exploding" / REPORT_NAME, DebuggerConfig(exploding_norm=1e-12))
    fit(tiny_model(), exploding, images, masks, epochs=1)
    assert exploding.rules_fired() == ["exploding_gradients"]
    vanishing = Debugger(tmp_path / "vanishing" / REPORT_NAME, DebuggerConfig(vanishing_norm=1e12))
    fit(tiny_model(), vanishing, images, masks, epochs=1)
    assert vanishing.rules_fired() == ["vanishing_gradients"]


def test_overfitting_fires_after_n_epochs_of_diverging_curves(tmp_path):
    debugger = Debugger(tmp_path / REPORT_NAME, DebuggerConfig(overfit_epochs=2))
    rule = Overfitting(debugger)
    curve = [(0.5, 0.50), (0.4, 0.45), (0.3, 0.47), (0.2, 0.49), (0.1, 0.52)]
    for epoch, (loss, val_loss) in enumerate(curve):
        rule.on_epoch_end(epoch, {"loss": loss, "val_loss": val_loss})
    (finding,) = read_report(tmp_path)["findings"]
    assert finding["rule"] == "overfitting" and finding["epoch"] == 4
    assert finding["details"] == {"loss": 0.2, "val_loss": 0.49, "epochs": 2}


def test_a_resumed_run_keeps_the_earlier_findings(tmp_path):
    first = Debugger(tmp_path / REPORT_NAME, DebuggerConfig())
    first.record("overfitting", 4, "val_loss rose")
    resumed = Debugger(tmp_path / REPORT_NAME, DebuggerConfig(), resume=True)
    resumed.record("loss_not_decreasing", 9, "flat")
    assert [f["rule"] for f in read_report(tmp_path)["findings"]] == ["overfitting", "loss_not_decreasing"]
    fresh = Debugger(tmp_path / REPORT_NAME, DebuggerConfig())
    assert fresh.findings == []
