"""The exceptions eagle3kit raises for problems a user can fix.

The CLI prints a :class:`UserError` as one clear message (no traceback) and exits with
status 2; anything else is a bug and keeps its traceback. Ctrl-C during a worker pool
(``datasets``' ``map`` with ``num_proc``) is one line too: :func:`was_interrupted`,
:func:`interrupts_in_main_only`.
"""

import os
from contextlib import contextmanager
from typing import Iterator


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's often goes on for pages), or its
    type's name when it has none: for quoting it inside a :class:`UserError`."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Eagle3KitError(Exception):
    """Base class of every error eagle3kit raises on purpose."""


class UserError(Eagle3KitError):
    """A problem with the user's input, options, files or environment, with what to do."""


class PluginError(UserError):
    """A plugin failed to load, or two plugins disagree (for example on a source name)."""


class RecordError(ValueError):
    """Raised by a ``convert_to_unified`` hook for a raw record it cannot read.

    The message says what is wrong with the record (``"messages[2].content is not a
    string (got int)"``); eagle3kit adds the source, the file or repository and the row.
    A plain ``ValueError``, ``KeyError`` or ``TypeError`` is treated the same way.
    """


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then the errors it was raised from or while handling (``__cause__``,
    else ``__context__``), each once: libraries wrap the error that says what happened."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def was_interrupted(error: BaseException) -> bool:
    """True when ``error`` was raised while handling Ctrl-C: a worker pool that is
    interrupted raises its own error (``datasets``' map, a TimeoutError) over the
    KeyboardInterrupt."""
    return any(isinstance(e, KeyboardInterrupt) for e in error_chain(error))


@contextmanager
def interrupts_in_main_only() -> Iterator[None]:
    """Ctrl-C interrupts this process only, not the worker processes it forks meanwhile
    (they inherit the handler, which does nothing there): the main process ends the
    pool, instead of every worker printing its own traceback. Nothing changes where
    Ctrl-C is ignored already (a background job) or outside the main thread."""
    import signal

    main = os.getpid()

    def handler(signum, frame):
        if os.getpid() == main:
            raise KeyboardInterrupt

    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            yield
            return
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_worker_checked = False


def quiet_worker_interrupts() -> None:
    """In a worker process of a pool, ignore Ctrl-C from now on, for workers that do not
    inherit :func:`interrupts_in_main_only`'s handler (started by spawn rather than fork).
    Cheap after the first call; nothing in the main process."""
    global _worker_checked
    if _worker_checked:
        return
    _worker_checked = True
    import signal
    import sys

    for name in ("multiprocess", "multiprocessing"):  # datasets' pools come from `multiprocess`
        module = sys.modules.get(name)
        if module is not None and module.parent_process() is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return


def raised_at(error: BaseException) -> str:
    """`` (at pkg/plugin.py:42 in convert)``: where ``error`` was raised, as its last frame
    outside eagle3kit (a plugin's code); "" when eagle3kit raised it."""
    import sysconfig
    import traceback
    from pathlib import Path

    import pluggy

    skipped = {Path(__file__).parent, Path(pluggy.__file__).parent,  # eagle3kit, the hook caller, the standard library
               *(Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib"))}
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")
              and not skipped & {*Path(f.filename).resolve().parents}]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno} in {frame.name})"
