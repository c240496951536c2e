"""Load a source's raw records into an Arrow-backed ``datasets.Dataset``.

Two ways in:

* the Hub (``datasets.load_dataset`` with ``cache_dir``), trying the source's
  repositories in fallback order and logging every failure with its reason;
* a local copy (``--source NAME:path=...``): ``.jsonl``, ``.json`` (a JSON array, or
  JSON lines), ``.parquet``, a ``save_to_disk`` folder, or a folder laid out like the
  Hub repository.

JSON files are read by a streaming reader into a dataset of raw JSON texts
(:data:`RAW_COLUMN`, :data:`LOC_COLUMN`), written to Arrow in batches: memory stays
flat whatever the file size, and records of any shape survive (Arrow needs one schema;
raw ShareGPT dumps do not have one). Conversion parses each text in the workers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from eagle3kit.errors import UserError
from eagle3kit.types import HubRepo, Source

RAW_COLUMN = "__raw_json__"
LOC_COLUMN = "__loc__"
_CHUNK = 1 << 20


@dataclass
class RawData:
    """A loaded raw split and where it came from."""

    dataset: Any  # datasets.Dataset
    origin: str
    #: how to name a record's place in messages: "{origin} line {loc}" and the like
    where: str
    attempts: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_raw_json(self) -> bool:
        return RAW_COLUMN in self.dataset.column_names


# --------------------------------------------------------------------------- JSON files
def _line_of(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def iter_json_records(path: str) -> Iterator[tuple[str, int]]:
    """Yield ``(json_text, loc)`` for every record of a JSON-lines or JSON-array file.

    ``loc`` is the 1-based line number for JSON lines and the 0-based record index for
    a JSON array. Array records are located with the C JSON scanner, a chunk at a time,
    so the whole file is never in memory. Raises UserError naming the file and place
    of a syntax error in an array (JSON-lines records are checked when converted).
    """
    with open(path, encoding="utf-8") as f:
        head = f.read(_CHUNK)
        stripped = head.lstrip().lstrip("\ufeff").lstrip()
        if not stripped:
            return
        if stripped[0] != "[":
            f.seek(0)
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield line, number
            return
        yield from _ArrayReader(path, f, head)


class _ArrayReader:
    """Streams the records of a JSON array out of an open file, one chunk at a time."""

    def __init__(self, path: str, f, head: str):
        self.path, self.f, self.buf = path, f, head
        self.pos = head.index("[") + 1
        self.consumed = 0  # characters of the file before buf[0]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self, at_least: int = _CHUNK) -> bool:
        chunk = self.f.read(max(at_least, _CHUNK))
        self.eof = not chunk
        self.consumed += self.pos
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return bool(chunk)

    def _skip_space(self) -> bool:
        """Move to the next non-space character; False at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return True
            if not self._more():
                return False

    def _error(self, index: int, problem: str, at: int) -> UserError:
        offset = len(self.buf[:at].encode("utf-8")) + self.consumed  # exact for ASCII files
        return UserError(f"{self.path}: record {index} (line {_line_of(self.path, offset)}): {problem}")

    def __iter__(self) -> Iterator[tuple[str, int]]:
        index = 0
        while True:
            if not self._skip_space():
                raise self._error(index, "the file ends inside the JSON array (missing ']')", self.pos)
            char = self.buf[self.pos]
            if char == "]":
                return
            if index > 0:
                if char != ",":
                    raise self._error(index, f"expected ',' or ']' between records, found {char!r}", self.pos)
                self.pos += 1
                if not self._skip_space():
                    raise self._error(index, "the file ends after ','", self.pos)
            while True:
                try:
                    _, end = self.decoder.raw_decode(self.buf, self.pos)
                    break
                except json.JSONDecodeError as error:
                    if self.eof or not self._more(len(self.buf)):
                        raise self._error(index, f"bad JSON: {error.msg}", error.pos) from None
            yield self.buf[self.pos : end], index
            index += 1
            self.pos = end
            if self.pos > _CHUNK:
                self._drop_consumed()

    def _drop_consumed(self) -> None:
        self.consumed += self.pos
        self.buf, self.pos = self.buf[self.pos :], 0


def _raw_json_generator(paths: list[str], size: int, mtime_ns: int) -> Iterator[dict[str, Any]]:
    # size and mtime_ns are not used here: they are in the cache fingerprint, so that an
    # edited file is read again.
    for path in paths:
        try:
            for text, loc in iter_json_records(path):
                yield {RAW_COLUMN: text, LOC_COLUMN: loc}
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text ({error.reason}); save the file as UTF-8") from None


