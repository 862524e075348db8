"""One small generic registry: named things, validated on registration and lookup.

Used for samplers, feature extractors, backbones, skip adapters and named models, so the CLI can
take its choices from the registry instead of if/elif chains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from skiptune.errors import SkiptuneError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with clear errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, replace: bool = False) -> T:
        if not name or name != name.strip():
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string without edge spaces")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object under ``name``."""

        def wrap(item: T) -> T:
            return self.register(name, item)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise SkiptuneError(f"unknown {self.kind} {name!r}; expected one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
