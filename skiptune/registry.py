"""One small generic registry: named things, validated on registration and lookup.

Used for samplers, feature extractors, backbones, skip adapters and named models, so the CLI can
take its choices from the registry instead of if/elif chains. A registry given a ``loader`` calls it
before its first lookup (``skiptune.plugins`` loads the plugins that fill its registries that way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from skiptune.errors import SkiptuneError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects of one kind, with clear errors for unknown names."""

    def __init__(self, kind: str, *, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader  # called before every lookup; it must be cheap after its first call

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

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
        self._load()
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "(none registered)"
            raise SkiptuneError(f"unknown {self.kind} {name!r}; expected one of: {choices}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)
