"""UltraChat-200k (HuggingFaceH4/ultrachat_200k, split ``train_sft``).

Raw record: ``{"prompt": str, "prompt_id": str, "messages": [{"role": "user" |
"assistant" | "system", "content": str}, ...]}``.
"""

from __future__ import annotations

from typing import Any

from eagle3kit import HubRepo, RecordError, Source, hookimpl

NAME = "ultrachat"


@hookimpl
def register_sources(register):
    register(
        Source(
            name=NAME,
            description="UltraChat-200k: multi-turn dialogues written by ChatGPT (the SFT split)",
            repos=(HubRepo("HuggingFaceH4/ultrachat_200k", split="train_sft"),),
            homepage="https://huggingface.co/datasets/HuggingFaceH4/ultrachat_200k",
        )
    )


@hookimpl
def convert_to_unified(source: str, record: dict[str, Any]):
    if source != NAME:
        return None
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise RecordError(f"'messages' must be a list, found {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"messages[{i}] must be an object, found {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise RecordError(f"messages[{i}].role must be a string, found {type(role).__name__}")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}].content must be a string, found {type(content).__name__}")
        out.append({"from": role, "value": content})
    return out
