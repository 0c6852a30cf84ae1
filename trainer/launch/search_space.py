"""The tuner's search space: one definition, translated to SageMaker parameter ranges and to Optuna.

The default ranges are derived from the hyperparameter declarations (``search=`` in
``trainer.training.config``); ``--range`` replaces or adds one. ``sagemaker_backend.to_parameter``
and ``local_aws.tuning.suggest`` each translate the same :data:`Range` values.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.launch.errors import LaunchError
from trainer.training.config import TrainConfig
from trainer.training.hyperparameters import HyperValue, Span, declarations


@dataclass(frozen=True)
class Categorical:
    """A hyperparameter chosen among listed values (SageMaker CategoricalParameter)."""

    name: str
    values: tuple[HyperValue, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise LaunchError(f"range {self.name}: needs at least one value")


@dataclass(frozen=True)
class Continuous:
    """A real hyperparameter in [low, high], searched on a log scale when ``log``."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise LaunchError(
                f"range {self.name}: expected 0 < low <= high on a log scale, "
                f"low <= high otherwise; got {self.low}:{self.high}"
            )


@dataclass(frozen=True)
class Integer:
    """An integer hyperparameter in [low, high] (SageMaker IntegerParameter, linear)."""

    name: str
    low: int
    high: int

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise LaunchError(f"range {self.name}: expected low <= high, got {self.low}:{self.high}")


Range = Categorical | Continuous | Integer


def declared_space(config_class: type = TrainConfig) -> tuple[Range, ...]:
    """The default ranges: each hyperparameter declared with ``search=`` in its config field.

    Names are the entry point's flags, which is how SageMaker passes them; a ``Span`` over an int
    field is an integer range, over a float field a continuous one.
    """
    ranges: list[Range] = []
    for d in declarations(config_class):
        if d.search is None:
            continue
        if isinstance(d.search, Span):
            if d.kind is int:
                ranges.append(Integer(d.flag, int(d.search.low), int(d.search.high)))
            else:
                ranges.append(Continuous(d.flag, d.search.low, d.search.high, log=d.search.log))
        else:
            ranges.append(Categorical(d.flag, tuple(d.search)))
    return tuple(ranges)


SEARCH_SPACE: tuple[Range, ...] = declared_space()


def parse_range(text: str, space: tuple[Range, ...] = SEARCH_SPACE) -> Range:
    """``NAME=LOW:HIGH`` or ``NAME=A,B,C``, typed after the range of that name in ``space``.

    A name outside ``space`` takes its kind from the text: ``A,B`` categorical, ``LOW:HIGH``
    integer when both ends are integers, else continuous (log scale when both ends are positive and
    span more than a factor of 10).
    """
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise LaunchError(f"--range {text!r}: expected NAME=LOW:HIGH or NAME=A,B,C")
    known = {r.name: r for r in space}.get(name)
    try:
        if isinstance(known, Categorical) or (known is None and ":" not in spec):
            kind = type(known.values[0]) if known else _guess_type(spec.split(","))
            return Categorical(name, tuple(kind(v) for v in spec.split(",")))
        low_text, colon, high_text = spec.partition(":")
        if not colon:
            raise ValueError(spec)
        if isinstance(known, Integer) or (known is None and _guess_type([low_text, high_text]) is int):
            return Integer(name, int(low_text), int(high_text))
        low, high = float(low_text), float(high_text)
        log = known.log if isinstance(known, Continuous) else (low > 0 and high / low > 10)
        return Continuous(name, low, high, log=log)
    except ValueError:
        raise LaunchError(
            f"--range {text!r}: values of {name} must be numbers "
            f"{'LOW:HIGH' if not isinstance(known, Categorical) else 'A,B,C'}"
        ) from None


def _guess_type(values: list[str]) -> type:
    for kind in (int, float):
        try:
            [kind(v) for v in values]
        except ValueError:
            continue
        return kind
    return str
