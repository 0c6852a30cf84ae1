"""The training entry point: configuration from flags and SM_* variables, a real short training run
on the synthetic sample, the tuner's epoch line, resuming with a time budget, and SIGTERM."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.model.shape import EdgeRefinement
from trainer.model_metadata import read_metadata
from trainer.train import _datasets, build_model, export, main, train
from trainer.training import callbacks as callbacks_module
from trainer.training.callbacks import (
    CosineSchedule,
    ProgressiveSize,
    RunState,
    TimeBudget,
    cosine_learning_rate,
)
from trainer.training.config import Cluster, ConfigError, parse_config
from trainer.training.runtime import tf_config_for

EPOCH_LINE = re.compile(
    r"^epoch=(\d+) loss=(\d+\.\d{4}) dice=(\d\.\d{4}) val_loss=(\d+\.\d{4}) val_dice=(\d\.\d{4})$"
)
TINY = ["--image-size", "64x96", "--depth", "2", "--batch-size", "4", "--verbose", "2"]


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    """Arguments for a tiny run on ``data`` writing everything under ``out``."""
    return [
        "--data",
        str(data),
        "--model-dir",
        str(out / "model"),
        "--output-data-dir",
        str(out / "output"),
        "--checkpoint-dir",
        str(out / "checkpoints"),
        "--tensorboard-dir",
        str(out / "tensorboard"),
        *TINY,
        *extra,
    ]


def epoch_lines(text: str) -> list[re.Match]:
    return [m for m in map(EPOCH_LINE.match, text.splitlines()) if m]


# --- configuration -----------------------------------------------------------------------------


def test_sagemaker_environment_sets_every_path():
    env = {
        "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
        "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation",
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
        "SM_HOSTS": '["algo-1", "algo-2"]',
        "SM_CURRENT_HOST": "algo-2",
    }
    # What the TF estimator sends: hyperparameters, its own --model_dir, and maybe more.
    argv = [
        "--epochs",
        "12",
        "--jit",
        "true",
        "--augment",
        "false",
        "--model_dir",
        "s3://bucket/job/model",
        "--x",
        "1",
    ]
    config = parse_config(argv, env)
    assert config.paths.train_dir == Path("/opt/ml/input/data/train")
    assert config.paths.validation_dir == Path("/opt/ml/input/data/validation")
    assert config.paths.model_dir == Path("/opt/ml/model")  # the s3:// --model_dir is not a place to write
    assert config.paths.output_data_dir == Path("/opt/ml/output/data")
    assert config.paths.checkpoint_dir == Path("/opt/ml/checkpoints")
    assert config.paths.tensorboard_dir == Path("/opt/ml/output/tensorboard")
    assert (config.stopping.epochs, config.runtime.jit, config.pipeline.augment) == (12, True, False)
    assert config.cluster == Cluster(hosts=("algo-1", "algo-2"), current_host="algo-2")
    assert config.cluster.multi_worker and not config.cluster.is_chief


def test_local_defaults_and_explicit_flags():
    config = parse_config([], {})
    assert config.paths.train_dir == Path("runs/tfrecords/train")
    assert config.paths.model_dir == Path("runs/model")
    assert config.paths.checkpoint_dir == Path("runs/checkpoints")
    model = config.model
    assert (model.image_size, model.depth, model.base_filters) == ((192, 288), 4, 16)
    assert config.pipeline.cache is True
    assert config.export.refinement == EdgeRefinement(radius=2, eps=1e-4)
    assert not parse_config(["--refine-radius", "0"], {}).export.refinement.enabled
    assert not config.cluster.multi_worker and config.cluster.is_chief
    config = parse_config(
        ["--data", "d", "--validation", "v", "--model_dir", "/tmp/m", "--profile-batches", "0"], {}
    )
    assert (config.paths.train_dir, config.paths.validation_dir, config.paths.model_dir) == (
        Path("d/train"),
        Path("v"),
        Path("/tmp/m"),
    )
    assert config.runtime.profile_batches is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image-size", "100x150"], r"--image-size: input size 100x150 does not work with depth 4"),
        (["--epochs", "0"], r"--epochs must be positive, got 0"),
        (["--dropout", "1.5"], r"--dropout must be in \[0, 1\)"),
        (["--progressive-share", "1"], r"--progressive-share must be in \[0, 1\) \(0 = off\), got 1.0"),
        (["--progressive-scale", "1"], r"--progressive-scale must be in \(0, 1\), got 1.0"),
        (
            ["--progressive-share", "0.5", "--progressive-scale", "0.05"],
            r"--progressive-scale: 0.05 x 192x288 is smaller than 16x16, the least the model takes",
        ),
        (["--refine-radius", "-1"], r"--refine-radius must be >= 0 \(0 = off\), got -1"),
        (["--refine-eps", "0"], r"--refine-eps must be positive, got 0.0"),
    ],
)
def test_bad_hyperparameters_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {})


def test_main_reports_bad_input_and_returns_2(tmp_path, capsys):
    assert main(["--image-size", "100x150"]) == 2
    assert "carvana train: error: --image-size: input size 100x150" in capsys.readouterr().err
    assert main(run_args(tmp_path / "missing", tmp_path)) == 2
    assert (
        f"carvana train: error: {tmp_path / 'missing' / 'train'}: no *.tfrecord shards"
        in capsys.readouterr().err
    )


def test_an_unreadable_checkpoint_state_is_reported(sample_tfrecords, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "state.json").write_text('{"epoch": 3, "checkpoint": "ckpt-000000024.keras"}')
    assert main(run_args(sample_tfrecords, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "state.json: names checkpoint ckpt-000000024.keras, which is missing from" in err


def test_tf_config_for_multi_host_jobs():
    config = tf_config_for(Cluster(hosts=("algo-1", "algo-2", "algo-3"), current_host="algo-3"))
    assert config == {
        "cluster": {"worker": ["algo-1:2222", "algo-2:2222", "algo-3:2222"]},
        "task": {"type": "worker", "index": 2},
    }
    with pytest.raises(ConfigError, match="SM_CURRENT_HOST 'algo-9' is not one of SM_HOSTS"):
        Cluster.from_env({"SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-9"})


# --- real training runs ------------------------------------------------------------------------


def test_short_training_run_lowers_the_loss_and_writes_everything(sample_tfrecords, tmp_path, capsys):
    config = parse_config(run_args(sample_tfrecords, tmp_path, "--epochs", "3", "--base-filters", "8"), {})
    result = train(config)
    out = capsys.readouterr().out

    lines = epoch_lines(out)
    assert [int(m[1]) for m in lines] == [1, 2, 3]
    losses = [float(m[2]) for m in lines]
    assert losses[-1] < losses[0]
    assert result.stop_reason == "completed" and result.epochs_completed == 3
    # The tuners score the last val_dice in the log: it must be the exported (best) epoch's.
    last_val_dice = re.findall(r"val_dice=([0-9.]+)", out)[-1]
    assert float(last_val_dice) == round(max(float(m[5]) for m in lines), 4) == round(result.best_val_dice, 4)

    with (tmp_path / "output" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert {"loss", "dice", "iou", "val_loss", "val_dice", "val_iou", "learning_rate"} <= set(rows[0])
    assert (tmp_path / "output" / "training-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "output" / "debugger-report.json").read_text())
    assert [norm["epoch"] for norm in report["gradient_norms"]] == [1, 2, 3]

    tensorboard = tmp_path / "tensorboard"
    assert list((tensorboard / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
    tags = {
        value.tag
        for event_file in tensorboard.glob("*/events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(event_file))
        for value in event.summary.value
    }
    assert {"epoch_loss", "epoch_dice", "validation_masks"} <= tags

    # The exported model answers at the photo's size, with the best epoch's weights.
    assert result.export_dir == tmp_path / "model" / "unet" / "1"
    loaded = tf.saved_model.load(str(result.export_dir))
    masks = loaded.signatures["predict_images"](images=tf.zeros([1, 128, 192, 3]))["mask"]
    assert masks.shape == (1, 128, 192)

    # Resumed with more epochs and a budget already spent: one more epoch, then stop and export.
    more = parse_config(
        [
            *run_args(sample_tfrecords, tmp_path, "--base-filters", "8"),
            "--epochs",
            "6",
            "--max-minutes",
            "0.0001",
        ],
        {},
    )
    resumed = train(more)
    out = capsys.readouterr().out
    assert "resuming after epoch 3" in out
    assert [int(m[1]) for m in epoch_lines(out)] == [4]
    assert "time budget of 0.0001 min reached after epoch 4" in out
    assert resumed.stop_reason == "time_budget" and resumed.epochs_completed == 4
    # The cosine schedule runs over the 3 epochs asked for: 1e-3 at epoch 1, falling, never below min-lr.
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates == pytest.approx([cosine_learning_rate(e / 3, 1e-3, 1e-5) for e in range(3)], rel=1e-4)
    assert rates[0] == pytest.approx(1e-3) and rates[0] > rates[1] > rates[2] > 1e-5
    assert (result.export_dir / "saved_model.pb").is_file()


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes_and_finishes(sample_tfrecords, tmp_path):
    epochs, steps_per_epoch = 6, 8  # 32 training photos, batch 4
    command = [
        sys.executable,
        "-m",
        "trainer.train",
        *run_args(sample_tfrecords, tmp_path, "--epochs", str(epochs), "--base-filters", "4"),
        "--profile-batches",
        "0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")} | {"PYTHONUNBUFFERED": "1"}
    repo = Path(__file__).resolve().parents[1]

    first = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in first.stdout:
        seen.append(line)
        if line.startswith("epoch=2 "):
            first.send_signal(signal.SIGTERM)
            break
    seen.append(first.stdout.read())
    assert first.wait(timeout=120) == 0, "".join(seen)
    first_out = "".join(seen)
    assert "received SIGTERM: stopping at the next batch" in first_out
    assert "interrupted: stopped by signal" in first_out
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert 2 <= state["epoch"] < epochs
    # The stopped run exported the best weights so far, marked partial, and said so in its log.
    assert (tmp_path / "model" / "unet" / "1" / "saved_model.pb").is_file()
    partial = read_metadata(tmp_path / "model")
    assert partial["partial"] is True and partial["reason"] == "SIGTERM"
    assert partial["epochs_completed"] == state["epoch"] and partial["best_epoch"] == state["best_epoch"]
    assert "model_partial=1" in first_out.splitlines()

    second = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming after epoch {state['epoch']}" in second.stdout
    assert [int(m[1]) for m in epoch_lines(second.stdout)] == list(range(state["epoch"] + 1, epochs + 1))
    assert (tmp_path / "model" / "unet" / "1" / "saved_model.pb").is_file()
    complete = read_metadata(tmp_path / "model")
    assert complete["partial"] is False and complete["epochs_completed"] == epochs
    assert complete["edge_refinement"] == {"radius": 2, "eps": 1e-4}
    final = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert final["epoch"] == epochs and len(final["history"]["loss"]) == epochs
    # The optimizer's step count carried over (a fresh optimizer would stop short of every step).
    (checkpoint,) = (tmp_path / "checkpoints").glob("ckpt-*.keras")
    assert int(checkpoint.stem.split("-")[1]) >= epochs * steps_per_epoch
    assert np.isfinite(final["history"]["val_loss"]).all()


def test_epochs_set_the_length_of_the_cosine_schedule():
    """The tuner's epochs range changes every epoch's rate, not just where the run stops."""
    short = [cosine_learning_rate(e / 10, 1e-3, 1e-5) for e in range(10)]
    long = [cosine_learning_rate(e / 40, 1e-3, 1e-5) for e in range(10)]
    assert short[0] == long[0] == pytest.approx(1e-3)
    assert all(s < lg for s, lg in zip(short[1:], long[1:], strict=True))
    assert cosine_learning_rate(1.0, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_learning_rate(0.5, 1e-3, 1e-5) == pytest.approx(5.05e-4)
    assert parse_config([], {}).optimisation.lr_schedule == "cosine"


class _Clock:
    """A stand-in for time.monotonic that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cosine_schedule_reaches_its_floor_by_the_time_budget(monkeypatch):
    """With --max-minutes, the rate follows the clock when the budget ends the run before --epochs:
    step by step, and at its floor by the deadline, so the budget never cuts a run off at a high rate."""
    clock = _Clock()
    monkeypatch.setattr(callbacks_module.time, "monotonic", clock)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    schedule = CosineSchedule(100, 1e-3, 1e-5, max_minutes=10.0, start_time=clock.now)
    schedule.set_model(model)
    schedule.set_params({"steps": 4, "epochs": 100})

    def rate_at(epoch: int, batch: int, minutes: float) -> float:
        clock.now = 1000.0 + 60 * minutes
        if batch == 0:
            schedule.on_epoch_begin(epoch)
        schedule.on_train_batch_begin(batch)
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))

    assert rate_at(0, 0, 0.0) == pytest.approx(1e-3)
    # Epoch 1 of 100, half-way through the 10 minutes: the clock decides (progress 0.5, not 0.01).
    assert rate_at(1, 0, 5.0) == pytest.approx(5.05e-4, rel=1e-5)
    assert rate_at(1, 2, 7.5) == pytest.approx(cosine_learning_rate(0.75, 1e-3, 1e-5), rel=1e-5)
    assert rate_at(2, 0, 10.0) == pytest.approx(1e-5, rel=1e-5)
    assert rate_at(2, 1, 12.0) == pytest.approx(1e-5, rel=1e-5)  # past the budget: the floor
    logs: dict[str, float] = {}
    schedule.on_epoch_end(2, logs)
    assert logs["learning_rate"] == pytest.approx(1e-5, rel=1e-5)  # the epoch's first rate
    # Without a budget only the steps count: step 2 of 4 in epoch 50 of 100 is progress 0.505.
    steps_only = CosineSchedule(100, 1e-3, 1e-5)
    steps_only.set_model(model)
    steps_only.set_params({"steps": 4})
    steps_only.on_epoch_begin(50)
    steps_only.on_train_batch_begin(2)
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rate == pytest.approx(cosine_learning_rate(0.505, 1e-3, 1e-5), rel=1e-5)
    # Epochs of unknown length (a multi-worker job's): whole epochs only, never batches as epochs.
    steps_only.set_params({"steps": None})
    steps_only.on_train_batch_begin(7)
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rate == pytest.approx(cosine_learning_rate(0.5, 1e-3, 1e-5), rel=1e-5)


