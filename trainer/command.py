"""The scaffolding every ``carvana`` command shares: one error base class, one ``main`` body.

Why one place: a user should meet the same contract from every command, whether the photo folder
is missing, a flag is out of range or a shard is corrupt: ``carvana <command>: error: <what was
wrong and what was expected>`` on stderr, exit status 2 (or the error's own status, e.g. 1 for a
diverged training run), and no traceback for mistakes the user can fix. Unexpected failures still
raise with their traceback: hiding a bug behind a one-line message would cost more than it saves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class CarvanaError(Exception):
    """A failure the user can act on; its message names the input and what was expected.

    Every module's own error (``DatasetError``, ``StorageError``, ``ConfigError``, ...) derives from
    it, so :func:`run_command` reports them all the same way without knowing them.
    """

    exit_code = 2


class UsageError(CarvanaError):
    """A flag value the command cannot use (out of range, contradictory, missing)."""


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, ignore_unknown: bool = False
) -> argparse.Namespace:
    """``parser.parse_args``, or with ``ignore_unknown`` the known arguments, naming the rest.

    The training entry point ignores unknown arguments: SageMaker and its tuner may pass
    hyperparameters it does not use, and failing a whole job over one would waste it.
    """
    argv = None if argv is None else list(argv)
    if not ignore_unknown:
        return parser.parse_args(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"{parser.prog}: ignoring unknown arguments {' '.join(unknown)}", flush=True)
    return args


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    *,
    ignore_unknown: bool = False,
) -> int:
    """Parse ``argv`` with ``parser``, run ``body(args)`` and turn a :class:`CarvanaError` into a message.

    Returns ``body``'s exit status (``None`` means 0). Argument syntax errors stay argparse's own
    (usage line and exit 2); every later refusal goes through the error's message.
    """
    args = parse_arguments(parser, argv, ignore_unknown=ignore_unknown)
    try:
        return int(body(args) or 0)
    except CarvanaError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr, flush=True)
        return 130
