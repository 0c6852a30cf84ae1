"""The local training job and tuner (local_aws): real jobs of the real entry point, SageMaker-shaped.

Tiny sizes throughout (64x96 photos, a depth-2 U-Net with 4 filters, 1-2 epochs): what is under
test is the container contract (folders, config files, SM_* variables, arguments, artifacts, metric
scraping, SIGTERM and checkpoint sync) and the Optuna study that resumes, not the model's quality.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import tensorflow as tf

from local_aws.training_job import toolkit
from local_aws.training_job.job import load_result, run_job
from local_aws.tuning import tune
from trainer.data.layout import read_photo
from trainer.launch.cli import main as cli_main
from trainer.launch.errors import LaunchError
from trainer.launch.metrics import scrape_metrics
from trainer.launch.search_space import Categorical, Continuous
from trainer.launch.specs import JobResult, JobSpec, TuningSpec
from trainer.model_metadata import read_metadata
from trainer.saved_model_io import open_model, to_mask
from trainer.train import build_model, export
from trainer.training.config import parse_config

tf_summary_iterator = tf.compat.v1.train.summary_iterator

# Fast settings of carvana train: no profiler trace, no TensorBoard image previews.
TINY = {
    "epochs": 1,
    "batch-size": 8,
    "image-size": "64x96",
    "depth": 2,
    "base-filters": 4,
    "profile-batches": "0",
    "preview-images": 0,
}


def _gpus_listed() -> int:
    """GPUs on this machine by ``nvidia-smi -L`` (0 without the tool), to compare SM_NUM_GPUS with."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return len([line for line in listing.splitlines() if line.startswith("GPU ")])


def tiny_job(data: Path, name: str, **hyperparameters) -> JobSpec:
    channels = {"train": str(data / "train"), "validation": str(data / "validation")}
    return JobSpec(job_name=name, channels=channels, hyperparameters={**TINY, **hyperparameters})


@pytest.fixture(scope="module")
def fitted(sample_tfrecords: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[JobResult, str]:
    """One completed local job (shared by the tests reading its folder) and its streamed log."""
    work = tmp_path_factory.mktemp("jobs")
    stream = io.StringIO()
    result = run_job(tiny_job(sample_tfrecords, "carvana-local-1", epochs=2), work, stream=stream)
    return result, stream.getvalue()


def test_fit_leaves_model_tar_in_tf_serving_layout(fitted) -> None:
    result, log = fitted
    assert result.status == "Completed", result.failure_reason
    assert Path(result.model_artifact) == result.job_dir / "output" / "model.tar.gz"
    with tarfile.open(result.model_artifact) as tar:
        names = tar.getnames()
    assert "unet/1/saved_model.pb" in names
    assert "unet/1/variables/variables.index" in names
    assert not any(name.startswith(("/", "./", "model/")) for name in names)  # paths relative to opt/ml/model
    with tarfile.open(result.output_artifact) as tar:
        assert {"history.csv", "training-curves.png"} <= set(tar.getnames())
    # The entry point wrote where the SM_* variables pointed it, inside the job's opt/ml.
    opt_ml = result.job_dir / "opt" / "ml"
    assert (opt_ml / "model" / "unet" / "1" / "saved_model.pb").is_file()
    assert any((opt_ml / "checkpoints").iterdir())
    assert any((opt_ml / "output" / "tensorboard").iterdir())
    assert f"in {opt_ml / 'input' / 'data' / 'train'}" in log


def test_config_files_and_arguments_match_the_container(fitted, sample_tfrecords: Path) -> None:
    result, log = fitted
    config = result.job_dir / "opt" / "ml" / "input" / "config"
    hps = json.loads((config / "hyperparameters.json").read_text())
    # Every value a JSON string, as the SageMaker SDK sends them (strings quoted once more).
    assert {k: v for k, v in hps.items() if not k.startswith("sagemaker_")} == {
        "epochs": "2",
        "batch-size": "8",
        "image-size": '"64x96"',
        "depth": "2",
        "base-filters": "4",
        "profile-batches": '"0"',
        "preview-images": "0",
        "max-minutes": "165.0",
    }  # max_run 3 h - 15 min
    assert json.loads(hps["sagemaker_program"]) == "train.py"
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]
    channels = json.loads((config / "inputdataconfig.json").read_text())
    assert channels["train"]["TrainingInputMode"] == "FastFile"
    channel = result.job_dir / "opt" / "ml" / "input" / "data" / "train"
    assert channel.resolve() == (sample_tfrecords / "train").resolve()
    # The script's command line: sorted --name value pairs, in the staged code folder.
    assert (
        "train.py --base-filters 4 --batch-size 8 --depth 2 --epochs 2 --image-size 64x96 "
        "--max-minutes 165.0 --preview-images 0 --profile-batches 0"
    ) in log
    assert (result.job_dir / "opt" / "ml" / "code" / "trainer" / "train.py").is_file()
    # The job runs the product only: no launcher, nothing that imports the local stand-ins.
    code = result.job_dir / "opt" / "ml" / "code"
    assert not (code / "trainer" / "launch").exists()
    imports_stand_ins = re.compile(r"^\s*(from|import)\s+local_aws\b", re.MULTILINE)
    assert [p for p in code.rglob("*.py") if imports_stand_ins.search(p.read_text())] == []
    assert (code / "trainer" / "wire.py").is_file()


