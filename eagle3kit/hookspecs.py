"""The hooks a plugin can implement: the whole plugin API of eagle3kit.

A plugin is any module or object with functions decorated by ``@eagle3kit.hookimpl``
whose names match a hook below, made known through an entry point in the ``eagle3kit``
group. The built-in sources (``eagle3kit.sources.ultrachat``, ``...sharegpt``) are
plugins of exactly this kind, declared in eagle3kit's own ``pyproject.toml``.

Implementations may accept any subset of a hook's arguments, by name.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from eagle3kit.types import Source

hookspec = pluggy.HookspecMarker("eagle3kit")


@hookspec
def register_sources(register: Callable[[Source], None]) -> None:
    """Declare the data sets this plugin provides.

    Called once when the plugin manager is built, before any command runs. Call
    ``register(Source(...))`` once per source. A source's ``name`` is what users type in
    ``--source NAME``; two plugins registering one name is an error naming both. A plugin
    that registers something invalid (not a Source, a ``repos`` entry that is not a
    HubRepo, an option named like a common one, one name twice) fails to load.

    :param register: callback taking a :class:`eagle3kit.Source`.
    :returns: nothing; the return value is ignored.
    """


@hookspec(firstresult=True)
def convert_to_unified(source: str, record: dict[str, Any], options: dict[str, Any]) -> list[dict[str, str]] | None:
    """Turn one raw record of ``source`` into the messages of one conversation.

    Called once per raw record, only on the plugin that registered ``source`` (never on
    the others), in worker processes when ``--num-proc`` > 1: keep it a pure function of
    its arguments, defined at module level, so it pickles and its cache fingerprint holds.

    :param source: the name of the source the record comes from (one plugin may register
        several sources and dispatch on this).
    :param record: the raw record as a dict, exactly as stored in the source's file or
        Hub data set (JSON objects, Parquet rows or Arrow rows).
    :param options: the source's ``--source NAME:key=value`` options, parsed, including
        ``path``, ``limit`` and ``weight``.
    :returns: a list of ``{"from": role, "value": text}`` messages in order. ``role`` may
        be the source's own name for it (``user``, ``assistant``, ``chatgpt``, ...):
        eagle3kit maps roles and applies the clean-up rules of :mod:`eagle3kit.unified`
        itself, so every source is cleaned the same way. Return ``[]`` for a record that
        holds no conversation (counted as ``too_short``).
    :raises ValueError: (or :class:`eagle3kit.RecordError`, ``KeyError``, ``TypeError``)
        when the record is malformed; the message says what is wrong, eagle3kit adds where.
    """
