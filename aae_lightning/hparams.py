"""What each hyperparameter accepts, declared where it is defined, and the one check that enforces it.

Every field of a variant's `Hparams` dataclass is made with `hparam(default, help, accepts=...)`. The declaration
checks a value, describes itself for `train.py --help` and for error messages ("a float in [0, 1)"), and names
values at its edges and just outside them, from which tests/unit/test_hparams.py and tests/cli/test_errors.py
generate their cases. Making an `Hparams` (as every model's `__init__` does) checks each field against its
declaration, then the relations between fields, so the same check runs for train.py, evaluate.py,
`load_from_checkpoint` and a notebook.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from itertools import pairwise
from typing import Any

from aae_lightning.errors import HparamError, flag, shown


class Accepts(ABC):
    """The values one hyperparameter allows."""

    @abstractmethod
    def allows(self, value: Any) -> bool:
        """Whether `value` is allowed (of the right type, and in range)."""

    @abstractmethod
    def describe(self) -> str:
        """What is allowed, as a noun phrase: "a float in [0, 1)", "one of adam, sgd"."""

    @abstractmethod
    def edges(self) -> list[Any]:
        """Allowed values at the edges of what is allowed (none where it has no edge)."""

    @abstractmethod
    def outside(self) -> list[Any]:
        """Values of the right type just outside what is allowed, each one a command line can give."""


@dataclass(frozen=True)
class Range(Accepts):
    """A finite int or float between `low` and `high` (None: unbounded), each bound included unless it is open."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        number = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # an int may be too large for a float
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.low is not None and self.low == self.high:
            return str(self.low)
        # "finite" where an infinity would otherwise fit the words
        noun = "an int" if self.kind is int else "a float" if None not in (self.low, self.high) else "a finite float"
        if self.low is None and self.high is None:
            return noun
        if self.high is None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.low is None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return f"{noun} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def edges(self) -> list[Any]:
        values = []
        if self.low is not None:
            values.append(self._step(self.low, up=True) if self.low_open else self.kind(self.low))
        if self.high is not None:
            values.append(self._step(self.high, up=False) if self.high_open else self.kind(self.high))
        return _distinct(values)

    def outside(self) -> list[Any]:
        values = []
        if self.low is not None:
            values.append(self.kind(self.low) if self.low_open else self._step(self.low, up=False))
        if self.high is not None:
            values.append(self.kind(self.high) if self.high_open else self._step(self.high, up=True))
        if self.kind is float:
            values += [math.nan, math.inf, -math.inf]
        return _distinct(values)

    def _step(self, bound: float, up: bool) -> Any:
        """The nearest value of this kind beyond `bound`, above or below it."""
        if self.kind is int:
            return int(bound) + (1 if up else -1)
        return math.nextafter(float(bound), math.inf if up else -math.inf)


def positive(kind: type = float) -> Range:
    """A width or a count (an int >= 1), or a std or factor (a float > 0)."""
    return Range(int, 1) if kind is int else Range(float, 0, low_open=True)


def non_negative(kind: type = float) -> Range:
    """>= 0: a noise level or penalty weight (0: none), or a learning rate (0: that phase off)."""
    return Range(kind, 0)


def probability() -> Range:
    """[0, 1): a dropout rate, or a momentum (1 would never forget a gradient)."""
    return Range(float, 0, 1, high_open=True)


@dataclass(frozen=True)
class OneOf(Accepts):
    """One of a few names."""

    names: tuple[str, ...]

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.names

    def describe(self) -> str:
        return f"one of {', '.join(self.names)}"

    def edges(self) -> list[Any]:
        return list(self.names)

    def outside(self) -> list[Any]:
        return _distinct([self.names[0].upper(), ""])


@dataclass(frozen=True)
class Flag(Accepts):
    """True or false."""

    def allows(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def edges(self) -> list[Any]:
        return [False, True]

    def outside(self) -> list[Any]:
        return []


@dataclass(frozen=True)
class Ints(Accepts):
    """A tuple (or, from a checkpoint, a list) of ints >= `low`: layer widths, or epochs."""

    low: int = 1
    non_empty: bool = False
    increasing: bool = False

    def allows(self, value: Any) -> bool:
        item = Range(int, self.low)
        return (
            isinstance(value, (tuple, list))
            and (len(value) > 0 or not self.non_empty)
            and all(item.allows(number) for number in value)
            and (not self.increasing or all(a < b for a, b in pairwise(value)))
        )

    def describe(self) -> str:
        items = f"{'strictly increasing ' if self.increasing else ''}ints >= {self.low}"
        return f"one or more {items}" if self.non_empty else f"{items}, or none"

    def edges(self) -> list[Any]:
        values = [(self.low,)]
        if not self.non_empty:
            values.append(())
        if self.increasing:
            values.append((self.low, self.low + 1))
        return values

    def outside(self) -> list[Any]:
        values = [(self.low - 1,)]
        if self.non_empty:
            values.append(())
        if self.increasing:
            values += [(self.low + 1, self.low), (self.low, self.low)]
        return values


class Either(Accepts):
    """Whatever any of `options` allows: a sentinel value beside a range, for instance."""

    def __init__(self, *options: Accepts) -> None:
        self.options = options

    def allows(self, value: Any) -> bool:
        return any(option.allows(value) for option in self.options)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)

    def edges(self) -> list[Any]:
        return _distinct([value for option in self.options for value in option.edges()])

    def outside(self) -> list[Any]:
        return _distinct([value for option in self.options for value in option.outside() if not self.allows(value)])


def _distinct(values: list[Any]) -> list[Any]:
    # by repr: nan is not equal to itself, and 0 == 0.0 == False would merge values of different types
    return list({repr(value): value for value in values}.values())


def hparam(default: Any, help: str, *, accepts: Accepts) -> Any:
    """A hyperparameter field: `help` is what `train.py --help` shows for its flag, `accepts` what it allows."""
    metadata = {"help": help, "accepts": accepts}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def redefault(hparams_class: type, name: str, default: Any) -> Any:
    """`hparams_class`'s field `name` with another default, for a variant's own `Hparams`: the help and the
    declaration stay those of the field it overrides."""
    inherited = hparams_class.__dataclass_fields__[name].metadata
    return hparam(default, inherited["help"], accepts=inherited["accepts"])


def declarations(hparams_class: type) -> dict[str, Accepts]:
    """What each field of an `Hparams` dataclass accepts, by field name."""
    declared = {}
    for item in fields(hparams_class):
        if "accepts" not in item.metadata:
            raise TypeError(
                f"{hparams_class.__name__}.{item.name} declares nothing it accepts; "
                "define it with hparam(..., accepts=...)"
            )
        declared[item.name] = item.metadata["accepts"]
    return declared


class DeclaredHparams:
    """The base of every `Hparams` dataclass: making one checks it."""

    def __post_init__(self) -> None:
        for name, accepts in declarations(type(self)).items():
            value = getattr(self, name)
            if not accepts.allows(value):
                raise HparamError(f"{flag(name)} {shown(value)} is not allowed: it must be {accepts.describe()}")
        self.check_relations()

    def check_relations(self) -> None:
        """Refuse, with an `HparamError`, fields that are each allowed but do not fit together. Runs after every field
        passed its own check; a variant that adds a relation calls `super().check_relations()` first."""
