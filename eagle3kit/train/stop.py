"""Stopping a training run at a step boundary.

The first Ctrl-C (SIGINT), or a SIGTERM (a scheduler preempting the job), asks the run to
stop: it finishes the optimizer step in progress, saves a checkpoint there, and ends, so
``--resume`` continues from that step and no training is lost. A second signal stops at
once (Ctrl-C raises ``KeyboardInterrupt``; SIGTERM is the default kill). Every rank asks
the others after each step, so all of them stop, and save, at the same one.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import torch

from eagle3kit.train.distributed import all_reduce_sum

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While open, the first SIGINT or SIGTERM is noted instead of ending the process."""

    def __init__(self, announce: bool = True) -> None:
        self.signal: int | None = None
        self.announce = announce  # say so on standard error when the first signal comes (the first rank)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            if self.announce:  # os.write: safe in a handler, whatever the main thread was printing
                os.write(2, b"\nstopping after this step, with a checkpoint (Ctrl-C again: stop at once, unsaved)\n")
            return
        self.__exit__()  # the second one: as if no handler had been set
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(signum)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (called by every rank after each step)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], dtype=torch.float64)
        return bool(all_reduce_sum(flag, device).item() > 0)