def _load_json_files(paths: list[str], cache_dir: Path):
    import datasets

    features = datasets.Features({RAW_COLUMN: datasets.Value("large_string"), LOC_COLUMN: datasets.Value("int64")})
    stats = [os.stat(p) for p in paths]
    gen_kwargs = {
        "paths": [os.path.abspath(p) for p in paths],
        "size": sum(s.st_size for s in stats),
        "mtime_ns": max(s.st_mtime_ns for s in stats),
    }
    try:
        return datasets.Dataset.from_generator(
            _raw_json_generator, features=features, gen_kwargs=gen_kwargs, cache_dir=str(cache_dir / "raw")
        )
    except datasets.exceptions.DatasetGenerationError as error:
        # datasets wraps what the generator raised; a UserError (bad JSON array, not
        # UTF-8) is the message the user must see, not a traceback
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise


# --------------------------------------------------------------------------- local copies
def load_local(source: Source, path: str, cache_dir: Path) -> RawData:
    """Load a local copy of ``source``'s raw data from a file or folder."""
    import datasets

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--source {source.name}:path={path}: no such file or folder")
    origin = str(p)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
            loaded = datasets.load_from_disk(str(p))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(source, loaded, origin)
            return RawData(loaded, origin, f"{origin} row {{row}}")
        files = sorted(
            str(f) for f in p.rglob("*") if f.is_file() and f.suffix in (".json", ".jsonl") and not f.name.startswith(".")
        )
        parquet = sorted(str(f) for f in p.rglob("*.parquet"))
        if parquet and not files:
            split = source.repos[0].split if source.repos else "train"
            loaded = datasets.load_dataset(str(p), split=split, cache_dir=str(cache_dir / "hub"))
            return RawData(loaded, origin, f"{origin} row {{row}}")
        if not files:
            raise UserError(f"--source {source.name}:path={path}: the folder holds no .json, .jsonl or .parquet file")
        return RawData(_load_json_files(files, cache_dir), origin, f"{origin} record {{row}}")
    suffix = p.suffix.lower()
    if suffix in (".json", ".jsonl"):
        where = f"{origin} line {{loc}}" if _is_json_lines(p) else f"{origin} record {{loc}}"
        return RawData(_load_json_files([str(p)], cache_dir), origin, where)
    if suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files=str(p), split="train", cache_dir=str(cache_dir / "hub"))
        return RawData(loaded, origin, f"{origin} row {{row}}")
    raise UserError(
        f"--source {source.name}:path={path}: unsupported file type {suffix or '(none)'}; "
        "give a .json, .jsonl or .parquet file, or a folder"
    )


def _is_json_lines(p: Path) -> bool:
    with open(p, encoding="utf-8", errors="replace") as f:  # only the first character matters here
        head = f.read(4096).lstrip("\ufeff").lstrip()
    return not head.startswith("[")


def _pick_split(source: Source, loaded, origin: str):
    wanted = [r.split for r in source.repos] + ["train"]
    for split in wanted:
        if split in loaded:
            return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise UserError(f"{origin}: holds splits {', '.join(loaded)}; none is {wanted[0]!r}")


# --------------------------------------------------------------------------- the Hub
def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def load_hub(
    source: Source,
    cache_dir: Path,
    log: Callable[[str], None] = print,
    load_dataset: Callable[..., Any] | None = None,
) -> RawData:
    """Load ``source`` from its Hub repositories, in fallback order."""
    if load_dataset is None:
        import datasets

        load_dataset = datasets.load_dataset
    if not source.repos:
        raise UserError(f"source {source.name!r} has no Hub repository; give a local copy with --source {source.name}:path=FILE")
    attempts = []
    for repo in source.repos:
        try:
            loaded = load_dataset(
                repo.repo_id,
                repo.name,
                split=repo.split,
                data_files=_data_files(repo),
                revision=repo.revision,
                cache_dir=str(cache_dir / "hub"),
            )
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the next repo is tried
            reason = _one_line(error)
            attempts.append({"repo": repo.describe(), "error": reason})
            log(f"source {source.name}: could not load {repo.describe()}: {reason}")
            continue
        attempts.append({"repo": repo.describe(), "error": ""})
        return RawData(loaded, repo.describe(), f"{repo.repo_id} row {{row}}", attempts)
    tried = "\n".join(f"  - {a['repo']}: {a['error']}" for a in attempts)
    raise UserError(
        f"could not load source {source.name!r} from any of its repositories:\n{tried}\n"
        f"Check the network (HF_HUB_OFFLINE, HF_ENDPOINT), or download a copy and pass "
        f"--source {source.name}:path=FILE_OR_DIR"
    )


def _data_files(repo: HubRepo):
    files = repo.data_files
    if isinstance(files, tuple):
        return list(files)
    return files


def load_raw(source: Source, options: dict[str, Any], cache_dir: Path, log: Callable[[str], None] = print) -> RawData:
    """Load ``source`` from ``options['path']`` when given, else from the Hub."""
    if options.get("path"):
        return load_local(source, options["path"], cache_dir)
    return load_hub(source, cache_dir, log)
