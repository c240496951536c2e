"""ShareGPT: conversations shared from ChatGPT, Vicuna's cleaned split.

Primary: ``anon8231489123/ShareGPT_Vicuna_unfiltered`` (the file
``ShareGPT_V3_unfiltered_cleaned_split.json``, a JSON array of ``{"id", "conversations":
[{"from", "value"}]}``, answers in markdown); fallbacks: ``Aeala/ShareGPT_Vicuna_unfiltered``
(a re-upload of the same, cleaned further), then ``RyokoAI/ShareGPT52K`` (the same shape,
but each answer is the HTML of the shared page, turned back into markdown here by
:mod:`eagle3kit.sources.chatgpt_html`). Mirrors that say ``messages``/``role``/``content``
instead are read too.
"""

from __future__ import annotations

from typing import Any

from eagle3kit import HubRepo, RecordError, Source, hookimpl
from eagle3kit.sources.chatgpt_html import html_to_markdown, looks_like_html

NAME = "sharegpt"
#: Roles whose text is the user's own (never page HTML).
_ASKING = frozenset({"human", "user", "system"})


@hookimpl
def register_sources(register):
    register(
        Source(
            name=NAME,
            description="ShareGPT: real user conversations with ChatGPT (Vicuna's cleaned split)",
            repos=(
                HubRepo(
                    "anon8231489123/ShareGPT_Vicuna_unfiltered",
                    data_files="ShareGPT_V3_unfiltered_cleaned_split.json",
                ),
                HubRepo("Aeala/ShareGPT_Vicuna_unfiltered", data_files="ShareGPT_V4.3_unfiltered_cleaned_split.json"),
                HubRepo("RyokoAI/ShareGPT52K", data_files=("sg_90k_part1.json", "sg_90k_part2.json")),
            ),
            homepage="https://huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered",
        )
    )


def _field(message: dict[str, Any], names: tuple[str, ...], i: int, what: str) -> str:
    for name in names:
        if name in message:
            value = message[name]
            if not isinstance(value, str):
                raise RecordError(f"conversations[{i}].{name} must be a string, found {type(value).__name__}")
            return value
    raise RecordError(f"conversations[{i}] has no {what} ({' or '.join(names)})")


@hookimpl
def convert_to_unified(source: str, record: dict[str, Any]):
    if source != NAME:
        return None
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list):
        raise RecordError(f"'conversations' must be a list, found {type(turns).__name__}")
    out = []
    for i, message in enumerate(turns):
        if not isinstance(message, dict):
            raise RecordError(f"conversations[{i}] must be an object, found {type(message).__name__}")
        role = _field(message, ("from", "role"), i, "role")
        value = _field(message, ("value", "content", "text"), i, "text")
        if role.strip().lower() not in _ASKING and looks_like_html(value):  # a raw dump's answer: the page's HTML
            value = html_to_markdown(value)
        out.append({"from": role, "value": value})
    return out
