"""``--resume``: what earlier runs finished, from their output and their work file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from eagle3kit.errors import UserError
from eagle3kit.regenerate.answers import Answer
from eagle3kit.regenerate.config import RegenConfig, manifest_path
from eagle3kit.regenerate.records import Item, source_digest
from eagle3kit.regenerate.worklog import _check_settings, read_work
from eagle3kit.ui import UI


def _read_output(out: Path) -> Iterable[tuple[str, list[dict[str, str]], set[int]]]:
    """(id, conversation, truncated turns) of each record of an earlier run's output."""
    from eagle3kit.train.data import read_unified

    try:
        for record in read_unified(out, keep=("truncated_turns",)):
            truncated = record.get("truncated_turns")
            yield (record["id"], record["conversations"],
                   {t for t in truncated if isinstance(t, int)} if isinstance(truncated, list) else set())
    except UserError as error:  # bad JSON or a bad record
        raise UserError(f"{error}; pass --overwrite to start again") from None


def _resume_state(cfg: RegenConfig, items: list[Item], out: Path, work: Path, ui: UI) -> tuple[dict | None, int | None]:
    """Fill the items with what earlier runs finished. Returns (work header, good bytes of
    the work file) so that it can be appended to."""
    by_key = {it.key: it for it in items}
    reused = stale = 0
    if out.is_file():
        manifest = manifest_path(out)
        if manifest.is_file():
            try:
                _check_settings(json.loads(manifest.read_text()).get("settings"), cfg, manifest)
            except json.JSONDecodeError:
                ui.warn(f"{manifest}: not JSON; not checking the earlier settings")
        # An output record is matched to the first record of this input with its id and its
        # messages not matched yet: the output holds only finished records, so counting
        # occurrences of a repeated id would pair them with the wrong ones.
        open_items: dict[str, list[Item]] = {}
        for it in items:
            open_items.setdefault(it.id, []).append(it)
        for rid, conversation, truncated in _read_output(out):
            candidates = open_items.get(rid)
            if not candidates:
                continue
            digest = source_digest(conversation)
            item = next((it for it in candidates if it.src == digest), None)
            if item is None:
                stale += 1
                continue
            candidates.remove(item)
            item.answers = [Answer(conversation[p]["value"], k in truncated) for k, p in enumerate(item.turns)]
            reused += 1
    header, keep = None, None
    if work.is_file():
        header, entries, keep = read_work(work, ui)
        if header:
            _check_settings(header.get("settings"), cfg, work)
        found: dict[str, dict[int, Answer]] = {}
        for e in entries:
            item = by_key.get(e["key"])
            if item is None or "answer" not in e or not isinstance(e.get("answer"), str):
                continue  # a failure (retried now), or a record not in this input / --limit
            if e.get("src") != item.src:
                stale += 1
                continue
            turns = found.setdefault(item.key, {})
            if e["turn"] not in turns:  # the first of duplicates wins
                turns[e["turn"]] = Answer(e["answer"], bool(e.get("truncated")), e.get("tokens"))
        for key, turns in found.items():
            item = by_key[key]
            if item.complete:
                continue  # already in the output
            answers = list(item.answers)
            while len(answers) in turns and len(answers) < len(item.turns):
                answers.append(turns[len(answers)])
            item.answers = answers
    done = sum(it.complete for it in items)
    partial = sum(bool(it.answers) and not it.complete for it in items)
    for it in items:
        it.done_before = it.complete
    if stale:
        ui.warn(f"{stale} earlier results belong to records whose messages changed in {cfg.input_path}; "
                "they are regenerated")
    ui.log(f"resuming: {done} records done before{f', {partial} part-way' if partial else ''}"
           + (f" ({reused} from {out})" if reused else ""))
    return header, keep
