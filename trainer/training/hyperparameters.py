"""How a training hyperparameter is declared, and everything derived from the declaration.

A hyperparameter is one dataclass field of a configuration concern (``trainer.training.config``)::

    batch_size: int = hyperparameter(4, "images per step per replica", bounds=POSITIVE,
                                     search=(4, 8, 16), launcher=True)

and that one line is the source of the entry point's flag (``--batch-size``, the name SageMaker
passes it by: ``--batch-size 8``), its help, type, choices and range check, the value sent in a
SageMaker ``HyperParameters`` dict, the tuner's default range for it and whether ``carvana fit`` /
``carvana tune`` offer it as a flag of their own. The flag name is the field name with hyphens.

Standard library only: the launcher reads these declarations too, and must not load TensorFlow.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trainer.command import CarvanaError

HyperValue = str | int | float | bool  # what a SageMaker HyperParameters dict holds


class ConfigError(CarvanaError, ValueError):
    """A hyperparameter or path is unusable; the message names the flag and what was expected."""


@dataclass(frozen=True)
class Bounds:
    """An allowed interval; ``note`` explains a special value (``0 = no budget``)."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        above = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        below = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        return above and below

    def describe(self) -> str:
        """``positive``, ``>= 0`` or ``in [0, 1)``, as the error message says it."""
        if self.high is None:
            text = "positive" if self.low == 0 and not self.low_inclusive else f">= {self.low:g}"
        else:
            text = (
                f"in {'[' if self.low_inclusive else '('}{self.low:g}, "
                f"{self.high:g}{']' if self.high_inclusive else ')'}"
            )
        return f"{text} ({self.note})" if self.note else text


POSITIVE = Bounds(low=0, low_inclusive=False)


@dataclass(frozen=True)
class Span:
    """A tuner range ``low..high`` (integer for an int field), searched on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False


def str2bool(value: str) -> bool:
    """SageMaker passes every hyperparameter as a string, so booleans are spelled out."""
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def hyperparameter(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    text: Callable[[Any], str] = str,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    bounds: Bounds | None = None,
    search: tuple[HyperValue, ...] | Span | None = None,
    launcher: bool = False,
) -> Any:
    """A dataclass field declaring one hyperparameter (see the module docstring).

    ``parse`` reads the flag's text (default: the field's type; ``str2bool`` for a bool), ``text``
    writes a value back as that text (help defaults, SageMaker values that are not plain numbers).
    ``search`` is the tuner's default range: values to choose among, or a :class:`Span`.
    ``launcher``: ``carvana fit`` and ``carvana tune`` offer the flag themselves (the others go
    through ``--hp NAME=VALUE``).
    """
    metadata = {
        "help": help, "parse": parse, "text": text, "metavar": metavar, "choices": choices,
        "bounds": bounds, "search": search, "launcher": launcher,
    }  # fmt: skip
    return dataclasses.field(default=default, metadata={"hyperparameter": metadata})


@dataclass(frozen=True)
class Declaration:
    """One declared hyperparameter, as the derivations read it."""

    name: str  # the field name, also argparse's dest
    kind: type  # int, float, str, bool, or the parsed type (tuple, ...)
    default: Any
    group: str  # the concern's title, for --help
    help: str
    parse: Callable[[str], Any]
    text: Callable[[Any], str]
    metavar: str | None
    choices: tuple[str, ...] | None
    bounds: Bounds | None
    search: tuple[HyperValue, ...] | Span | None
    launcher: bool

    @property
    def flag(self) -> str:
        """The command-line and SageMaker name: ``batch_size`` -> ``batch-size``."""
        return self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        if self.bounds is not None and not self.bounds.contains(value):
            raise ConfigError(f"--{self.flag} must be {self.bounds.describe()}, got {value}")

    def sagemaker_value(self, value: Any) -> HyperValue:
        """Numbers and text as they are (the SDK JSON-encodes them), anything else as its flag text."""
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            return value
        return self.text(value)


_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def declarations(config_class: type) -> Iterator[Declaration]:
    """The hyperparameters of ``config_class``'s concerns (its dataclass fields), in declaration order."""
    for concern in dataclasses.fields(config_class):
        concern_class = concern.type if isinstance(concern.type, type) else concern.default_factory
        if not dataclasses.is_dataclass(concern_class):
            continue
        # The --help group title: the concern's docstring's first line (``model: the U-Net's ...``).
        title = (concern_class.__doc__ or concern.name).strip().splitlines()[0].rstrip(".")
        for f in dataclasses.fields(concern_class):
            meta = f.metadata.get("hyperparameter")
            if meta is None:
                continue
            kind = _SCALARS.get(f.type, type(f.default)) if isinstance(f.type, str) else f.type
            parse = meta["parse"] or (str2bool if kind is bool else kind)
            text = _bool_text if kind is bool and meta["text"] is str else meta["text"]
            yield Declaration(
                name=f.name, kind=kind, default=f.default, group=title, help=meta["help"], parse=parse,
                text=text, metavar=meta["metavar"] or ("BOOL" if kind is bool else None),
                choices=meta["choices"], bounds=meta["bounds"], search=meta["search"],
                launcher=meta["launcher"],
            )  # fmt: skip


def concern_values(config_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``{concern: concern_class(**its fields from values)}`` for the concerns holding hyperparameters."""
    result: dict[str, Any] = {}
    for concern in dataclasses.fields(config_class):
        concern_class = concern.type if isinstance(concern.type, type) else concern.default_factory
        if dataclasses.is_dataclass(concern_class) and any(
            "hyperparameter" in f.metadata for f in dataclasses.fields(concern_class)
        ):
            names = [f.name for f in dataclasses.fields(concern_class)]
            result[concern.name] = concern_class(**{name: values[name] for name in names if name in values})
    return result


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--flag`` per hyperparameter, grouped by concern, defaults shown as the flag's text."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for d in declarations(config_class):
        group = groups.get(d.group) or groups.setdefault(d.group, parser.add_argument_group(d.group))
        group.add_argument(
            f"--{d.flag}", dest=d.name, type=d.parse, default=d.text(d.default), choices=d.choices,
            metavar=d.metavar, help=d.help,
        )  # fmt: skip


def by_flag(config_class: type) -> dict[str, Declaration]:
    """The declarations by their flag name (``batch-size``), the key of a HyperParameters dict."""
    return {d.flag: d for d in declarations(config_class)}
