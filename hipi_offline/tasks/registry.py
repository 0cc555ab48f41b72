"""The registry of reward families: each family registers the one function that
builds it from its YAML keys (dm_control's ``@SUITE.add``)::

    @FAMILIES.add("target", keys={"feature"}, optional={"dims", "ctrl_cost"})
    def parse_target(body: Mapping[str, Any]) -> TargetFamily: ...

Adding a family is one frozen dataclass and one decorated parse function in
``families.py``; the spec parser, its key checks and its messages read the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from hipi_offline.errors import InputError
from hipi_offline.store.backends import ArrayInfo


class RewardFamily(Protocol):
    """What every family provides."""

    name: str

    @property
    def fields(self) -> tuple[str, ...]: ...

    def columns(self, store_fields: Mapping[str, ArrayInfo]) -> int:
        """The task dimension this family needs on this store (validates fields)."""
        ...

    def reward(self, fields: Mapping[str, Tensor], tasks: Tensor) -> Tensor: ...


ParseFamily = Callable[[Mapping[str, Any]], RewardFamily]


@dataclass(frozen=True)
class FamilyEntry:
    """One registered family: its spec keys and the function that builds it."""

    name: str
    parse: ParseFamily
    """Builds the family from the spec's mapping (its keys already checked)."""
    keys: frozenset[str]
    """Keys the spec must give."""
    optional: frozenset[str]
    """Keys the spec may give."""


class FamilyRegistry:
    """Family name -> :class:`FamilyEntry`, in registration order."""

    def __init__(self) -> None:
        self._entries: dict[str, FamilyEntry] = {}

    def add(
        self, name: str, *, keys: Set[str], optional: Set[str] = frozenset()
    ) -> Callable[[ParseFamily], ParseFamily]:
        """Decorator registering ``parse`` as the family ``name``."""

        def register(parse: ParseFamily) -> ParseFamily:
            if name in self._entries:
                raise ValueError(f"family {name!r} is already registered")
            self._entries[name] = FamilyEntry(name, parse, frozenset(keys), frozenset(optional))
            return parse

        return register

    def names(self) -> tuple[str, ...]:
        """The registered family names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> FamilyEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def parse(self, data: Mapping[str, Any], common: Set[str]) -> RewardFamily:
        """The family a spec names (key ``family``), its keys checked: ``common`` are
        the keys every spec may give."""
        name = data.get("family")
        if not isinstance(name, str) or name not in self._entries:
            raise InputError(f"family: unknown family {name!r} (use {', '.join(self._entries)})")
        entry = self._entries[name]
        unknown = sorted(set(data) - common - entry.keys - entry.optional)
        if unknown:
            allowed = ", ".join(sorted(common | entry.keys | entry.optional))
            raise InputError(f"unknown key {unknown[0]!r} for family {name} (allowed: {allowed})")
        missing = sorted(entry.keys - set(data))
        if missing:
            raise InputError(f"missing key {missing[0]!r} for family {name}")
        return entry.parse(data)


FAMILIES = FamilyRegistry()
"""Every reward family; ``families.py`` registers the built-in five."""
