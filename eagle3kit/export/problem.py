"""One thing wrong with a draft (:class:`Problem`), and the two ways the checks make one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a draft: ``severity`` is ``"error"`` or ``"warning"``; ``key`` names
    the weight or config field; ``message`` says what is wrong and what to do."""

    severity: str
    key: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


def _error(key: str, message: str) -> Problem:
    return Problem("error", key, message)


def _warning(key: str, message: str) -> Problem:
    return Problem("warning", key, message)
