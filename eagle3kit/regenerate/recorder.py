"""Results as they arrive: applied to the records, appended to the work file, counted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from eagle3kit.regenerate.answers import Answer, Failure
from eagle3kit.regenerate.records import Item
from eagle3kit.regenerate.worklog import WorkLog

#: Longest reason kept per failure.
REASON_CHARS = 500


@dataclass
class Event:
    item: Item
    turn: int
    answer: Answer | None = None
    failure: Failure | None = None


class Recorder:
    """Applies results to the items, appends them to the work file, moves the progress bar
    and keeps the run's statistics. Called from the main thread only."""

    def __init__(self, log: WorkLog, task, max_consecutive_failures: int) -> None:
        self.log, self.task = log, task
        self.answers = self.truncated = self.conversations = self.failed = 0
        self.retryable = 0  # failures that a later try may not repeat (the server down, a timeout)
        self.tokens: int | None = 0
        self.consecutive_failures = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.last_failure = ""

    def record(self, events: Sequence[Event]) -> int:
        """Record ``events``; return how many records they finished (complete or failed)."""
        lines, finished, advance = [], 0, 0
        for e in events:
            item = e.item
            if e.answer is not None:
                if e.turn != len(item.answers):  # cannot happen: a record's turns are sequential
                    raise RuntimeError(f"answer {e.turn} of {item.key!r} out of order")
                a = e.answer
                item.answers.append(a)
                lines.append({"key": item.key, "src": item.src, "turn": e.turn, "answer": a.text,
                              "truncated": a.truncated, "tokens": a.tokens})
                self.answers += 1
                self.truncated += a.truncated
                self.tokens = None if self.tokens is None or a.tokens is None else self.tokens + a.tokens
                self.consecutive_failures = 0
                advance += 1
                if item.complete:
                    self.conversations += 1
                    finished += 1
            else:
                reason = str(e.failure)[:REASON_CHARS]
                item.failure = (e.turn, reason)
                lines.append({"key": item.key, "src": item.src, "turn": e.turn, "failed": reason})
                self.failed += 1
                self.retryable += e.failure.transient
                finished += 1
                advance += len(item.turns) - e.turn
                self.last_failure = reason
                self.consecutive_failures = self.consecutive_failures + 1 if e.failure.transient else 0
        self.log.write(lines)
        if self.task is not None:
            self.task.update(advance=advance, conversations=self.conversations, failed=self.failed)
        return finished

    @property
    def server_looks_down(self) -> bool:
        return self.consecutive_failures >= self.max_consecutive_failures
