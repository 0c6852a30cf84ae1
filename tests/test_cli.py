"""The ``carvana`` dispatcher: every command listed, each routed to its module with its own name."""

from __future__ import annotations

import pytest

from trainer import cli


def test_help_lists_every_command_in_pipeline_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list(cli.COMMANDS)


def test_unknown_command_exits_2_and_shows_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "carvana: unknown command 'nope'" in err and "make-sample" in err


@pytest.mark.parametrize("command", ["fit", "tune"])
def test_launch_commands_reach_the_launch_module_under_their_own_name(
    command: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "--work", str(tmp_path)]) == 2
    assert f"carvana {command}: error: --data" in capsys.readouterr().err