def test_sm_variables_are_set_as_the_toolkit_sets_them(fitted) -> None:
    result, _ = fitted
    layout = toolkit.JobLayout(result.job_dir)
    env = toolkit.container_env(layout, result.job_name)
    opt_ml = result.job_dir / "opt" / "ml"
    assert env["SM_MODEL_DIR"] == str(opt_ml / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(opt_ml / "input" / "data" / "train")
    assert env["SM_CHANNEL_VALIDATION"] == str(opt_ml / "input" / "data" / "validation")
    assert json.loads(env["SM_CHANNELS"]) == ["train", "validation"]
    assert env["SM_OUTPUT_DATA_DIR"] == str(opt_ml / "output" / "data")
    assert json.loads(env["SM_HPS"])["image-size"] == "64x96"
    assert env["SM_HP_EPOCHS"] == "2" and env["SM_HP_IMAGE-SIZE"] == "64x96"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"] and env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_NUM_CPUS"] == str(os.cpu_count())
    assert env["SM_NUM_GPUS"] == str(_gpus_listed())
    assert json.loads(env["SM_USER_ARGS"])[:2] == ["--base-filters", "4"]
    assert env["TRAINING_JOB_NAME"] == "carvana-local-1"


def test_metrics_are_scraped_from_the_log(fitted) -> None:
    result, log = fitted
    epoch_lines = [line for line in log.splitlines() if line.startswith("epoch=")]
    assert len(epoch_lines) == 2 == len(result.history)
    assert [m["epoch"] for m in result.history] == [1.0, 2.0]
    assert result.history[-1] == scrape_metrics(epoch_lines[-1])
    assert 0.0 <= result.final_metrics["val_dice"] <= 1.0
    description = json.loads((result.job_dir / "description.json").read_text())
    assert description["TrainingJobStatus"] == "Completed"
    final = {m["MetricName"]: m["Value"] for m in description["FinalMetricDataList"]}
    assert final == dict(result.final_metrics)
    assert load_result(result.job_dir).model_artifact == result.model_artifact


