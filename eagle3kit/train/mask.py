"""The assistant-only loss mask, and truncation at a turn boundary.

The mask comes from the template itself: each assistant turn's span is found by
rendering the conversation up to that turn with the generation prompt (where the answer
starts) and through that turn (where it ends), and diffing against the full rendering.
No header strings are kept by hand, so Llama 3.x, Qwen 2.5/3 (ChatML) and any other
template work. The span covers the answer and the template's end-of-turn marker (what the
model generates before it stops), not white space after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from eagle3kit.train.template import TemplateError, render, require_chat_template, to_messages


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the character span of every assistant turn."""
    require_chat_template(tokenizer)
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        if not full.startswith(before):
            raise TemplateError(
                "the chat template renders earlier turns differently once later turns follow "
                f"(turn {i}); cannot locate the answer's tokens"
            )
        start = len(before)
        through = render(tokenizer, messages[: i + 1])
        if full.startswith(through) and len(through) > start:
            end = len(through)
        else:  # the template renders a final turn differently from a middle one (e.g. Qwen 3's think block)
            content = message["content"]
            at = full.find(content, start)
            if at < 0:
                raise TemplateError(f"cannot find assistant turn {i} in the rendered conversation")
            end = at + len(content)
            closing = through[through.rfind(content) + len(content) :].rstrip()
            if closing and full.startswith(closing, end):
                end += len(closing)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return full, spans


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
    mask = np.zeros(len(ids), dtype=np.int8)
    ends = []
    for s, e in spans:
        lo, hi = np.searchsorted(starts, s, "left"), np.searchsorted(starts, e, "left")
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
    """``datasets.map`` function: unified conversations -> ids, mask and truncation flags."""
    out: dict[str, list] = {"input_ids": [], "loss_mask": [], "truncated": [], "cut_mid_turn": [], "length": []}
    for conversation in batch["conversations"]:
        t = tokenize_conversation(tokenizer, conversation, max_len)
        out["input_ids"].append(t.input_ids)
        out["loss_mask"].append(t.loss_mask)
        out["truncated"].append(t.truncated)
        out["cut_mid_turn"].append(t.cut_mid_turn)
        out["length"].append(len(t.input_ids))
    return out
