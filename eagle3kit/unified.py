"""The unified conversation record and the clean-up rules, in one place.

Every source's ``convert_to_unified`` hook returns raw ``{"from", "value"}`` messages;
:func:`clean_messages` turns them into the unified conversation, or says which rule
dropped it. Pure functions of their arguments: safe in worker processes.

The rules, in order (``tests/test_unified.py`` pins each one):

1. Roles map to ``human``, ``gpt`` or ``system`` (:data:`ROLE_MAP`, compared after
   stripping and lower-casing). Any other role drops the conversation (``unknown_role``).
2. Every value is stripped of surrounding white space.
3. A ``system`` message at position 0 with a non-empty value is kept as the first entry;
   otherwise dropped. Then the messages before the first ``human`` message are dropped.
4. From there the messages must alternate ``human``, ``gpt``, ``human``, ... The
   conversation is cut just before the first message that breaks the alternation or
   whose value is empty.
5. A trailing ``human`` message is dropped. Fewer than two ``human``/``gpt`` messages
   left: the conversation is dropped (``too_short``).

Exact duplicates across the whole mix are removed later, in :mod:`eagle3kit.mix`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from eagle3kit.errors import RecordError

HUMAN, GPT, SYSTEM = "human", "gpt", "system"

#: Raw role name -> unified role. UltraChat uses user/assistant/system; ShareGPT
#: human/user and gpt/chatgpt/bing/bard/assistant/model.
ROLE_MAP: dict[str, str] = {
    "human": HUMAN,
    "user": HUMAN,
    "gpt": GPT,
    "chatgpt": GPT,
    "bing": GPT,
    "bard": GPT,
    "assistant": GPT,
    "model": GPT,
    "system": SYSTEM,
}

KEPT = "kept"
UNKNOWN_ROLE = "unknown_role"
TOO_SHORT = "too_short"
INVALID = "invalid"
#: Every status a raw record can end with, in the order reports list them.
STATUSES = (KEPT, UNKNOWN_ROLE, TOO_SHORT, INVALID)


def _check_messages(messages: Any) -> list[tuple[str, str]]:
    """Validate the hook's return value; raise RecordError naming the bad message."""
    if not isinstance(messages, (list, tuple)):
        raise RecordError(f"the converter returned {type(messages).__name__}, expected a list of messages")
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"message {i} is {type(message).__name__}, expected an object with 'from' and 'value'")
        for key in ("from", "value"):
            if key not in message:
                raise RecordError(f"message {i} has no {key!r}")
            if not isinstance(message[key], str):
                got = type(message[key]).__name__
                raise RecordError(f"message {i} {key!r} is {got}, expected a string")
        pairs.append((message["from"], message["value"]))
    return pairs


def clean_messages(messages: Iterable[dict[str, str]]) -> tuple[list[dict[str, str]] | None, str]:
    """Apply rules 1-5 to raw messages.

    Returns ``(conversation, KEPT)`` or ``(None, reason)`` with reason ``unknown_role`` or
    ``too_short``. Raises :class:`RecordError` when a message is not a
    ``{"from": str, "value": str}`` object.
    """
    mapped = []
    for role, value in _check_messages(messages):
        unified = ROLE_MAP.get(role.strip().lower())
        if unified is None:
            return None, UNKNOWN_ROLE
        mapped.append((unified, value.strip()))

    head = []
    if mapped and mapped[0][0] == SYSTEM and mapped[0][1]:
        head.append({"from": SYSTEM, "value": mapped[0][1]})
    start = next((i for i, (role, _) in enumerate(mapped) if role == HUMAN), len(mapped))

    turns = []
    expected = HUMAN
    for role, value in mapped[start:]:
        if role != expected or not value:
            break
        turns.append({"from": role, "value": value})
        expected = GPT if expected == HUMAN else HUMAN
    if turns and turns[-1]["from"] == HUMAN:
        turns.pop()
    if len(turns) < 2:
        return None, TOO_SHORT
    return head + turns, KEPT


def conversation_json(conversation: list[dict[str, str]]) -> str:
    """The canonical JSON text of a conversation (the same bytes for equal conversations)."""
    return json.dumps(conversation, ensure_ascii=False)


def conversation_key(conversation_text: str) -> bytes:
    """A 16-byte digest of a conversation's canonical JSON: the duplicate key."""
    return hashlib.sha256(conversation_text.encode("utf-8")).digest()[:16]  # sha256: hardware-accelerated


def record_json(record_id: str, conversation_text: str) -> str:
    """One unified JSONL line (without newline): ``{"id": ..., "conversations": [...]}``."""
    return '{"id": ' + json.dumps(record_id, ensure_ascii=False) + ', "conversations": ' + conversation_text + "}"


def validate_unified(record: Any, where: str) -> list[dict[str, str]]:
    """Check a record read back from a unified JSONL file; return its conversation.

    Used by the trainer and the evaluator on files a user may have written by hand:
    raises :class:`RecordError` naming ``where`` and the problem.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, found {type(record).__name__}")
    conversation = record.get("conversations")
    if not isinstance(conversation, list):
        raise RecordError(f"{where}: 'conversations' must be a list of {{'from', 'value'}} messages")
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or message.get("from") not in (HUMAN, GPT, SYSTEM):
            raise RecordError(f"{where}: message {i} must have 'from' human, gpt or system")
        if not isinstance(message.get("value"), str):
            raise RecordError(f"{where}: message {i} must have a string 'value'")
    return conversation
