"""Answers and failures; the ``<think>`` block kept or dropped (``--reasoning``)."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def strip_think(text: str) -> str:
    """Remove a leading ``<think>...</think>`` block and the white space around it.

    An unclosed block (the answer ran out of tokens while thinking) leaves nothing. A
    ``</think>`` without its opening tag (templates that open the block in the prompt,
    e.g. DeepSeek-R1) drops everything up to it.
    """
    s = text.lstrip()
    if s.startswith(THINK_OPEN):
        end = s.find(THINK_CLOSE)
        return "" if end < 0 else s[end + len(THINK_CLOSE):].strip()
    end = s.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in s[:end]:
        return s[end + len(THINK_CLOSE):].strip()
    return text.strip()


def keep_think(text: str, reasoning: str | None = None) -> str:
    """The answer with its thinking kept as one well-formed leading ``<think>`` block.

    ``reasoning`` is what a server returned apart (``reasoning_content``); a block whose
    opening tag was in the prompt gets it back.
    """
    text = text.strip()
    if reasoning and reasoning.strip():
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{strip_think(text) if THINK_CLOSE in text else text}".strip()
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:
        return f"{THINK_OPEN}\n{text}"
    return text


def shape_answer(content: str, reasoning_text: str | None, mode: str) -> str:
    if mode == "drop":
        return strip_think(content)
    return keep_think(content, reasoning_text)


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
