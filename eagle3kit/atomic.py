"""Write files so that an interrupted run never leaves a partial file under the real name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence


def remove_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` to write; when the block ends without error
    it is renamed over ``path``, otherwise removed. A reader never sees a partial file."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


@contextlib.contextmanager
def replacing_together(paths: Sequence[Path | str]) -> Iterator[list[Path]]:
    """Temporary names beside ``paths`` to write; when the block ends without error all of
    them are renamed over ``paths``, otherwise removed. The last path is removed first and
    renamed last: an interruption among the renames leaves it missing, never a new file
    beside an old one of the set (a reader that needs them all finds one absent)."""
    paths = [Path(p) for p in paths]
    tmps = [_temporary(p) for p in paths]
    try:
        yield tmps
        remove_quietly(paths[-1])
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            remove_quietly(tmp)
        raise


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, fsync, then rename over ``path``."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def readable_by_all(path: Path | str) -> None:
    """Give ``path`` the mode a new file gets (0666 less the umask): some writers (safetensors)
    create files 0600, which a server running as another user cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
