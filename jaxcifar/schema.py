"""Config fields declared once, by the feature that owns them: default, one-line doc, and
the allowed values or a check. `--help`, the allowed values and validation are derived
from the declaration, so nothing is kept in step by hand.

A method declares its own settings this way (`SETTINGS` in its file, e.g.
methods/multicrop.py), and they live in the run's `config.method` block. This module
imports neither JAX nor Flax, so a declaration can be read before anything is compiled;
the rest of the config can move to the same pattern field by field.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field. `check(value)` returns what is wrong with a value ('' when it is
    fine); `choices`, when given, are the only values allowed."""

    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], str] | None = None

    def error(self, value: Any) -> str:
        """What is wrong with `value` for this field, or ''."""
        if self.choices and value not in self.choices:
            return f"{value!r} is not allowed: use one of {', '.join(map(repr, self.choices))}"
        return self.check(value) if self.check else ""

    def help(self) -> str:
        return self.doc + (f" ({' | '.join(map(str, self.choices))})" if self.choices else "")


def defaults(fields: Iterable[Field]) -> dict[str, Any]:
    return {field.name: field.default for field in fields}


def errors(fields: Iterable[Field], values: dict[str, Any], prefix: str) -> list[str]:
    """One line per field of `values` that its declaration refuses, named `prefix.name`."""
    return [f"{prefix}.{field.name}={values[field.name]!r}: {message}"
            for field in fields if (message := field.error(values[field.name]))]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' Did you mean X?' for the nearest known name to a mistyped one, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# Checks shared by declarations: each returns '' for a good value.
def positive(value: Any) -> str:
    return "" if isinstance(value, (int, float)) and value > 0 else "must be a positive number"


def positive_int(value: Any) -> str:
    return "" if isinstance(value, int) and value > 0 else "must be a positive whole number"


def fraction(value: Any) -> str:
    return "" if isinstance(value, (int, float)) and 0 <= value <= 1 else "must be in [0, 1]"


def fraction_range(value: Any) -> str:
    """A (low, high) pair with 0 < low <= high <= 1: an area fraction range."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, float)) for v in value) and 0 < value[0] <= value[1] <= 1)
    return "" if ok else "must be a pair (low, high) with 0 < low <= high <= 1"