def test_export_after_mixed_precision_training_is_plain_float32(tmp_path):
    config = parse_config(
        ["--model-dir", str(tmp_path), "--image-size", "32x48", "--depth", "2", "--base-filters", "4"], {}
    )
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trained = build_model(config)
        export_dir = export(trained, config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    graph = tf.saved_model.load(str(export_dir)).signatures["predict_images"].graph.as_graph_def()
    conv_types = {
        tf.dtypes.as_dtype(node.attr["T"].type).name
        for function in graph.library.function
        for node in function.node_def
        if node.op == "Conv2D"
    }
    assert conv_types == {"float32"}


def test_soft_masks_reach_training_and_validation(sample_tfrecords, tmp_path):
    """``--soft-masks true``: the 64x96 targets shrunk from the 128x192 records are the car's
    coverage of each pixel, in training and validation batches alike; by default they are {0, 1}."""
    for flag, soft in (("false", False), ("true", True)):
        config = parse_config(run_args(sample_tfrecords, tmp_path, "--soft-masks", flag), {})
        for dataset in _datasets(config, 4)[:2]:
            masks = np.concatenate([y.numpy() for _, y in dataset.take(2)])
            assert masks.min() == 0.0 and masks.max() == 1.0
            assert np.any((masks > 0) & (masks < 1)) == soft


@pytest.mark.parametrize(
    ("mode", "small"), [("resize", "32x48 photos"), ("crop", "32x48 crops of the 64x96 photos")]
)
def test_progressive_resizing_trains_small_then_full_size_and_resumes_at_full_size(
    sample_tfrecords, tmp_path, capsys, mode, small
):
    """Half the run on 32x48 photos (scaled down or cut out), the rest on 64x96; validation always
    at 64x96; a resumed job goes on at full size."""
    flags = ["--base-filters", "4", "--progressive-share", "0.5", "--progressive-scale", "0.5"]
    flags += ["--progressive-mode", mode]
    result = train(parse_config(run_args(sample_tfrecords, tmp_path, "--epochs", "4", *flags), {}))
    out = capsys.readouterr().out
    assert f"progressive resizing: {small} for the first 50% of the run, then 64x96" in out
    # Epoch 2 ends half-way through the 4 epochs: the switch, recorded with that epoch's checkpoint.
    assert (
        out.index("epoch=2 ")
        < out.index("progressive resizing: 64x96 photos from epoch 3")
        < out.index("epoch=3 ")
    )
    assert [int(m[1]) for m in epoch_lines(out)] == [1, 2, 3, 4]
    assert result.stop_reason == "completed"
    state = json.loads((tmp_path / "checkpoints" / "state.json").read_text())
    assert state["full_size"] is True
    # Exported at --image-size, like any run.
    loaded = tf.saved_model.load(str(result.export_dir))
    assert loaded.signatures["predict_images"](images=tf.zeros([1, 64, 96, 3]))["mask"].shape == (1, 64, 96)

    resumed = train(parse_config(run_args(sample_tfrecords, tmp_path, "--epochs", "6", *flags), {}))
    out = capsys.readouterr().out
    assert "resuming after epoch 4" in out and "progressive resizing" not in out
    assert [int(m[1]) for m in epoch_lines(out)] == [5, 6] and resumed.epochs_completed == 6


def test_early_stopping_judges_only_the_full_size_epochs(sample_tfrecords, tmp_path, capsys):
    """A learning rate too small to change a weight keeps val_loss flat: with --patience 1 a plain
    run would stop at epoch 2. With progressive resizing epochs 1-3 are small and not judged; epoch 4
    is the first judged (the best so far), epoch 5 gains nothing and ends the run."""
    flags = ["--base-filters", "4", "--batch-norm", "false", "--patience", "1"]
    flags += [
        "--learning-rate",
        "1e-12",
        "--min-lr",
        "1e-12",
        "--progressive-share",
        "0.5",
        "--progressive-scale",
        "0.5",
        "--epochs",
        "6",
    ]
    result = train(parse_config(run_args(sample_tfrecords, tmp_path, *flags), {}))
    out = capsys.readouterr().out
    assert "progressive resizing: 64x96 photos from epoch 4" in out
    assert [int(m[1]) for m in epoch_lines(out)] == [1, 2, 3, 4, 5], out
    assert result.stop_reason == "early_stopping"


class _ProgressiveRun:
    """A time budget and the progressive-resizing switch on a hand-moved clock, fed epoch by epoch."""

    def __init__(self, monkeypatch, max_minutes: float, share: float) -> None:
        self.clock = _Clock()
        monkeypatch.setattr(callbacks_module.time, "monotonic", self.clock)
        self.model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        self.state = RunState()
        self.budget = TimeBudget(max_minutes, self.clock.now)
        self.switch = ProgressiveSize(self.state, share, 100, pixel_ratio=2.25, budget=self.budget)
        for callback in (self.switch, self.budget):
            callback.set_model(self.model)

    def epoch(self, index: int, start: float, end: float) -> None:
        """Epoch ``index`` from minute ``start`` to minute ``end`` of the run."""
        self.model.stop_training = False  # as each fit sets it
        self.clock.now = 1000.0 + 60 * start
        self.budget.on_epoch_begin(index)
        self.clock.now = 1000.0 + 60 * end
        self.switch.on_epoch_end(index)
        self.budget.on_epoch_end(index)


def test_progressive_resizing_switches_by_the_clock_and_warns_the_budget(monkeypatch, capsys):
    """With a budget the switch follows the minutes, and the budget expects the full-size epochs to
    take the pixel ratio longer: it stops rather than start one that would cross it."""
    run = _ProgressiveRun(monkeypatch, 10.0, 0.7)
    run.epoch(0, 0.0, 2.0)
    run.epoch(1, 2.0, 4.0)
    assert not run.state.full_size and not run.model.stop_training  # 40 % of the 10 minutes: still small
    run.epoch(2, 4.0, 6.0)
    assert not run.state.full_size  # 60 %
    run.epoch(3, 6.0, 7.5)
    # 75 %: switched. A full-size epoch takes about 2 min x 2.25 = 4.5 min: 7.5 + 4.5 > 10.
    assert run.state.full_size and run.model.stop_training and run.budget.exhausted
    assert "would be crossed by epoch 5 (7.5 min used, epochs take up to 4.5 min)" in capsys.readouterr().out


def test_after_the_switch_the_budget_goes_by_the_timed_full_size_epochs(monkeypatch, capsys):
    """The full-size estimate scales the slowest small epoch (here a 3-minute outlier among 2-minute
    ones: 6.75 min); once a full-size epoch has been timed (4 min), that is what the budget expects,
    so the run gets the epoch the guess would have cost it, and still stops before crossing."""
    run = _ProgressiveRun(monkeypatch, 20.0, 0.5)
    for index, (start, end) in enumerate([(0, 2), (2, 5), (5, 7), (7, 9), (9, 11)]):
        run.epoch(index, start, end)
    assert run.state.full_size and run.budget.longest_epoch_min == pytest.approx(6.75)  # switched at 55 %
    assert not run.budget.exhausted  # 11 + 6.75 <= 20
    run.epoch(5, 11, 15)
    assert not run.budget.exhausted  # 15 + 4 <= 20: the 6.75 guess would have stopped here
    run.epoch(6, 15, 19)
    assert run.budget.exhausted
    assert "would be crossed by epoch 8 (19.0 min used, epochs take up to 4.0 min)" in capsys.readouterr().out
