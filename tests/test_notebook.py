"""notebooks/train_unet.ipynb runs top to bottom (local backend, synthetic sample, tiny sizes).

It is executed with nbclient in a real kernel; parameters are injected the way papermill does it, as
a cell right after the one tagged ``parameters``. The test then checks what the notebook printed
(the Dice on validation photos, the endpoint's answer) and the files it wrote.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_unet.ipynb"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inject_parameters(notebook: nbformat.NotebookNode, values: dict[str, object]) -> None:
    """Insert ``NAME = value`` assignments after the cell tagged ``parameters`` (papermill's way)."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "# Injected parameters\n" + "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


def test_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "run"
    inject_parameters(
        notebook,
        {
            "WORK": str(work),
            "EPOCHS": 1,
            "TUNE_TRIALS": 1,
            "TUNE_EPOCHS": 1,
            "DEPTH": 2,
            "BASE_FILTERS": 4,
            "SHOW_PHOTOS": 3,
            "PORT": _free_port(),
        },
    )
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    dice = re.search(r"mean Dice on 3 validation photos: ([0-9.]+)", text)
    assert dice, text[-3000:]
    assert 0.0 <= float(dice.group(1)) <= 1.0
    assert re.search(r"endpoint mask 192x128, Dice [0-9.]+", text), text[-3000:]
    assert "deleted endpoint" in text
    images = [
        o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 3  # tuning plot, curves, masks

    manifest = json.loads((work / "tfrecords" / "manifest.json").read_text())
    assert manifest["splits"]["validation"]["count"] > 0
    jobs = sorted(p.name for p in (work / "jobs").iterdir() if (p / "description.json").is_file())
    assert len(jobs) == 1 and jobs[0].startswith("carvana-unet-")
    assert (work / "jobs" / jobs[0] / "output" / "model.tar.gz").is_file()
    tunings = list((work / "jobs").glob("carvana-tune-*/results.csv"))
    assert len(tunings) == 1 and len(tunings[0].read_text().splitlines()) == 2
    for name in ("curves.png", "masks.png", "model.tar.gz"):
        assert (work / name).stat().st_size > 0, name


@pytest.fixture(autouse=True)
def _quiet_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def test_notebook_sagemaker_branch_sends_the_sagemaker_requests(
    aws: str, moto_server: str, moto_recording, packaged_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """BACKEND=sagemaker against moto in server mode: the SDK calls the notebook makes, as sent over HTTP.

    moto runs no jobs, so the test leaves in S3 what a finished job would (model.tar.gz and
    output.tar.gz under the job's output path) and queues the endpoint's answer; everything else
    (session, role, default bucket, TFRecords upload, estimator, tuner, deploy, Lambda, delete) is
    the notebook's own code and the real SDK. moto's InvokeEndpoint cannot read a binary body (it
    decodes every request body as UTF-8 and answers 500), so the Lambda's call is asserted as sent and
    its answer as the 502 the handler makes of the endpoint's 500.
    """
    import io as _io
    import tarfile

    import boto3

    # The SDK sends get_execution_role()'s and default_bucket()'s STS calls to the regional STS URL
    # it builds itself (endpoint_url=sts_regional_endpoint(region)), past AWS_ENDPOINT_URL: moto
    # cannot answer them, so the role comes from $SAGEMAKER_ROLE and the bucket from S3_BUCKET,
    # the notebook's settings for use outside a SageMaker notebook.
    role_arn = "arn:aws:iam::123456789012:role/CarvanaNotebook"
    monkeypatch.setenv("SAGEMAKER_ROLE", role_arn)
    s3 = boto3.client("s3")
    bucket = aws
    job_name = "carvana-unet-notebook-1"
    prefix = f"carvana-unet/jobs/{job_name}/output"
    s3.upload_file(str(packaged_model), bucket, f"{prefix}/model.tar.gz")
    history = b"epoch,loss,dice,val_loss,val_dice\n1,0.9,0.5,0.8,0.6\n"
    buffer = _io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("history.csv")
        info.size = len(history)
        tar.addfile(info, _io.BytesIO(history))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/output.tar.gz", Body=buffer.getvalue())

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(
        notebook,
        {
            "WORK": str(tmp_path / "run"),
            "BACKEND": "sagemaker",
            "WAIT": False,
            "S3_BUCKET": bucket,
            "JOB_NAME": job_name,
            "SAMPLE_CARS": 2,
            "EPOCHS": 1,
            "TUNE_TRIALS": 2,
            "TUNE_EPOCHS": 2,
            "SHOW_PHOTOS": 2,
            "MAX_RUN": 3600,
        },
    )
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert f"role {role_arn}, bucket {bucket}" in text
    assert "TensorFlow estimator: TF 2.19" in text and "HyperparameterTuner: Bayesian" in text
    assert "Lambda answered 502 (application/json)" in text and "deleted endpoint" in text

    sent = moto_recording()
    by_name: dict[str, list[dict]] = {}
    for name, body in sent:
        by_name.setdefault(name, []).append(body)
    (job,) = by_name["CreateTrainingJob"]
    assert job["TrainingJobName"] == job_name and job["RoleArn"] == role_arn
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/carvana-unet/jobs"
    assert json.loads(job["HyperParameters"]["max-minutes"]) == 54.0  # from MAX_RUN
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 3600 and job["EnableManagedSpotTraining"]
    assert {r["RuleConfigurationName"].split("-")[0] for r in job["ProfilerRuleConfigurations"]} >= {
        "ProfilerReport",
        "LowGPUUtilization",
    }
    assert "debugger_findings" in {d["Name"] for d in job["AlgorithmSpecification"]["MetricDefinitions"]}
    (tuning,) = by_name["CreateHyperParameterTuningJob"]
    ranges = tuning["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert [r["Name"] for r in ranges["CategoricalParameterRanges"]] == ["batch-size"]
    assert [(r["Name"], r["ScalingType"]) for r in ranges["ContinuousParameterRanges"]] == [
        ("learning-rate", "Logarithmic")
    ]
    assert [(r["Name"], r["MinValue"], r["MaxValue"]) for r in ranges["IntegerParameterRanges"]] == [
        ("epochs", "1", "2")
    ]
    static = tuning["TrainingJobDefinition"]["StaticHyperParameters"]
    assert not {"batch-size", "learning-rate", "epochs"} & set(static)
    (model,) = by_name["CreateModel"]
    assert model["PrimaryContainer"]["Image"].endswith("/tensorflow-inference:2.19-cpu")
    (config,) = by_name["CreateEndpointConfig"]
    (endpoint,) = by_name["CreateEndpoint"]
    assert config["ProductionVariants"][0]["ModelName"] == model["ModelName"]
    invocations = [name for name in by_name if name.startswith("POST /endpoints/")]
    assert invocations == [f"POST /endpoints/{endpoint['EndpointName']}/invocations"]  # by the Lambda
    assert by_name["DeleteEndpoint"] == [{"EndpointName": endpoint["EndpointName"]}]
    assert by_name["DeleteEndpointConfig"] == [{"EndpointConfigName": config["EndpointConfigName"]}]
    assert by_name["DeleteModel"] == [{"ModelName": model["ModelName"]}]
