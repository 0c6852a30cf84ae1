"""Hyperparameters declared once (trainer/training/config.py): what the flags, checks, launcher values
and tuner ranges derived from the declarations are."""

from __future__ import annotations

import pytest

from trainer.launch.cli import build_parser as launch_parser
from trainer.launch.cli import job_spec_from_args
from trainer.launch.errors import LaunchError
from trainer.launch.search_space import SEARCH_SPACE, Categorical, Continuous, Integer
from trainer.training.config import ModelConfig, TrainConfig, build_parser, parse_config
from trainer.training.hyperparameters import ConfigError, by_flag


def test_the_search_space_is_the_declared_one() -> None:
    expected = (
        Categorical("batch-size", (4, 8, 16)),
        Continuous("learning-rate", 1e-4, 3e-3, log=True),
        Integer("epochs", 10, 40),
    )
    assert expected == SEARCH_SPACE


def test_every_declaration_is_a_flag_of_carvana_train_with_its_default() -> None:
    declared = by_flag(TrainConfig)
    options = {action.dest: action for action in build_parser()._actions}
    for flag, declaration in declared.items():
        action = options[declaration.name]
        assert action.option_strings == [f"--{flag}"]
        assert action.default == declaration.text(declaration.default)
    assert options["image_size"].default == "192x288" and options["profile_batches"].default == "3,4"
    assert parse_config([], {}).model == ModelConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-minutes", "-1"], r"--max-minutes must be >= 0 \(0 = no budget\), got -1.0"),
        (["--lr-factor", "1"], r"--lr-factor must be in \(0, 1\), got 1.0"),
        (["--batch-size", "0"], r"--batch-size must be positive, got 0"),
    ],
)
def test_declared_bounds_are_checked(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {})


def test_launcher_hyperparameters_are_typed_and_checked_like_the_entry_point() -> None:
    parser = launch_parser("fit")
    args = parser.parse_args(
        [
            "--data",
            "d",
            "--image-size",
            "64x96",
            "--epochs",
            "3",
            "--hp",
            "depth=3",
            "--hp",
            "batch-norm=false",
            "--hp",
            "extra=1e-3",
        ]
    )
    spec = job_spec_from_args(args, "job-1")
    assert spec.hyperparameters == {
        "image-size": "64x96",
        "epochs": 3,
        "depth": 3,
        "batch-norm": "false",
        "extra": 0.001,
    }
    with pytest.raises(LaunchError, match=r"--epochs must be positive, got 0"):
        job_spec_from_args(parser.parse_args(["--data", "d", "--epochs", "0"]), "job-2")
    with pytest.raises(LaunchError, match=r"--hp depth=three: invalid literal"):
        job_spec_from_args(parser.parse_args(["--data", "d", "--hp", "depth=three"]), "job-3")
    with pytest.raises(LaunchError, match=r"--hp upsampling=cubic: expected one of transpose, bilinear"):
        job_spec_from_args(parser.parse_args(["--data", "d", "--hp", "upsampling=cubic"]), "job-4")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--encoder", "resnet50", "--image-size", "200x288"],
            r"--image-size: input size 200x288 does not work with encoder resnet50: height 200 not "
            r"divisible by 2\*\*5 = 32 \(e\.g\. use 224x288\)",
        ),
        (["--freeze-encoder-epochs", "2"], r"--freeze-encoder-epochs: applies to a pretrained --encoder"),
        (["--encoder", "resnet50", "--encoder-alpha", "0.5"], r"--encoder-alpha: MobileNetV2's width"),
        (
            ["--encoder", "mobilenetv2", "--encoder-weights", "/nowhere/w.h5"],
            r"--encoder-weights: expected imagenet, none or the path of a weights file, got '/nowhere/w.h5'",
        ),
    ],
)
def test_encoder_settings_are_checked_before_tensorflow_starts(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(argv, {})


def test_the_default_size_suits_every_encoder_and_a_weights_file_is_accepted(tmp_path) -> None:
    for encoder in ("mobilenetv2", "efficientnetb0", "efficientnetb3", "resnet50"):
        assert parse_config(["--encoder", encoder], {}).model.encoder_weights == "imagenet"
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")
    config = parse_config(["--encoder", "efficientnetb0", "--encoder-weights", str(weights)], {})
    assert config.model.encoder_weights == str(weights)


def test_the_gpu_recipe_is_sent_as_hyperparameters_the_entry_point_accepts() -> None:
    parser = launch_parser("fit")
    spec = job_spec_from_args(parser.parse_args(["--data", "d", "--recipe", "gpu", "--epochs", "30"]), "j")
    assert spec.hyperparameters == {
        "image-size": "512x768",
        "encoder": "resnet50",
        "encoder-weights": "imagenet",
        "batch-size": 8,
        "learning-rate": 5e-4,
        "freeze-encoder-epochs": 2,
        "epochs": 30,  # a flag overrides the recipe
        "mixed-precision": "true",
    }
    argv = [f"--{key}={value}" for key, value in spec.hyperparameters.items()]
    config = parse_config(argv, {})
    assert config.model.image_size == (512, 768) and config.optimisation.freeze_encoder_epochs == 2
    assert job_spec_from_args(parser.parse_args(["--data", "d"]), "j").hyperparameters == {}


def test_a_recipes_values_stay_tunable_and_flags_fix_them() -> None:
    from trainer.launch.cli import tuning_spec_from_args

    parser = launch_parser("tune")
    spec = tuning_spec_from_args(parser.parse_args(["--data", "d", "--recipe", "gpu", "--batch-size", "4"]))
    assert [r.name for r in spec.ranges] == ["learning-rate", "epochs"]
    assert spec.job.hyperparameters["learning-rate"] == 5e-4 and spec.job.hyperparameters["batch-size"] == 4
