"""Errors caused by what a user asked for, and the words their one-line messages are made of: a setting's flag, a
value as the command line gives it (and as its words, `flag_words`), the first line of another library's error, a
data-layer error in flag terms.
The CLI shows a `UserError`'s message as one line and exits with code 2."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamodules import DataError

#: settings whose flag is not simply their name (`num_labels`, of the datamodule, is `--labels`)
FLAG_NAMES = {"num_labels": "labels"}


class UserError(ValueError):
    """A bad flag, file or combination of settings. The message is one line and says what to do."""


class HparamError(UserError):
    """A hyperparameter outside what its declaration accepts, or two that do not fit together."""


def flag(name: str) -> str:
    """The command-line flag of a setting: a hyperparameter, or an argument of the datamodule."""
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


def shown(value: Any) -> str:
    """A value as a message shows it: a name quoted, a list as the command line gives it."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def flag_words(name: str, value: Any) -> list[str]:
    """`value` as the command line's words for the setting `name`: a list's items as words of their own, a switch
    by its spelling, anything else after '=' (so that '-inf' or '' is read as the value, not as a flag, and a value
    a switch cannot take is refused by that switch's name)."""
    if isinstance(value, (list, tuple)):
        return [flag(name), *map(str, value)]
    if isinstance(value, bool):
        return [flag(name) if value else "--no-" + flag(name)[2:]]
    return [f"{flag(name)}={value}"]


def first_line(error: BaseException) -> str:
    """The first line of an error's message that is not blank ('' if there is none): another library's error,
    quoted in a one-line message."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def in_flag_terms(error: DataError) -> UserError:
    """A data-layer error as the command line says it: each datamodule argument it names becomes its flag."""
    message = str(error)
    for name in error.arguments:
        message = re.sub(rf"\b{re.escape(name)}\b", flag(name), message)
    return UserError(message)
