"""``carvana transform --backend local``: a folder of photos through the endpoint as Batch Transform.

Real HTTP to a real ``carvana serve`` on the packaged model: each photo's ``.out`` must be the
endpoint's own answer for the same bytes, a refused photo leaves no ``.out`` and fails the job (as
Batch Transform does) while the others are still written, and a rerun does only what is missing.
The SageMaker side (CreateTransformJob as botocore sends it) is in tests/test_launch_sagemaker.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from local_aws.batch_transform import list_inputs, output_path
from trainer import cli
from trainer.launch.errors import LaunchError
from trainer.launch.specs import TransformSpec
from trainer.wire import MEDIA_MASK_PNG, MEDIA_RLE_JSON


def spec(**overrides: object) -> TransformSpec:
    fields: dict[str, object] = dict(
        job_name="tx", model_data="m.tar.gz", input="in", output="out", accept=MEDIA_MASK_PNG
    )
    return TransformSpec(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"accept": "text/csv"}, "accept: Accept 'text/csv' is not supported"),
        ({"content_type": "text/plain"}, "content type 'text/plain': expected one of image/jpeg"),
        ({"output": "in/masks"}, "must lie outside input"),
        ({"output": "in/"}, "must lie outside input"),
        ({"max_payload_mb": 0}, "max payload must be 1..100 MB"),
        ({"max_payload_mb": 101}, "max payload must be 1..100 MB"),
        ({"invocation_retries": 4}, "invocation retries must be 0..3"),
        ({"max_concurrent_transforms": 0}, "max concurrent transforms must be >= 1"),
        ({"job_name": "no_underscores"}, "transform job name 'no_underscores'"),
    ],
)
def test_a_job_the_service_would_refuse_is_refused_before_it_starts(overrides, message) -> None:
    with pytest.raises(LaunchError, match=message):
        spec(**overrides)


def test_any_media_type_the_handler_negotiates_passes_through() -> None:
    for accept in ("image/png", "application/json", "image/png; variant=cutout", "image/*;q=0.5"):
        assert spec(accept=accept).accept == accept
    assert spec().batch_environment == {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2",
    }


def test_every_file_under_the_input_is_a_record_named_like_its_s3_key(tmp_path: Path) -> None:
    (tmp_path / "car" / "left").mkdir(parents=True)
    for name in ("b.jpg", "a.png", "car/left/c.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_inputs(tmp_path) == ["a.png", "b.jpg", "car/left/c.jpg", "notes.txt"]
    assert output_path(Path("out"), "car/left/c.jpg") == Path("out/car/left/c.jpg.out")


def answer(url: str, photo: bytes, accept: str) -> bytes:
    """The endpoint's own answer to ``photo`` (the reference every .out must equal)."""
    response = requests.post(
        f"{url}/invocations",
        data=photo,
        headers={"Content-Type": "application/x-image", "Accept": accept},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.content


def transform(*args: str) -> int:
    return cli.main(["transform", "--backend", "local", *args])


def test_a_folder_becomes_one_out_per_photo_and_a_refused_photo_fails_the_job(
    sample_data: Path, packaged_model: Path, served_endpoint: str, tmp_path: Path, capsys
) -> None:
    source, out, work = tmp_path / "in", tmp_path / "out", tmp_path / "jobs"
    (source / "car-2").mkdir(parents=True)
    photos = sorted((sample_data / "train").glob("*.jpg"))
    good = {"a.jpg": photos[0], "b.jpg": photos[1], "car-2/c.jpg": photos[17]}
    for name, photo in good.items():
        (source / name).write_bytes(photo.read_bytes())
    (source / "notes.txt").write_text("not a photo")
    (source / "huge.jpg").write_bytes(photos[2].read_bytes() + b"\0" * (1024 * 1024))
    common = [
        "--model",
        str(packaged_model),
        "--input",
        str(source),
        "--output",
        str(out),
        "--work",
        str(work),
    ]

    assert transform(*common, "--job-name", "tx-first", "--max-payload", "1") == 1
    captured = capsys.readouterr()
    assert "transform job tx-first: Failed" in captured.out
    assert "3 transformed, 0 already done (skipped), 2 failed" in captured.out
    assert "failed notes.txt: 400 request body (11 bytes" in captured.out
    assert "2 of 5 input objects could not be transformed" in captured.err

    for name, photo in good.items():
        assert output_path(out, name).read_bytes() == answer(
            served_endpoint, photo.read_bytes(), MEDIA_MASK_PNG
        )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a.jpg.out",
        "b.jpg.out",
        "car-2/c.jpg.out",
    ], "no .out for a refused record, and no temporary file left"

    description = json.loads((work / "tx-first" / "description.json").read_text())
    assert description["TransformJobStatus"] == "Failed"
    assert description["Environment"]["SAGEMAKER_BATCH"] == "true"
    assert description["Environment"]["SAGEMAKER_MAX_PAYLOAD_IN_MB"] == "1"
    failures = {f["input"]: f for f in description["Failures"]}
    assert sorted(failures) == ["huge.jpg", "notes.txt"]
    assert failures["notes.txt"]["status"] == 400
    assert failures["huge.jpg"]["status"] is None  # never sent: over MaxPayloadInMB
    assert "over MaxPayloadInMB=1" in failures["huge.jpg"]["message"]

    # Fixed inputs, one lost output: a rerun transforms only that one and leaves the rest untouched.
    (source / "notes.txt").unlink()
    (source / "huge.jpg").unlink()
    lost = output_path(out, "b.jpg")
    kept = output_path(out, "car-2/c.jpg")
    before = (lost.read_bytes(), os.stat(kept).st_mtime_ns)
    lost.unlink()
    assert transform(*common, "--job-name", "tx-resumed") == 0
    assert "1 transformed, 2 already done (skipped), 0 failed" in capsys.readouterr().out
    assert (lost.read_bytes(), os.stat(kept).st_mtime_ns) == before
    description = json.loads((work / "tx-resumed" / "description.json").read_text())
    assert (description["TransformJobStatus"], description["Transformed"], description["Skipped"]) == (
        "Completed",
        1,
        2,
    )


def test_real_photos_answer_in_the_media_type_asked_for(
    real_data: Path, packaged_model: Path, served_endpoint: str, tmp_path: Path
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    photos = sorted((real_data / "train").glob("*.jpg"))[::200][:3]
    for photo in photos:
        (source / photo.name).symlink_to(photo.resolve())
    code = transform(
        *("--model", str(packaged_model), "--input", str(source), "--output", str(out)),
        *("--work", str(tmp_path / "jobs"), "--accept", MEDIA_RLE_JSON, "--max-concurrent-transforms", "3"),
    )
    assert code == 0
    for photo in photos:
        result = json.loads(output_path(out, photo.name).read_bytes())
        assert (result["width"], result["height"]) == (1918, 1280)
        assert result["rle"] and 0 < result["car_fraction"] < 1
        assert result == json.loads(answer(served_endpoint, photo.read_bytes(), MEDIA_RLE_JSON))
