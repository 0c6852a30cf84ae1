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
