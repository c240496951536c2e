"""eagle3kit: train EAGLE-3 draft models for speculative decoding.

This module is imported by every command and by every plugin, so it stays light: it
imports pluggy and the small public types, never torch, transformers or datasets.

A source plugin needs only ``from eagle3kit import hookimpl, Source, HubRepo``.
"""

from importlib.metadata import PackageNotFoundError, version as _version

import pluggy

from eagle3kit.errors import Eagle3KitError, RecordError, UserError
from eagle3kit.types import HubRepo, Option, Source

try:
    __version__ = _version("eagle3kit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Marker for hook implementations: decorate plugin functions with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker("eagle3kit")

__all__ = [
    "Eagle3KitError",
    "HubRepo",
    "Option",
    "RecordError",
    "Source",
    "UserError",
    "__version__",
    "hookimpl",
]
