"""The resumable work file (``regen.partial.jsonl``): its header, settings check, reading and appending."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from eagle3kit.errors import UserError
from eagle3kit.regenerate.config import RegenConfig
from eagle3kit.ui import UI

#: Version of the work-file layout (its header says which).
WORK_FORMAT = 1
#: Settings that change the answers: a resumed run must use the same ones.
ANSWER_SETTINGS = ("basepath", "max_new_tokens", "temperature", "top_p", "seed", "system_prompt", "reasoning",
                   "chat_template_kwargs")


def _settings(cfg: RegenConfig) -> dict[str, Any]:
    s = {name: getattr(cfg, name) for name in ANSWER_SETTINGS}
    s.update(backend="server" if cfg.server else "transformers", limit=cfg.limit)
    if cfg.server:
        s.update(server=cfg.server, model=cfg.server_model or cfg.basepath, concurrency=cfg.concurrency,
                 retries=cfg.retries, timeout=cfg.timeout)
    else:
        s.update(batch_size=cfg.batch_size, dtype=cfg.dtype)
    return s


def _check_settings(previous: dict[str, Any] | None, cfg: RegenConfig, where: Path) -> None:
    if not previous:
        return
    now = _settings(cfg)
    names = (*ANSWER_SETTINGS, "model")  # a server's --model answers too
    changed = [f"{name} {previous.get(name)!r} -> {now[name]!r}" for name in names
               if name in previous and name in now and previous[name] != now[name]]
    if changed:
        raise UserError(f"{where} was made with other settings ({'; '.join(changed)}). Re-run with the same "
                        "settings to resume, or pass --overwrite to start again.")


def read_work(path: Path, ui: UI) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """The header, the entries and the length of the good part of a work file.

    A last line without its newline (the run was killed mid-write) is ignored with a
    warning, as is any line that is not JSON."""
    data = path.read_bytes()
    header, entries, good_end, bad = None, [], 0, 0
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            ui.warn(f"{path}: ignoring an unfinished last line ({len(data) - start} bytes; the run was "
                    "interrupted while writing it)")
            break
        line = data[start:end]
        start = good_end = end + 1
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(entry, dict):
            bad += 1
        elif "header" in entry:
            header = header or entry["header"]
        elif isinstance(entry.get("key"), str) and isinstance(entry.get("turn"), int):
            entries.append(entry)
        else:
            bad += 1
    if bad:
        ui.warn(f"{path}: ignoring {bad} unreadable lines")
    return header, entries, good_end


class WorkLog:
    """The append-only work file: one fsync per group of lines, an exclusive lock."""

    def __init__(self, path: Path, header: dict[str, Any], keep_bytes: int | None, has_header: bool) -> None:
        self.path = path
        #: True when this run made the file (nothing earlier runs wrote is in it)
        self.created = not keep_bytes
        self.file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except OSError:
            self.file.close()
            raise UserError(f"{path} is being written by another `eagle3kit regenerate`; wait for it or stop it") from None
        self.file.truncate(keep_bytes or 0)  # drops a torn last line before appending (or everything)
        self.file.seek(0, os.SEEK_END)
        if self.created or not has_header:
            self.write([{"header": header}])

    def write(self, entries: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        if not data:
            return
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
