"""The plugin registry: build a plugin manager, load every plugin, index their sources.

Plugins are found through the ``eagle3kit`` entry-point group only; the built-in
sources are declared there by eagle3kit's own ``pyproject.toml``, so they load exactly
like a third-party ``pip install eagle3kit-mydata``.

* A plugin that fails to import (even with ``SystemExit``), implements a hook that does not
  exist, or registers an invalid source is skipped with a warning naming it, its
  distribution and its error; ``EAGLE3KIT_STRICT_PLUGINS=1`` makes that fatal.
* ``EAGLE3KIT_BLOCK_PLUGINS=name1,name2`` blocks plugins by entry-point name: they are not
  imported, but listed as blocked; a name that matches no plugin is warned about.
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
from eagle3kit.errors import PluginError, UserError, raised_at
from eagle3kit.sourcespec import COMMON_OPTIONS
from eagle3kit.types import HubRepo, Option, Source

ENTRY_POINT_GROUP = "eagle3kit"
STRICT_ENV = "EAGLE3KIT_STRICT_PLUGINS"
BLOCK_ENV = "EAGLE3KIT_BLOCK_PLUGINS"
#: The distribution recorded for a plugin passed to load_registry(extra_plugins=...).
IN_PROCESS = "(registered in process)"
#: What --source accepts as a source name (eagle3kit.sourcespec parses it).
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
#: What an option name may be (sourcespec splits NAME:k=v,k=v only before such a key).
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    #: The installed plugins not loaded because ``EAGLE3KIT_BLOCK_PLUGINS`` names them.
    blocked: dict[str, PluginInfo] = field(default_factory=dict)

    def source(self, name: str) -> Source:
        """The source registered as ``name``, or a UserError listing the known ones."""
        try:
            return self.sources[name]
        except KeyError:
            pass
        if name in self.blocked:  # blocked plugins are not imported: a plugin of the source's name is the owner
            info = self.blocked[name]
            raise UserError(
                f"source {name!r} is not loaded: its plugin {name!r} ({info.distribution} {info.version}) is blocked "
                f"by {BLOCK_ENV}. Remove {name!r} from {BLOCK_ENV} to use it."
            )
        failed = dict(self.failed)
        if name in failed:
            raise UserError(f"source {name!r} is not loaded: its plugin {name!r} failed to load ({failed[name]}). "
                            "Upgrade or uninstall that plugin (`eagle3kit plugins` lists it).")
        known = ", ".join(sorted(self.sources)) or "(none)"
        blocked = f" Blocked plugins, which may provide it: {', '.join(sorted(self.blocked))}." if self.blocked else ""
        if self.failed:  # a plugin whose source names differ from its own name
            blocked += (f" Plugins that failed to load, which may provide it: "
                        f"{', '.join(sorted(n for n, _ in self.failed))} (`eagle3kit plugins` shows why).")
        raise UserError(
            f"unknown source {name!r}. Known sources: {known}. "
            f"Run `eagle3kit sources` to list them, or install the plugin that provides it.{blocked}"
        )

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


def _sources_problem(declared: list[Any]) -> str | None:
    """What is wrong with what one plugin passed to ``register()``, or None."""
    names: set[str] = set()
    for source in declared:
        problem = _source_problem(source, names)
        if problem:
            return problem
        names.add(source.name)
    return None


def _source_problem(source: Any, taken: set[str]) -> str | None:
    """What is wrong with one ``register()`` argument (``taken``: the plugin's source names
    so far), or None."""
    if not isinstance(source, Source):
        return f"register() was given a {type(source).__name__}; pass an eagle3kit.Source"
    name = source.name
    if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
        return (f"it registers a source named {name!r}; a source name may hold only letters, digits, '_', '.' "
                "and '-' (it is typed in --source NAME:key=value)")
    if name in taken:
        return f"it registers the source {name!r} twice"
    if not isinstance(source.description, str):
        return f"source {name!r}: description is a {type(source.description).__name__}; pass a str"
    for what, kind in (("repos", HubRepo), ("options", Option)):
        items = getattr(source, what)
        if not isinstance(items, (tuple, list)):
            return f"source {name!r}: {what} is a {type(items).__name__}; pass a tuple of eagle3kit.{kind.__name__}"
        for i, item in enumerate(items):
            if not isinstance(item, kind):
                return f"source {name!r}: {what}[{i}] is a {type(item).__name__}; pass an eagle3kit.{kind.__name__}"
            if kind is HubRepo and not (isinstance(item.repo_id, str) and item.repo_id
                                        and isinstance(item.split, str)):
                return (f"source {name!r}: repos[{i}] has repo_id {item.repo_id!r} and split {item.split!r}; "
                        "both must be text")
    common = [o.name for o in COMMON_OPTIONS]
    seen: set[str] = set()
    for option in source.options:
        if not isinstance(option.name, str) or not _OPTION_NAME.fullmatch(option.name):
            return (f"source {name!r}: option name {option.name!r} is not a word of letters, digits and '_' "
                    "(it is typed in --source NAME:key=value)")
        if option.name in common:
            return (f"source {name!r}: option {option.name!r} is one every source accepts "
                    f"({', '.join(common)}); give the source's own option another name")
        if option.name in seen:
            return f"source {name!r}: option {option.name!r} is declared twice"
        if not callable(option.parse):
            return f"source {name!r}: option {option.name!r} has a parse that is not callable"
        seen.add(option.name)
    return None


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
    blocked = list(blocked)
    pm = make_plugin_manager()
    for name in blocked:
        pm.set_blocked(name)
    registry = Registry(pm=pm)

    def fail(name: str, error: BaseException | str, info: PluginInfo) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}{raised_at(error)}"
        if strict:
            raise PluginError(f"plugin {name!r} failed to load: {text}")
        registry.failed.append((name, text))
        origin = "" if info.distribution == IN_PROCESS else (
            f" It comes from {info.distribution} {info.version}: upgrade or uninstall it, or block it with "
            f"{BLOCK_ENV}={name}.")
        _warn(f"plugin {name!r} failed to load and is skipped ({text}).{origin} Set {STRICT_ENV}=1 to make this fatal.")

    candidates: list[tuple[str, Callable[[], Any], PluginInfo]] = []
    if entry_points:
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?")
            candidates.append((ep.name, ep.load, info))
    for name, plugin in extra_plugins:
        version = str(getattr(plugin, "__version__", "") or "?")
        candidates.append((name, (lambda p=plugin: p), PluginInfo(name, IN_PROCESS, version)))

    for name, load, info in candidates:
        if pm.is_blocked(name):
            registry.blocked.setdefault(name, info)
            continue
        if pm.has_plugin(name):
            first = registry.plugins.get(name)
            fail(name, f"another plugin, from {first.distribution if first else '?'}, is already registered under this "
                       f"name; {BLOCK_ENV}={name} would block both", info)
            continue
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - any import error of a plugin is reported
            fail(name, error, info)
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as error:
            pm.unregister(name=name)
            fail(name, f"{error} (hooks eagle3kit knows: {', '.join(_hook_names())})", info)  # with their arguments
            continue
        registry.plugins[name] = info
    known_names = sorted({name for name, _, _ in candidates})
    for name in blocked:
        if name not in known_names:
            _warn(f"{BLOCK_ENV} names {name!r}, but no plugin is called that (the plugins are: "
                  f"{', '.join(known_names) or '(none)'}); check the spelling.")

    owners: dict[str, str] = {}
    for name in list(registry.plugins):
        plugin = pm.get_plugin(name)
        others = [p for p in pm.get_plugins() if p is not plugin]
        declared: list[Any] = []  # checked once the hook returns
        info = registry.plugins[name]
        try:
            register_sources = pm.subset_hook_caller("register_sources", remove_plugins=others)
            returned = register_sources(register=lambda source: declared.append(source))
            problem = _sources_problem(declared)
            if problem is None and not declared:
                _warn(f"plugin {name!r} ({info.distribution}) registers no source: " + _why_no_source(plugin, returned))
        except (Exception, SystemExit) as error:  # noqa: BLE001 - skipped like a plugin failing to import
            problem = error
        if problem is not None:
            registry.plugins.pop(name)
            pm.unregister(name=name)
            fail(name, problem, info)
            continue
        for source in declared:
            if source.name in owners:
                first, second = owners[source.name], name
                if registry.plugins[second].distribution == "eagle3kit":  # the built-in first; block the other
                    first, second = second, first
                raise PluginError(
                    f"two plugins register the source {source.name!r}: {first!r} "
                    f"({registry.plugins[first].distribution}) and {second!r} "
                    f"({registry.plugins[second].distribution}). Uninstall one, or block one with "
                    f"{BLOCK_ENV}={second}."
                )
            owners[source.name] = name
            registry.sources[source.name] = replace(source, repos=tuple(source.repos), options=tuple(source.options),
                                                    plugin=name, plugin_version=info.version)
    return registry


def _why_no_source(plugin: Any, returned: Any) -> str:
    """Why a plugin's register_sources registered nothing, as its author would fix it."""
    if any(isinstance(r, Source) for r in returned or []):
        return "its register_sources returned a Source; call register(source) instead"
    hook = getattr(plugin, "register_sources", None)
    if hook is not None and not hasattr(hook, "eagle3kit_impl"):
        return "its register_sources is not marked @hookimpl (from eagle3kit import hookimpl)"
    if hook is None:
        return "it has no register_sources hook (see docs/plugins.md)"
    return "its register_sources called register() for none"


def _hook_names() -> list[str]:
    """Each hook with the arguments an implementation may take: ``register_sources(register)``."""
    import inspect

    return [f"{n}({', '.join(inspect.signature(getattr(hookspecs, n)).parameters)})" for n in dir(hookspecs)
            if hasattr(getattr(hookspecs, n), "eagle3kit_spec")]


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
