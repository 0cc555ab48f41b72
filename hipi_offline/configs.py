"""What every stage's frozen config shares: checks that name the field, strict loading
from JSON, and each field's docstring (the command line's help text).

A config checks itself in ``__post_init__`` with the helpers here; a bad value is a
:class:`FieldError` whose message starts with the field's name (``batch_size: must be
a positive integer, got 0``). The command line spells the same error with the flag
the user typed (``--batch-size: ...``) through :meth:`FieldError.renamed`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from hipi_offline.errors import InputError, one_line
from hipi_offline.preflight import MAX_SEED

C = TypeVar("C")
INT_LIMIT = 2**63
"""Counts, sizes and intervals stay below this (torch's and numpy's int64)."""
MAX_WORKERS = 1024
"""Most worker processes a stage starts."""


class FieldError(InputError):
    """A bad config value: ``<field>: <problem>``. ``mentions`` are the other fields
    the problem names, spelled as they are in ``problem``."""

    def __init__(self, field: str, problem: str, mentions: Sequence[str] = ()) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.mentions = field, problem, tuple(mentions)

    def renamed(self, name: Callable[[str], str]) -> FieldError:
        """The same error with the field and every mentioned field passed through
        ``name`` (a flag for the command line, a prefix for a nested config)."""
        problem = self.problem
        for other in self.mentions:
            problem = re.sub(rf"(?<![\w.-]){re.escape(other)}(?![\w-])", name(other), problem)
        return FieldError(name(self.field), problem, [name(m) for m in self.mentions])


@contextmanager
def named(field: str) -> Iterator[None]:
    """Turn an InputError raised by a check written for ``field`` (its message starting
    with ``<field>: ``) into a :class:`FieldError` of ``field``."""
    try:
        yield
    except FieldError:
        raise
    except InputError as err:
        text, prefix = str(err), f"{field}: "
        raise FieldError(field, text.removeprefix(prefix)) from None


@contextmanager
def nested(rename: Callable[[str], str]) -> Iterator[None]:
    """Re-raise a FieldError from the block with its fields renamed (``steps`` of the
    training settings -> ``train.steps``)."""
    try:
        yield
    except FieldError as err:
        raise err.renamed(rename) from None


# ------------------------------------------------------------------ value checks
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value: Any, field: str, low: int = 1, high: int = INT_LIMIT - 1) -> int:
    """An integer from ``low`` to ``high``; the message says which it must be."""
    if high < INT_LIMIT - 1:
        what = f"an integer from {low} to {high}"
    else:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            low, f"an integer of at least {low}"
        )
    if not _is_int(value):
        raise FieldError(field, f"must be {what}, got {one_line(repr(value), 80)}")
    if not low <= value <= high:
        below = " below 2**63" if value > high == INT_LIMIT - 1 else ""
        raise FieldError(field, f"must be {what}{below}, got {value}")
    return int(value)


MAX_THREADS = 1024
"""More torch threads than this are refused (torch accepts absurd counts, then fails)."""


def check_threads(value: Any, field: str = "threads") -> int:
    """A ``--threads`` count: 0 (the stage's default) to :data:`MAX_THREADS`."""
    return check_int(value, field, 0, MAX_THREADS)


def check_optional_int(value: Any, field: str, low: int = 1, high: int = INT_LIMIT - 1) -> None:
    """None, or what :func:`check_int` accepts."""
    if value is not None:
        check_int(value, field, low, high)


def check_seed(value: Any, field: str = "seed") -> int:
    """A seed from 0 to :data:`~hipi_offline.preflight.MAX_SEED` (2**63 - 1)."""
    return check_int(value, field, 0, MAX_SEED)


def check_number(value: Any, field: str, allow_zero: bool = False) -> float:
    """A finite positive (or, with ``allow_zero``, non-negative) number."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "a non-negative" if allow_zero else "a positive"
        raise FieldError(field, f"must be {what} finite number, got {one_line(repr(value), 80)}")
    return float(value)


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (case matters)."""
    if not isinstance(value, str) or value not in choices:
        raise FieldError(
            field, f"expected one of {', '.join(choices)}, got {one_line(repr(value), 80)}"
        )
    return value


def check_flag(value: Any, field: str) -> bool:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise FieldError(field, f"expected true or false, got {one_line(repr(value), 80)}")
    return bool(value)


def check_texts(value: Any, field: str) -> tuple[str, ...]:
    """A tuple of strings."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise FieldError(field, f"expected a tuple of strings, got {one_line(repr(value), 80)}")
    return value


# ------------------------------------------------------------------ loading
def from_dict(cls: type[C], data: Any, where: str = "config") -> C:
    """``cls(**data)`` for a dataclass, strictly: unknown keys are an InputError naming
    them, JSON lists become the tuples the fields hold, nested dataclass fields (and
    tuples of them) are loaded the same way, and the config checks its values."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise InputError(
            f"{where}: unknown {'keys' if len(unknown) > 1 else 'key'} "
            f"{one_line(', '.join(unknown), 200)} (known: {', '.join(known)})"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _loaded(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    required = [f.name for f in fields(cls) if _required(f) and f.name not in values]  # type: ignore[arg-type]
    if required:
        raise InputError(f"{where}: missing {', '.join(required)}")
    return cls(**values)


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _loaded(value: Any, hint: Any, where: str) -> Any:
    """``value`` from JSON shaped as ``hint`` asks (lists -> tuples, dicts -> dataclasses)."""
    for option in _options(hint):
        if isinstance(option, type) and is_dataclass(option) and isinstance(value, Mapping):
            return from_dict(option, value, where)
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            args = typing.get_args(option)
            inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
            if inner is None:
                return tuple(value)
            return tuple(_loaded(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def _options(hint: Any) -> tuple[Any, ...]:
    """The members of a union (``int | None`` -> int, None), or the type itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


# ------------------------------------------------------------------ docs
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal below it), whitespace collapsed;
    fields without one are left out."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


R = TypeVar("R", bound="RunConfig")


class RunConfig:
    """What the config dataclass of a training run (train-bc, train-rl) shares: its JSON
    form (``out`` as text, ``hidden`` as a list) and its identity, the fields that define
    what the run computes (all but :attr:`run_control`), compared when a run continues."""

    run_control: ClassVar[frozenset[str]] = frozenset()
    """Fields that say where and how the run is carried out, not what it computes."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data["out"] = str(data["out"])
        data["hidden"] = list(data["hidden"])
        return data

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run computes (compared on resume)."""
        return {k: v for k, v in self.to_json().items() if k not in self.run_control}

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        """The config :meth:`to_json` wrote; unknown keys and bad values are InputErrors."""
        return from_dict(cls, data, "config")
