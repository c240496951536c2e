"""What the user sees: Rich progress bars, status lines and tables, on standard error.

Library code takes a :class:`UI`; the CLI passes a :class:`RichUI`, tests the quiet
default. Keeps Rich out of the algorithms.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator


def make_console(**kwargs):
    """A Rich console as wide as the terminal, or 200 columns when the output is a file
    (a log, a batch job's output), where Rich would cut tables at 80. COLUMNS wins."""
    from rich.console import Console

    # read here, not by Rich: its default environment is the os.environ of its import, and
    # datasets' map with num_proc rebinds os.environ to a copy
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return Console(width=int(columns), **kwargs)
    console = Console(**kwargs)
    if not console.is_terminal:
        console = Console(width=200, **kwargs)
    return console


class UI:
    """The quiet UI: logs go to standard error, progress is not shown."""

    def log(self, message: str) -> None:
        print(message, file=sys.stderr)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator["_Task"]:
        yield _Task()

    @contextlib.contextmanager
    def datasets_progress(self, description: str) -> Iterator[None]:
        yield

    def table(self, table: Any) -> None:
        """Print a ``rich.table.Table`` (as plain text when Rich is not the UI)."""
        from rich.console import Console

        Console(file=sys.stdout, width=160).print(table)


class SilentUI(UI):
    """Says nothing (the other ranks of a distributed run)."""

    def log(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def table(self, table: Any) -> None:
        pass


class _Task:
    def update(self, advance: float = 0, total: float | None = None, description: str | None = None, **fields) -> None:
        pass


class RichUI(UI):
    """Progress bars and coloured messages, for the terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress = None

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)  # paths stay on one line

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {_escape(message)}", soft_wrap=True)

    def _make_progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator["_RichTask"]:
        outer = self._progress is None
        if outer:
            self._progress = self._make_progress()
            self._progress.start()
        task_id = self._progress.add_task(description, total=total, extra="")
        try:
            yield _RichTask(self._progress, task_id)
        except BaseException:
            # a step that failed is not shown as done (its error is printed next)
            self._progress.remove_task(task_id)
            raise
        else:
            task = next(t for t in self._progress.tasks if t.id == task_id)  # tasks is a list, not by id
            if task.total is None:
                self._progress.update(task_id, total=task.completed or 1, completed=task.completed or 1)
        finally:
            if outer:
                self._progress.stop()
                self._progress = None

    @contextlib.contextmanager
    def datasets_progress(self, description: str) -> Iterator[None]:
        """Show ``datasets.Dataset.map``'s progress (all worker processes) as a Rich bar."""
        try:
            from datasets import arrow_dataset
        except ImportError:  # pragma: no cover
            yield
            return
        original = getattr(arrow_dataset, "hf_tqdm", None)
        if original is None:  # a datasets version without this hook: no bar, no harm
            yield
            return
        ui = self

        class Bar:
            def __init__(self, *args, total=None, initial=0, desc=None, **kwargs):
                self._cm = ui.progress(description, total=total)
                self._task = self._cm.__enter__()
                if initial:
                    self._task.update(advance=initial)

            def update(self, n=1):
                self._task.update(advance=n)

            def set_description(self, *args, **kwargs):
                pass

            def refresh(self, *args, **kwargs):
                pass

            def close(self):
                if self._cm is not None:
                    self._cm.__exit__(None, None, None)
                    self._cm = None

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        arrow_dataset.hf_tqdm = Bar
        try:
            yield
        finally:
            arrow_dataset.hf_tqdm = original

    def table(self, table: Any) -> None:
        make_console().print(table)


class _RichTask(_Task):
    def __init__(self, progress, task_id) -> None:
        self._progress, self._id = progress, task_id

    def update(self, advance: float = 0, total: float | None = None, description: str | None = None, **fields) -> None:
        kwargs: dict[str, Any] = {"advance": advance}
        if total is not None:
            kwargs["total"] = total
        if description is not None:
            kwargs["description"] = description
        if fields:
            kwargs["extra"] = "  ".join(f"{k} {v}" for k, v in fields.items())
        self._progress.update(self._id, **kwargs)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
