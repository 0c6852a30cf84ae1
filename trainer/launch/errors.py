"""The launcher's two failures: a request that cannot work, and a job that ran and failed.

The CLI answers the first with exit code 2 and the second with 1, whichever backend raised it.
"""

from __future__ import annotations

from trainer.command import CarvanaError


class LaunchError(CarvanaError, ValueError):
    """A launch request that cannot work; the message names the field and what was expected."""


class JobFailedError(CarvanaError, RuntimeError):
    """A job ran and failed; the message carries the failure reason (log tail or AWS's)."""

    exit_code = 1  # the job ran and failed: its log says why