def test_system_monitoring_report_of_a_real_job(fitted) -> None:
    """SageMaker Profiler's system monitoring, locally: samples of the job's process, a report, a chart."""
    result, log = fitted
    metrics_file = result.job_dir / "profiler-output" / "system" / "system-metrics.jsonl"
    samples = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert len(samples) >= 4  # a job of several seconds, sampled every 500 ms
    assert max(s["cpu_percent"] for s in samples) > 10  # TensorFlow was busy
    assert all(s["rss_mb"] > 0 for s in samples)  # a live process each time (none after it exited)
    assert max(s["rss_mb"] for s in samples) > 200  # once TensorFlow was loaded
    assert [s["elapsed_s"] for s in samples] == sorted(s["elapsed_s"] for s in samples)
    folder = result.job_dir / "rule-output" / "ProfilerReport" / "profiler-output"
    report = json.loads((folder / "profiler-report.json").read_text())
    assert report["samples"] == len(samples) and report["interval_ms"] == 500
    assert report["memory"]["max_rss_mb"] == max(s["rss_mb"] for s in samples)
    assert report["cpu"]["percent_of_one_core"]["max"] == max(s["cpu_percent"] for s in samples)
    assert (folder / "profiler-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"system monitoring report: {folder / 'profiler-report.json'}" in log


def test_debugger_findings_are_training_metrics(fitted) -> None:
    """The loss-behaviour debugger's counts reach the job's metrics the way CloudWatch gets them."""
    result, log = fitted
    lines = [line for line in log.splitlines() if line.startswith("debugger_findings=")]
    assert len(lines) == 2  # one per epoch
    with tarfile.open(result.output_artifact) as archive:
        report = json.loads(archive.extractfile("debugger-report.json").read())
    assert result.final_metrics["debugger_findings"] == len(report["findings"])
    assert result.final_metrics["grad_norm"] == pytest.approx(
        report["gradient_norms"][-1]["global_norm"], rel=1e-3
    )
    assert result.final_metrics["model_partial"] == 0  # it finished: the export is complete
    events = (result.job_dir / "opt" / "ml" / "output" / "tensorboard" / "debugger").glob("events*")
    tags = {
        value.tag
        for event_file in events
        for event in tf_summary_iterator(str(event_file))
        for value in event.summary.value
    }
    assert {"debugger/debugger_findings", "debugger/grad_norm", "debugger/debugger_overfitting"} <= tags


def test_sigterm_mid_epoch_exports_the_best_weights_marked_partial(
    sample_tfrecords: Path, sample_data: Path, tmp_path: Path, capsys
) -> None:
    """MaxRuntimeInSeconds / StopTrainingJob / spot: SIGTERM mid-epoch still leaves a deployable model."""
    stream = io.StringIO()
    # One fit call throughout: progressive resizing's switch after epoch 2 of 4 would start a second
    # one, and the signal would then land before its first batch (a stop between epochs).
    result = run_job(
        tiny_job(sample_tfrecords, "carvana-sigterm-1", epochs=4, **{"progressive-share": 0}),
        tmp_path,
        on_epoch=lambda metrics: metrics["epoch"] >= 2,
        stream=stream,
    )
    log = stream.getvalue()
    assert result.status == "Stopped", log[-3000:]
    assert "interrupted: stopped by signal after 2 complete epochs (1 batches into epoch 3)" in log
    assert result.model_partial is True  # scraped from the log: model_partial=1
    metadata = read_metadata(result.model_artifact)
    assert metadata["partial"] is True and metadata["reason"] == "SIGTERM"
    assert metadata["weights"] == "best_checkpoint"
    assert (metadata["epochs_completed"], metadata["epochs_planned"]) == (2, 4)
    assert (metadata["stopped_in_epoch"], metadata["batches_into_epoch"]) == (3, 1)
    assert metadata["best_epoch"] in (1, 2)
    assert metadata["val_dice"] == pytest.approx(max(m["val_dice"] for m in result.history), abs=1e-4)

    # The checkpoint is kept, so a restart resumes; the same best weights exported the normal way
    # give the partial model's masks pixel for pixel.
    checkpoints = result.job_dir / "opt" / "ml" / "checkpoints"
    assert json.loads((checkpoints / "state.json").read_text())["epoch"] == 2
    config = parse_config(
        [
            "--image-size",
            "64x96",
            "--depth",
            "2",
            "--base-filters",
            "4",
            "--model-dir",
            str(tmp_path / "reference"),
        ],
        {},
    )
    reference = build_model(config)
    reference.load_weights(checkpoints / "best.weights.h5")
    export(reference, config)
    latest = build_model(config)
    (newest,) = checkpoints.glob("ckpt-*.keras")
    latest.load_weights(newest)  # the weights when SIGTERM came, one batch past the last epoch
    photos = [read_photo(path) for path in sorted((sample_data / "train").glob("*.jpg"))[:4]]
    with open_model(result.model_artifact) as partial, open_model(tmp_path / "reference") as best:
        got, want = partial.probabilities(photos), best.probabilities(photos)
    for mine, theirs in zip(got, want, strict=True):
        assert np.array_equal(to_mask(mine), to_mask(theirs))
        np.testing.assert_allclose(mine, theirs, atol=1e-6)
    batch = np.random.default_rng(0).random((4, 64, 96, 3), dtype=np.float32)
    # ... and they are the best epoch's weights, not the last ones.
    assert not np.allclose(latest(batch).numpy(), reference(batch).numpy(), atol=1e-6)

    # carvana deploy takes the stopped job's model and says it is partial.
    capsys.readouterr()
    deploy = ["deploy", "--work", str(tmp_path), "--job-name", "carvana-sigterm-1", "--print-only"]
    assert cli_main(deploy) == 0
    out = capsys.readouterr().out
    assert "its model is PARTIAL" in out and "serve --model" in out


def test_sigterm_stop_then_resume_from_synced_checkpoints(sample_tfrecords: Path, tmp_path: Path) -> None:
    """Early stopping / a spot reclaim: SIGTERM, a checkpoint, and a new job that carries on."""
    checkpoints = tmp_path / "ckpt"
    first = run_job(
        replace(tiny_job(sample_tfrecords, "carvana-spot-1", epochs=3), checkpoint_uri=str(checkpoints)),
        tmp_path / "jobs",
        on_epoch=lambda metrics: metrics["epoch"] >= 1,
        stream=io.StringIO(),
    )
    assert first.status == "Stopped"
    assert (checkpoints / "state.json").is_file()
    stream = io.StringIO()
    second = run_job(
        replace(tiny_job(sample_tfrecords, "carvana-spot-2", epochs=3), checkpoint_uri=str(checkpoints)),
        tmp_path / "jobs",
        stream=stream,
    )
    assert second.status == "Completed", second.failure_reason
    assert "resuming after epoch" in stream.getvalue()
    assert second.history[0]["epoch"] > 1  # it did not start over
    assert second.history[-1]["epoch"] == 3


def test_max_run_stops_the_job_like_sagemaker(sample_tfrecords: Path, tmp_path: Path) -> None:
    result = run_job(
        replace(tiny_job(sample_tfrecords, "carvana-timeout-1"), max_run_s=1), tmp_path, stream=io.StringIO()
    )
    assert result.status == "Stopped"
    description = json.loads((result.job_dir / "description.json").read_text())
    assert description["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert Path(result.model_artifact).is_file()  # SageMaker uploads what a stopped job left


def test_local_tuning_resumes_without_rerunning_finished_trials(
    sample_tfrecords: Path, tmp_path: Path
) -> None:
    base = replace(
        tiny_job(sample_tfrecords, "carvana-tune-local"),
        hyperparameters={k: v for k, v in TINY.items() if k != "batch-size"},
    )
    ranges = (Categorical("batch-size", (4, 8)), Continuous("learning-rate", 1e-4, 1e-2, log=True))
    spec = TuningSpec(job=base, ranges=ranges, max_jobs=2, max_parallel_jobs=1)
    work = tmp_path / "work"

    first = tune(spec, work, stream=io.StringIO())
    assert first.trials_run_now == 2
    assert first.best_job_name.startswith("carvana-tune-local-")
    assert 0.0 <= first.best_objective <= 1.0

    # A process killed mid-trial leaves a RUNNING trial behind; it must not use up the budget.
    storage = f"sqlite:///{work / 'carvana-tune-local' / 'study.db'}"
    optuna.load_study(study_name="carvana-tune-local", storage=storage).ask()

    second = tune(replace(spec, max_jobs=3), work, stream=io.StringIO())
    assert second.trials_run_now == 1  # exactly one new trial; the stale one was marked FAIL
    study = optuna.load_study(study_name="carvana-tune-local", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1
    assert sorted(p.name for p in (work / "carvana-tune-local" / "jobs").iterdir()) == [
        "carvana-tune-local-000",
        "carvana-tune-local-001",
        "carvana-tune-local-003",
    ]

    with second.results_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert {"batch-size", "learning-rate", "val_dice", "val_loss", "job_name"} <= set(rows[0])
    best_row = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["val_dice"]))
    assert best_row["job_name"] == second.best_job_name
    assert float(best_row["val_dice"]) == pytest.approx(second.best_objective)
    assert second.plot_png.stat().st_size > 10_000
    assert second.best_hyperparameters.keys() == {"batch-size", "learning-rate"}

    # Asking again for the same budget runs nothing.
    assert tune(replace(spec, max_jobs=3), work, stream=io.StringIO()).trials_run_now == 0


def test_cli_errors_name_the_problem(sample_tfrecords: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["fit", "--data", str(tmp_path / "missing"), "--work", str(tmp_path)]) == 2
    assert "channel train: folder" in capsys.readouterr().err
    assert cli_main(["fit", "--work", str(tmp_path)]) == 2
    assert "--data" in capsys.readouterr().err
    assert cli_main(["tune", "--data", str(sample_tfrecords), "--range", "learning-rate=abc"]) == 2
    assert "--range 'learning-rate=abc'" in capsys.readouterr().err
    with pytest.raises(LaunchError, match="max wait"):
        JobSpec(job_name="x", channels={"train": "a"}, spot=True, max_run_s=100, max_wait_s=50)
    with pytest.raises(LaunchError, match="job name"):
        JobSpec(job_name="bad_name", channels={"train": "a"})
