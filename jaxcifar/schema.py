"""Config fields declared once, by the feature that owns them: default, one-line doc, and
the allowed values or a check. `default_config()`, `--help`, the allowed values, the stage
fields and validation are all derived from the declarations (jaxcifar/config.py), so
nothing is kept in step by hand.

Each feature declares its fields in a `FIELDS` tuple in a light module beside it
(data_fields.py for data.py, optim_fields.py for optim.py, ...), and a method its own
settings in `SETTINGS` (methods/multicrop_fields.py), which a run keeps in its
`config.method` block. A config is read, validated and documented (`--help`, a launcher
checking a recipe before it starts a run) without importing JAX or Flax, which costs
seconds: this module imports neither, and neither may a `*_fields` module
(tests/test_config.py checks). Why modules of their own rather than the features' modules
importing JAX lazily: the features call JAX in nearly every function, so each would need
its own import inside it; a `*_fields` module needs none, and its feature imports what it
shares from it (peft.MODES).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field. `name` is dotted for a field of a block ('data.image_size', see
    `block`). `check(value)` returns what is wrong with a value ('' when it is fine);
    `choices`, when given, are the only values allowed. `doc` and `choices` may be
    functions, called when read, for what a registry holds (a method registered after
    import is then known)."""

    name: str
    default: Any
    doc: str | Callable[[], str]
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] = ()
    check: Callable[[Any], str] | None = None
    # A stage may override it (`stages`); the top-level value is every stage's default.
    stage: bool = False
    # A dict whose keys the user chooses (`param_groups`, `model_kwargs`): set whole, its
    # keys never checked against the defaults'.
    keyed: bool = False

    def allowed(self) -> tuple[Any, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def error(self, value: Any) -> str:
        """What is wrong with `value` for this field, or ''."""
        allowed = self.allowed()
        if allowed and value not in allowed:
            return use(allowed)
        return self.check(value) if self.check else ""

    def help(self) -> str:
        """The doc, and the allowed values if there are some: one line of --help."""
        doc, allowed = self.doc() if callable(self.doc) else self.doc, self.allowed()
        return doc + (f" ({' | '.join(map(str, allowed))})" if allowed else "")


def block(name: str, fields: Iterable[Field]) -> tuple[Field, ...]:
    """`fields` as the fields of the block `name` ('data': 'image_size' -> 'data.image_size')."""
    return tuple(dataclasses.replace(field, name=f"{name}.{field.name}") for field in fields)


def defaults(fields: Iterable[Field]) -> dict[str, Any]:
    return {field.name: field.default for field in fields}


def value_at(values: Mapping[str, Any], dotted: str) -> Any:
    """values['data']['image_size'] for 'data.image_size'."""
    for key in dotted.split("."):
        values = values[key]
    return values


def errors(fields: Iterable[Field], values: Mapping[str, Any], where: str = "") -> list[str]:
    """One line per field that its declaration refuses the value of in `values` (nested
    blocks, as a config holds them), named `where` + its dotted name."""
    return [f"{where}{field.name}={_shown(value)}: {message}" for field in fields
            if (message := field.error(value := value_at(values, field.name)))]


def _shown(value: Any) -> str:
    """`value` as a recipe writes it: a dict held as a ConfigDict as the plain dict (its repr
    is YAML over several lines)."""
    return repr(value.to_dict() if hasattr(value, "to_dict") else value)


def use(allowed: tuple[Any, ...]) -> str:
    """'use a, b or c.': what a refused choice is told."""
    names = [str(value) for value in allowed]
    return f"use {', '.join(names[:-1])} or {names[-1]}." if len(names) > 1 else f"use {names[0]}."


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' Did you mean X?' for the nearest known name to a mistyped one, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


# Checks shared by declarations: each returns '' for a good value.
def in_range(low: float, high: float = math.inf, *, low_open: bool = False,
             high_open: bool = False) -> Callable[[Any], str]:
    """A check for a number between `low` and `high`, each bound included unless open:
    in_range(0, 1, high_open=True) is [0, 1), in_range(0) is >= 0."""
    def check(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
            return ""
        if high == math.inf:
            return f"must be {'>' if low_open else '>='} {low}"
        return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    return check


def positive(value: Any) -> str:
    return "" if isinstance(value, (int, float)) and value > 0 else "must be a positive number"


def positive_int(value: Any) -> str:
    return "" if isinstance(value, int) and value > 0 else "must be a positive whole number"


fraction = in_range(0, 1)


def fraction_range(value: Any) -> str:
    """A (low, high) pair with 0 < low <= high <= 1: an area fraction range."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, float)) for v in value) and 0 < value[0] <= value[1] <= 1)
    return "" if ok else "must be a pair (low, high) with 0 < low <= high <= 1"
