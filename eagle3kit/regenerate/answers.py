"""Answers and failures; the ``<think>`` block kept or dropped (``--reasoning``)."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def opened_in_prompt(prompt: str) -> bool:
    """Whether a rendered prompt leaves a ``<think>`` block open for the answer to close
    (DeepSeek-R1's template ends its generation prompt with ``<think>``)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def _closes_prompt_block(text: str, opened: bool | None) -> int:
    """Where a ``</think>`` closing a block the prompt opened is, or -1. ``opened``: what the
    prompt did (None: not known, as from a server: a first ``</think>`` with no opening
    tag before it is taken as that)."""
    if opened is False:
        return -1
    end = text.find(THINK_CLOSE)
    return end if end >= 0 and THINK_OPEN not in text[:end] else -1


def strip_think(text: str, opened: bool | None = None) -> str:
    """Remove a leading ``<think>...</think>`` block and the white space around it.

    An unclosed block (the answer ran out of tokens while thinking) leaves nothing. A
    ``</think>`` closing a block the prompt opened (DeepSeek-R1) drops everything up to it;
    an answer that only mentions the tag is kept whole when the prompt opened nothing.
    """
    s = text.lstrip()
    if s.startswith(THINK_OPEN):
        end = s.find(THINK_CLOSE)
        return "" if end < 0 else s[end + len(THINK_CLOSE):].strip()
    if opened and THINK_CLOSE not in s:
        return ""  # still thinking when it ran out of tokens
    end = _closes_prompt_block(s, opened)
    if end >= 0:
        return s[end + len(THINK_CLOSE):].strip()
    return text.strip()


def keep_think(text: str, reasoning: str | None = None, opened: bool | None = None) -> str:
    """The answer with its thinking kept as one well-formed leading ``<think>`` block.

    ``reasoning`` is what a server returned apart (``reasoning_content``); a block whose
    opening tag was in the prompt gets it back.
    """
    text = text.strip()
    if reasoning and reasoning.strip():
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{strip_think(text) if THINK_CLOSE in text else text}".strip()
    if (opened and not text.startswith(THINK_OPEN)) or _closes_prompt_block(text, opened) >= 0:
        return f"{THINK_OPEN}\n{text}"  # the block the prompt opened
    return text


def shape_answer(content: str, reasoning_text: str | None, mode: str, opened: bool | None = None) -> str:
    """``--reasoning drop|keep`` applied to an answer; ``opened``: whether its prompt opened
    a ``<think>`` block (None: not known)."""
    if mode == "drop":
        return strip_think(content, opened)
    return keep_think(content, reasoning_text, opened)


@dataclass
class Answer:
    text: str
    truncated: bool = False
    tokens: int | None = None  # generated tokens (None: the server did not say)


@dataclass
class Failure(Exception):
    reason: str
    transient: bool = False  # a connection problem / 5xx after every retry (the server may be down)

    def __str__(self) -> str:
        return self.reason
