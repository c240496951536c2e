"""Input records (:class:`Item`), the prompt of each assistant turn and the regenerated record."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eagle3kit.errors import UserError
from eagle3kit.regenerate.answers import Answer
from eagle3kit.regenerate.config import RegenConfig
from eagle3kit.ui import UI


@dataclass
class Item:
    """One input record and its progress."""

    index: int
    key: str  # the id, made unique (a repeated id gets "#2", "#3", ...)
    id: str
    conversation: list[dict[str, str]]  # after --system-prompt
    turns: list[int]  # positions of the assistant messages
    src: str  # digest of the non-assistant messages: stale work is recognised
    answers: list[Answer] = field(default_factory=list)  # regenerated answers 0..len-1
    failure: tuple[int, str] | None = None  # (turn, reason)
    done_before: bool = False  # complete before this run

    @property
    def complete(self) -> bool:
        return bool(self.turns) and len(self.answers) == len(self.turns)

    @property
    def next_turn(self) -> int:
        return len(self.answers)


def apply_system_prompt(conversation: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Set (or with ``""`` remove) the system message of a conversation."""
    if system_prompt is None:
        return list(conversation)
    rest = [m for m in conversation if m["from"] != "system"]
    return ([{"from": "system", "value": system_prompt}] if system_prompt else []) + rest


def source_digest(conversation: Sequence[dict[str, str]]) -> str:
    """Digest of a conversation with its assistant answers blanked."""
    shape = [[m["from"], None if m["from"] == "gpt" else m["value"]] for m in conversation]
    return hashlib.blake2b(json.dumps(shape, ensure_ascii=False).encode("utf-8"), digest_size=12).hexdigest()


def prompt_messages(item: Item, answers: Sequence[str], turn: int) -> list[dict[str, str]]:
    """Chat messages of the prompt for assistant turn ``turn``: every message before it,
    with the earlier assistant answers replaced by the regenerated ``answers``."""
    from eagle3kit.train.template import ROLES

    position = item.turns[turn]
    replaced = {p: answers[k] for k, p in enumerate(item.turns[:turn])}
    return [{"role": ROLES[m["from"]], "content": replaced.get(i, m["value"])}
            for i, m in enumerate(item.conversation[:position])]


def regenerated_record(item: Item) -> dict[str, Any]:
    conversation = [dict(m) for m in item.conversation]
    for k, position in enumerate(item.turns):
        conversation[position] = {"from": "gpt", "value": item.answers[k].text}
    return {"id": item.id, "conversations": conversation,
            "truncated_turns": [k for k, a in enumerate(item.answers) if a.truncated]}


def read_items(cfg: RegenConfig, ui: UI) -> list[Item]:
    from eagle3kit.train.data import read_unified

    if not Path(cfg.input_path).is_file():
        raise UserError(f"input file {cfg.input_path!r} does not exist")
    records = read_unified(cfg.input_path)
    if cfg.limit is not None:
        records = itertools.islice(records, cfg.limit)
    items: list[Item] = []
    seen: dict[str, int] = {}
    keys: set[str] = set()
    repeated = 0
    for index, record in enumerate(records):
        rid = record["id"]
        key = rid
        if key in keys:
            repeated += 1
            n = seen.get(rid, 1)
            while key in keys:
                n += 1
                key = f"{rid}#{n}"
            seen[rid] = n
        keys.add(key)
        conversation = apply_system_prompt(record["conversations"], cfg.system_prompt)
        # assistant messages before the first human one (a greeting) have no question to
        # answer: they stay as they are, and are part of the later prompts
        first = next((i for i, m in enumerate(conversation) if m["from"] == "human"), len(conversation))
        turns = [i for i, m in enumerate(conversation) if m["from"] == "gpt" and i > first]
        items.append(Item(index, key, rid, conversation, turns, source_digest(conversation)))
    if repeated:
        ui.warn(f"{cfg.input_path}: {repeated} records repeat an earlier id; they are kept apart by occurrence "
                "(the output keeps their ids)")
    return items
