"""eagle3kit-mydata: an example source plugin for eagle3kit.

It adds the source ``mydata``, whose raw format is JSON lines like::

    {"question": "...", "answer": "...", "followups": [{"q": "...", "a": "..."}]}

``followups`` is optional. The package ships a small sample; ``--source mydata`` reads it,
``--source mydata:path=FILE`` reads your own file in the same format.

The plugin is this module: eagle3kit finds it through the ``eagle3kit`` entry point in
``pyproject.toml`` and calls the two functions marked ``@hookimpl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eagle3kit import HubRepo, Option, RecordError, Source, hookimpl

__version__ = "0.1.0"

NAME = "mydata"
#: The folder holding the shipped sample. ``datasets.load_dataset`` accepts a local
#: folder as a repository id, so it serves as this source's (only) "Hub repository":
#: ``--source mydata`` without ``path=`` reads the sample.
SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_FILE = SAMPLE_DIR / "mydata_sample.jsonl"


def parse_yes_no(text: str) -> bool:
    """``yes``/``no`` (also ``true``/``false``, ``1``/``0``) -> bool; anything else is refused."""
    value = text.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ValueError("expected yes or no")


@hookimpl
def register_sources(register):
    register(
        Source(
            name=NAME,
            description="Example question/answer data with follow-ups (eagle3kit-mydata)",
            repos=(HubRepo(str(SAMPLE_DIR)),),
            options=(
                Option("followups", "yes: keep the follow-up questions (default); no: only the first question", parse_yes_no, True),
                Option("system", "a system prompt put before every conversation (default: none)"),
            ),
        )
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{where} must be a string, found {type(value).__name__}")
    return value


@hookimpl
def convert_to_unified(record: dict[str, Any], options: dict[str, Any]) -> list[dict[str, str]]:
    """One ``{"question", "answer", "followups"}`` record -> raw messages.

    eagle3kit only calls this for records of the ``mydata`` source (the source this
    plugin registered), so there is no need to look at the ``source`` argument.
    Roles are given as ``user``/``assistant``: eagle3kit maps them to human/gpt and
    applies its clean-up rules (stripping, alternation, duplicates, ...) itself.
    """
    if "question" not in record:
        raise RecordError("missing field 'question'")
    if "answer" not in record:
        raise RecordError("missing field 'answer'")
    messages = []
    if options.get("system"):
        messages.append({"from": "system", "value": options["system"]})
    messages.append({"from": "user", "value": _text(record["question"], "question")})
    messages.append({"from": "assistant", "value": _text(record["answer"], "answer")})
    followups = record.get("followups")
    if followups is None:
        followups = []
    if not isinstance(followups, list):
        raise RecordError(f"followups must be a list, found {type(followups).__name__}")
    if options.get("followups", True):
        for i, turn in enumerate(followups):
            if not isinstance(turn, dict):
                raise RecordError(f"followups[{i}] must be an object with 'q' and 'a', found {type(turn).__name__}")
            messages.append({"from": "user", "value": _text(turn.get("q"), f"followups[{i}].q")})
            messages.append({"from": "assistant", "value": _text(turn.get("a"), f"followups[{i}].a")})
    return messages
