"""SageMaker's naming rules for jobs, models and endpoints, checked before anything is uploaded."""

from __future__ import annotations

import re
import time

from trainer.launch.errors import LaunchError

# SageMaker's own naming rules (TrainingJobName, EndpointName, ...).
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9.\-_]+$")
MAX_JOB_NAME = 63
MAX_TUNING_JOB_NAME = 32


def unique_name(base: str, limit: int = MAX_JOB_NAME) -> str:
    """``base-YYMMDD-HHMMSS-mmm``, cut to SageMaker's length limit (like the SDK's name_from_base)."""
    now = time.time()
    stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    return f"{base[: limit - len(stamp) - 1]}-{stamp}"


def check_name(name: str, field_name: str, limit: int = MAX_JOB_NAME) -> None:
    """SageMaker's rule for job, model and endpoint names, enforced before anything is uploaded."""
    if not NAME_PATTERN.match(name) or len(name) > limit:
        raise LaunchError(
            f"{field_name} {name!r}: expected letters, digits and hyphens, "
            f"starting with a letter or digit, at most {limit} characters"
        )
