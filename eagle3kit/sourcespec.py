"""``--source NAME[:key=value,...]``: parse the text and check the options.

Every source accepts ``path``, ``repo`` (with ``split`` and ``files``), ``limit`` and
``weight``; a source may declare more
(:class:`eagle3kit.Option`). Errors name the option and what it accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eagle3kit.errors import UserError
from eagle3kit.types import Option, Source


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _hub_repo(text: str) -> str:
    if not text.partition("@")[0] or text.endswith("@") or any(c.isspace() for c in text):
        raise ValueError("expected a dataset id such as org/name, or org/name@REVISION")
    return text


def _file_patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise ValueError("expected file names or glob patterns, comma-separated")
    return patterns


#: Options every source accepts.
COMMON_OPTIONS = (
    Option("path", "a local copy in the source's raw format (.json, .jsonl, .parquet, or a folder), used instead of the Hub"),
    Option("repo", "another Hub dataset in the source's raw format, ID or ID@REVISION, used instead of the source's "
                   "own repositories", _hub_repo),
    Option("split", "with repo, or path= a folder: the split to read (default: the source's, else train)"),
    Option("files", "with repo, or path= a folder: read only these data files (names or glob patterns, "
                    "comma-separated)", _file_patterns),
    Option("limit", "read only the first N raw records", _non_negative_int),
    Option("weight", "share of the final mix (relative to the other sources' weights)", _positive_float),
)

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?::(?P<opts>.*))?$", re.S)


@dataclass(frozen=True)
class SourceSpec:
    """A source name and the raw ``key=value`` texts given after it."""

    name: str
    raw_options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        match = _SPEC.match(text.strip())
        if not match:
            raise UserError(
                f"--source {text!r}: expected NAME or NAME:key=value,key=value (for example ultrachat:limit=1000)"
            )
        pairs = []
        opts = match.group("opts")
        if opts:
            # split on commas that start a new key=value, so a path may contain commas
            for part in re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)", opts):
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise UserError(f"--source {text!r}: option {part!r} is not of the form key=value")
                pairs.append((key.strip(), value.strip()))
        return cls(match.group("name"), tuple(pairs))


def source_options(source: Source) -> tuple[Option, ...]:
    """Every option ``source`` accepts: the common ones, then its own."""
    return COMMON_OPTIONS + tuple(source.options)


def resolve_options(source: Source, spec: SourceSpec) -> dict[str, Any]:
    """Parse ``spec``'s options against what ``source`` accepts; defaults filled in."""
    accepted = {opt.name: opt for opt in source_options(source)}
    values: dict[str, Any] = {name: opt.default for name, opt in accepted.items()}
    seen = set()
    for key, text in spec.raw_options:
        opt = accepted.get(key)
        if opt is None:
            raise UserError(
                f"--source {spec.name}: unknown option {key!r}. {spec.name} accepts: "
                + ", ".join(f"{o.name} ({o.help})" for o in accepted.values())
            )
        if key in seen:
            raise UserError(f"--source {spec.name}: option {key!r} given twice")
        seen.add(key)
        try:
            values[key] = opt.parse(text)
        except (TypeError, ValueError) as error:
            raise UserError(f"--source {spec.name}: bad value {text!r} for option {key!r} ({opt.help}): {error}") from None
        except Exception as error:  # noqa: BLE001 - a plugin's parser that raises something else: named too
            raise UserError(f"--source {spec.name}: bad value {text!r} for option {key!r} ({opt.help}): its parser "
                            f"raised {type(error).__name__}: {error} (a parser should raise ValueError)") from None
    if "path" in seen and "repo" in seen:
        raise UserError(f"--source {spec.name}: give path (a local copy) or repo (a Hub dataset), not both")
    for key in ("split", "files"):
        if key in seen and "repo" not in seen and "path" not in seen:
            raise UserError(f"--source {spec.name}: option {key!r} goes with repo=ID (a Hub dataset) or path=FOLDER")
    return values
