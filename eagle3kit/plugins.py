"""The plugin registry: build a plugin manager, load every plugin, index their sources.

Plugins are found through the ``eagle3kit`` entry-point group only; the built-in
sources are declared there by eagle3kit's own ``pyproject.toml``, so they load exactly
like a third-party ``pip install eagle3kit-mydata``.

* A plugin that fails to import (or implements a hook that does not exist) is skipped
  with a warning naming it and its error; ``EAGLE3KIT_STRICT_PLUGINS=1`` makes that fatal.
* ``EAGLE3KIT_BLOCK_PLUGINS=name1,name2`` blocks plugins by entry-point name.
* Two plugins registering one source name is an error naming both.

Nothing is loaded at import time: :func:`load_registry` builds a fresh manager per call
(each CLI command calls it once; tests build their own).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy

from eagle3kit import hookspecs
from eagle3kit.errors import PluginError, UserError
from eagle3kit.types import Source

ENTRY_POINT_GROUP = "eagle3kit"
STRICT_ENV = "EAGLE3KIT_STRICT_PLUGINS"
BLOCK_ENV = "EAGLE3KIT_BLOCK_PLUGINS"
#: What --source accepts as a source name (eagle3kit.sourcespec parses it).
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass
class PluginInfo:
    """What ``eagle3kit sources`` and the mix manifest say about one loaded plugin."""

    name: str
    distribution: str
    version: str


def _warn(message: str) -> None:
    print(f"eagle3kit: warning: {message}", file=sys.stderr)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def make_plugin_manager() -> pluggy.PluginManager:
    """A bare plugin manager that knows eagle3kit's hooks and holds no plugin yet."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


@dataclass
class Registry:
    """The loaded plugins and the sources they registered, by name."""

    pm: pluggy.PluginManager
    sources: dict[str, Source] = field(default_factory=dict)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    #: ``(plugin name, error text)`` for every plugin skipped because it failed.
    failed: list[tuple[str, str]] = field(default_factory=list)

    def source(self, name: str) -> Source:
        """The source registered as ``name``, or a UserError listing the known ones."""
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "(none)"
            raise UserError(
                f"unknown source {name!r}. Known sources: {known}. "
                "Run `eagle3kit sources` to list them, or install the plugin that provides it."
            ) from None

    def converter_impl(self, name: str) -> pluggy.HookImpl:
        """The owning plugin's ``convert_to_unified`` implementation for source ``name``.

        Routed to exactly one plugin, the one that registered the source: records are
        never offered to every plugin in turn.
        """
        owner = self.source(name).plugin
        for impl in self.pm.hook.convert_to_unified.get_hookimpls():
            if self.pm.get_name(impl.plugin) == owner:
                return impl
        raise PluginError(
            f"plugin {owner!r} registers source {name!r} but implements no convert_to_unified hook; "
            "add one decorated with @eagle3kit.hookimpl"
        )

    def plugin_versions(self) -> dict[str, str]:
        return {name: f"{info.distribution} {info.version}" for name, info in sorted(self.plugins.items())}


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_registry(
    *,
    extra_plugins: Iterable[tuple[str, Any]] = (),
    entry_points: bool = True,
    strict: bool | None = None,
    blocked: Iterable[str] | None = None,
) -> Registry:
    """Build a fresh plugin manager, load the plugins, and index their sources.

    :param extra_plugins: ``(name, plugin)`` pairs registered besides the entry points
        (tests use this to add a plugin without installing a package).
    :param entry_points: load the ``eagle3kit`` entry points (built-ins included).
    :param strict: a failing plugin raises instead of warning; default from
        ``EAGLE3KIT_STRICT_PLUGINS``.
    :param blocked: plugin names not to load; default from ``EAGLE3KIT_BLOCK_PLUGINS``.
    """
    if strict is None:
        strict = _env_flag(STRICT_ENV)
    if blocked is None:
        blocked = [b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()]
    pm = make_plugin_manager()
    for name in blocked:
        pm.set_blocked(name)
    registry = Registry(pm=pm)

    def fail(name: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if strict:
            raise PluginError(f"plugin {name!r} failed to load: {text}")
        registry.failed.append((name, text))
        _warn(f"plugin {name!r} failed to load and is skipped ({text}). Set {STRICT_ENV}=1 to make this fatal.")

    candidates: list[tuple[str, Callable[[], Any], PluginInfo]] = []
    if entry_points:
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?")
            candidates.append((ep.name, ep.load, info))
    for name, plugin in extra_plugins:
        version = str(getattr(plugin, "__version__", "") or "?")
        candidates.append((name, (lambda p=plugin: p), PluginInfo(name, "(registered in process)", version)))

    for name, load, info in candidates:
        if pm.is_blocked(name):
            continue
        if pm.has_plugin(name):
            fail(name, "another plugin is already registered under this name")
            continue
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except Exception as error:  # noqa: BLE001 - any import error of a plugin is reported
            fail(name, error)
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as error:
            pm.unregister(name=name)
            fail(name, f"{error} (hooks eagle3kit knows: {', '.join(_hook_names())})")
            continue
        registry.plugins[name] = info

    owners: dict[str, str] = {}
    for name in list(registry.plugins):
        plugin = pm.get_plugin(name)
        others = [p for p in pm.get_plugins() if p is not plugin]
        declared: list[Source] = []

        def register(source: Source, _declared: list[Source] = declared, _plugin: str = name) -> None:
            if not isinstance(source, Source):
                raise PluginError(
                    f"plugin {_plugin!r} called register() with {type(source).__name__}; pass an eagle3kit.Source"
                )
            if not _SOURCE_NAME.fullmatch(source.name or ""):
                raise PluginError(
                    f"plugin {_plugin!r} registers a source named {source.name!r}; a source name may hold only "
                    "letters, digits, '_', '.' and '-' (it is typed in --source NAME:key=value)"
                )
            _declared.append(source)

        try:
            pm.subset_hook_caller("register_sources", remove_plugins=others)(register=register)
        except Exception as error:  # noqa: BLE001 - a plugin failing here is skipped like one failing to import
            registry.plugins.pop(name)
            pm.unregister(name=name)
            fail(name, error)
            continue
        info = registry.plugins[name]
        for source in declared:
            if source.name in owners:
                first = owners[source.name]
                raise PluginError(
                    f"two plugins register the source {source.name!r}: {first!r} "
                    f"({registry.plugins[first].distribution}) and {name!r} ({info.distribution}). "
                    f"Uninstall one, or block one with {BLOCK_ENV}={name}."
                )
            owners[source.name] = name
            registry.sources[source.name] = replace(source, plugin=name, plugin_version=info.version)
    return registry


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "eagle3kit_spec"))


@dataclass(frozen=True)
class Converter:
    """A source's ``convert_to_unified`` implementation, bound to its source and options.

    Picklable (it holds the plugin's module-level function by reference), so it can be
    sent to ``datasets.map`` worker processes and hashed into the cache fingerprint.
    """

    source: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]

    def __call__(self, record: dict[str, Any]) -> Any:
        available = {"source": self.source, "record": record, "options": dict(self.options)}
        return self.function(**{name: available[name] for name in self.argnames})


def converter_for(registry: Registry, source: str, options: dict[str, Any]) -> Converter:
    """The :class:`Converter` routing ``source``'s records to the plugin that owns it."""
    impl = registry.converter_impl(source)
    return Converter(source, impl.function, tuple(impl.argnames), tuple(sorted(options.items())))
