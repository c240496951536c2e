"""Small helpers shared by the test modules."""

from __future__ import annotations

from eagle3kit.ui import UI


class RecordingUI(UI):
    """A UI that keeps what it was told, for assertions."""

    def __init__(self):
        self.logs, self.warnings = [], []

    def log(self, message):
        self.logs.append(message)

    def warn(self, message):
        self.warnings.append(message)


def H(value):
    return {"from": "human", "value": value}


def G(value):
    return {"from": "gpt", "value": value}


def S(value):
    return {"from": "system", "value": value}
