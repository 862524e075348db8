"""Plugins: the named models, feature extractors, reference statistics and image sources.

These four registries are where every name lookup and every CLI choice of those kinds comes from:

    MODELS          name   -> () -> checkpoint path                          --model NAME
    EXTRACTORS      name   -> (*, device, weights_path) -> FeatureExtractor  --extractor NAME
    REFERENCES      name   -> () -> reference statistics path                --reference NAME
    IMAGE_SOURCES   prefix -> ImageSourceKind                                --source PREFIX:ARG

A plugin is a function without arguments that registers into them, declared in the entry-point group
``skiptune.plugins`` of its distribution (``pyproject.toml``)::

    [project.entry-points."skiptune.plugins"]
    mything = "mything.skiptune_plugin:register"

Plugins are loaded once, on the first lookup in any of the four registries: not when skiptune is
imported and not on registration, so a plugin may import any skiptune module without meeting a
half-imported one, and commands that never look a name up never load them. The bundled demo
(``skiptune.demo:register``) is the first plugin; it is loaded, after the general-purpose extractors of
``skiptune.objectives.features``, even where the installed metadata does not list it (a source
checkout on ``PYTHONPATH``). A third-party plugin that fails to load is reported
as a warning naming it; the others still load.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Protocol

from skiptune.errors import SkiptuneError
from skiptune.plugin_types import FeatureExtractor, ImageSource
from skiptune.registry import Registry

ENTRY_POINT_GROUP = "skiptune.plugins"
# loaded first, whatever the installed metadata says: the general-purpose extractors, then the demo
BUILTIN_PLUGINS = ("skiptune.objectives.features:register_extractors", "skiptune.demo:register")

_lock = threading.RLock()  # re-entrant: a plugin's own lookups happen in the loading thread
_state = "new"  # -> "loading" -> "done"


def load_plugins() -> None:
    """Run every plugin's ``register()`` once: the built-in ones, then the entry points' (idempotent).

    Other threads wait until loading is done; the loading thread's own lookups return at once.
    """
    global _state
    if _state == "done":
        return
    with _lock:
        if _state != "new":  # done meanwhile, or a lookup made by a plugin while it registers
            return
        _state = "loading"
        try:
            for spec in BUILTIN_PLUGINS:
                _resolve(spec)()
            for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if entry.value not in BUILTIN_PLUGINS:
                    _load_entry_point(entry)
        finally:
            _state = "done"


def _load_entry_point(entry: metadata.EntryPoint) -> None:
    try:
        entry.load()()
    except Exception as exc:
        warnings.warn(
            f"skiptune plugin {entry.name!r} ({entry.value}) failed to load ({exc!r}); "
            "the names it registers are unavailable",
            stacklevel=3,
        )


def _resolve(spec: str) -> Callable[[], None]:
    module, _, attr = spec.partition(":")
    register: Callable[[], None] = getattr(import_module(module), attr)
    return register


class ImageSourceOpener(Protocol):
    """Opens the images named by ``argument`` (the text after ``PREFIX:``)."""

    def __call__(self, argument: str, *, resolution: int | None) -> ImageSource: ...


@dataclass(frozen=True)
class ImageSourceKind:
    """An image source named ``PREFIX:ARG``; ``usage`` (e.g. ``fmnist:train|fmnist:test``) is shown in
    ``--help`` and in the error for a source that cannot be found."""

    open: ImageSourceOpener
    usage: str


MODELS: Registry[Callable[[], Path]] = Registry("model", loader=load_plugins)
EXTRACTORS: Registry[Callable[..., FeatureExtractor]] = Registry("feature extractor", loader=load_plugins)
REFERENCES: Registry[Callable[[], Path]] = Registry("reference", loader=load_plugins)
IMAGE_SOURCES: Registry[ImageSourceKind] = Registry("image source", loader=load_plugins)


def _path_getter(path: str | Path) -> Callable[[], Path]:
    resolved = Path(path)
    return lambda: resolved


def register_model(name: str, path: str | Path, *, replace: bool = False) -> None:
    """Register ``name`` for the checkpoint at ``path`` (file or diffusers folder; it may not exist yet).

    Plugins are loaded first, so ``replace=True`` overrides a plugin's model of the same name.
    """
    load_plugins()
    MODELS.register(name, _path_getter(path), replace=replace)


def register_reference(name: str, path: str | Path, *, replace: bool = False) -> None:
    """Register ``name`` for the reference statistics at ``path``.

    A study stores the name, not the path, so each worker resolves it on its own machine.
    """
    load_plugins()
    REFERENCES.register(name, _path_getter(path), replace=replace)


def register_extractor(
    name: str, factory: Callable[..., FeatureExtractor], *, replace: bool = False
) -> None:
    """Register a feature extractor factory ``(*, device, weights_path=None) -> FeatureExtractor``."""
    load_plugins()
    EXTRACTORS.register(name, factory, replace=replace)


def register_image_source(
    prefix: str, opener: ImageSourceOpener, *, usage: str, replace: bool = False
) -> None:
    """Register the image sources named ``prefix:ARG`` (``prefix`` without the colon)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]+", prefix):  # 2+ chars: never a drive letter
        raise SkiptuneError(
            f"image source prefix {prefix!r} must be a word of 2+ letters, digits, '_', '.' or '-' "
            "starting with a letter, such as 'fmnist'"
        )
    load_plugins()
    IMAGE_SOURCES.register(prefix, ImageSourceKind(open=opener, usage=usage), replace=replace)
