"""ShareGPT: conversations shared from ChatGPT, Vicuna's cleaned split.

Primary: ``anon8231489123/ShareGPT_Vicuna_unfiltered`` (the file
``ShareGPT_V3_unfiltered_cleaned_split.json``, a JSON array of ``{"id", "conversations":
[{"from", "value"}]}``); fallback: ``RyokoAI/ShareGPT52K`` (the same shape). Mirrors that
say ``messages``/``role``/``content`` instead are read too.
"""

from __future__ import annotations

from typing import Any

from eagle3kit import HubRepo, RecordError, Source, hookimpl

NAME = "sharegpt"


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
        out.append({"from": role, "value": value})
    return out
