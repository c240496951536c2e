"""The assistant-only loss mask, and truncation at a turn boundary.

The mask comes from the template itself: each assistant turn's span is found by
rendering the conversation up to that turn with the generation prompt (where the answer
starts) and through that turn (where it ends), and diffing against the full rendering.
No header strings are kept by hand, so Llama 3.x, Qwen 2.5/3 (ChatML) and any other
template work. The span covers the answer and the template's end-of-turn marker (what the
model generates before it stops), not white space after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from eagle3kit.errors import quiet_worker_interrupts
from eagle3kit.train.template import TemplateError, render, require_chat_template, to_messages


#: An answer no conversation holds: rendered in a turn's place, it shows what the template
#: writes around an answer
_PROBE = "EAGLE3KIT_ANSWER_PROBE_7f3a"


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the character span of every assistant turn."""
    require_chat_template(tokenizer)
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _answer_start(tokenizer, messages, i, full)
        end = _answer_end(tokenizer, messages, i, full, start)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return full, spans


def _answer_start(tokenizer, messages: list[dict[str, str]], i: int, full: str) -> int:
    """Where turn ``i``'s answer starts in ``full``: where the conversation before it, with
    the generation prompt, ends."""
    before = render(tokenizer, messages[:i], generation_prompt=True)
    if full.startswith(before):
        return len(before)
    # The generation prompt opens the answer with text the rendered turn lacks (Qwen 3
    # without thinking: an empty think block; DeepSeek-R1: "<think>"): the answer starts
    # where the two part, if the turns before it are rendered alike.
    earlier = render(tokenizer, messages[:i]) if i else ""
    shared = len(os.path.commonprefix([before, full]))
    if full.startswith(earlier) and shared >= len(earlier) and shared > 0:
        return shared
    raise TemplateError(f"the chat template renders the turns before assistant turn {i} differently once later "
                        "turns follow; cannot locate the answer's tokens")


def _end_marker(tokenizer, messages: list[dict[str, str]], i: int) -> str:
    """What the template writes right after an answer, up to the first white space after
    it: the end-of-turn marker the model generates last (``<|im_end|>``, ``<|eot_id|>``,
    Phi-3's ``<|end|>``, which its template follows with ``<|endoftext|>`` at the end of a
    conversation), or "" if nothing follows."""
    probe = render(tokenizer, [*messages[:i], {"role": "assistant", "content": _PROBE}])
    at = probe.find(_PROBE)
    if at < 0:
        return ""
    tail = probe[at + len(_PROBE):]
    rest = tail.lstrip()
    if not rest:
        return ""
    word = rest.split(None, 1)[0]
    return tail[: len(tail) - len(rest) + len(word)]


def _answer_end(tokenizer, messages: list[dict[str, str]], i: int, full: str, start: int) -> int:
    """Where turn ``i``'s answer ends in ``full``, its end-of-turn marker included."""
    marker = _end_marker(tokenizer, messages, i)
    through = render(tokenizer, messages[: i + 1])
    if full.startswith(through) and len(through) > start:  # the turn renders as it does with the turns after it
        end = len(through)
        at = full.rfind(marker, start, end) if marker else -1
        return at + len(marker) if at >= 0 else end
    # The template renders a final turn differently from a middle one (Qwen 3 keeps only
    # the last turn's think block): the answer runs to the first end-of-turn marker.
    if marker:
        at = full.find(marker, start)
        if at >= 0:
            return at + len(marker)
    content = messages[i]["content"]
    at = full.find(content, start)
    if at < 0:
        raise TemplateError(f"cannot find assistant turn {i} in the rendered conversation")
    return at + len(content)


@dataclass
class Tokenized:
    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool = False  # cut at a turn boundary
    cut_mid_turn: bool = False  # not even the first answer fit: cut inside it


def tokenize_conversation(tokenizer, conversation: Sequence[dict[str, str]], max_len: int) -> Tokenized:
    """Token ids and the assistant-only loss mask of one conversation, at most ``max_len``
    tokens, truncated after the last whole assistant turn that fits."""
    text, spans = assistant_spans(tokenizer, to_messages(conversation))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    token_ends = np.fromiter((o[1] for o in offsets), dtype=np.int64, count=len(offsets))
    mask = np.zeros(len(ids), dtype=np.int8)
    ends = []
    for s, e in spans:
        # every token that overlaps the span: one that starts in the prompt and runs into
        # the answer (a merge across the boundary) is the answer's first token
        lo, hi = np.searchsorted(token_ends, s, "right"), np.searchsorted(starts, e, "left")
        mask[lo:hi] = 1
        ends.append(int(hi))
    truncated = cut = False
    if len(ids) > max_len:
        fitting = [e for e in ends if e <= max_len]
        if fitting:
            n, truncated = fitting[-1], True
        else:
            n, cut = max_len, True
        ids, mask = ids[:n], mask[:n]
    return Tokenized(list(ids), mask.tolist(), truncated, cut)


def tokenize_batch(batch: dict[str, list], *, tokenizer, max_len: int) -> dict[str, list]:
    """``datasets.map`` function: unified conversations -> ids, mask and truncation flags.

    A conversation the template cannot render, or whose answers cannot be located, gets
    no tokens and its reason in ``error`` (counted and named; the others go on)."""
    from jinja2.exceptions import TemplateError as JinjaError

    quiet_worker_interrupts()
    out: dict[str, list] = {"input_ids": [], "loss_mask": [], "truncated": [], "cut_mid_turn": [], "length": [],
                            "error": []}
    for record_id, conversation in zip(batch["id"], batch["conversations"]):
        error = None
        try:
            t = tokenize_conversation(tokenizer, conversation, max_len)
        except (TemplateError, JinjaError) as exc:  # e.g. Gemma's "System role not supported"
            t, error = Tokenized([], []), f"record {record_id}: {exc}"
        out["input_ids"].append(t.input_ids)
        out["loss_mask"].append(t.loss_mask)
        out["truncated"].append(t.truncated)
        out["cut_mid_turn"].append(t.cut_mid_turn)
        out["length"].append(len(t.input_ids))
        out["error"].append(error)
    return out
