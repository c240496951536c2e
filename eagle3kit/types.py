"""Plain data types shared by the plugins and the core: what a source declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class HubRepo:
    """One place on the Hugging Face Hub a source can be loaded from.

    ``repo_id`` is passed to ``datasets.load_dataset`` (a Hub id, or a local folder).
    ``data_files`` restricts the load to some files of the repository (a file name, a
    list, or a ``{split: files}`` mapping), ``split`` names the split to read and
    ``revision`` pins a commit.
    """

    repo_id: str
    split: str = "train"
    data_files: str | tuple[str, ...] | Mapping[str, Any] | None = None
    revision: str | None = None
    name: str | None = None

    def describe(self) -> str:
        text = f"{self.repo_id} [{self.split}]"
        if self.data_files:
            files = self.data_files
            if isinstance(files, (list, tuple)):
                files = ", ".join(files)
            text += f" ({files})"
        return text


@dataclass(frozen=True)
class Option:
    """A ``--source NAME:key=value`` option a source accepts beyond the built-in ones.

    ``parse`` turns the text after ``=`` into a value and raises ``ValueError`` with a
    short reason when the text is not acceptable.
    """

    name: str
    help: str
    parse: Callable[[str], Any] = str
    default: Any = None


@dataclass(frozen=True)
class Source:
    """A data set a plugin provides, declared from the ``register_sources`` hook.

    ``repos`` lists the Hub locations in fallback order: the first that loads is used,
    every failure is logged with its reason. ``options`` are extra options the source
    accepts (``path``, ``limit`` and ``weight`` are accepted by every source).
    """

    name: str
    description: str
    repos: tuple[HubRepo, ...] = ()
    options: tuple[Option, ...] = ()
    homepage: str | None = None
    #: Filled in by eagle3kit: the plugin that registered the source and its version.
    plugin: str = field(default="", compare=False)
    plugin_version: str = field(default="", compare=False)
