"""Load a source's raw records into an Arrow-backed ``datasets.Dataset``.

Two ways in:

* the Hub (``datasets.load_dataset`` with ``cache_dir``), trying the source's
  repositories in fallback order and logging every failure with its reason, or the
  one dataset ``--source NAME:repo=ID[@REVISION]`` names (in the source's format);
* a local copy (``--source NAME:path=...``): ``.jsonl``, ``.json`` (a JSON array, or
  JSON lines), ``.parquet``, a ``save_to_disk`` folder, or a folder laid out like the
  Hub repository.

JSON files are not copied: a streaming pass (vectorised for JSON lines, the C JSON
scanner for arrays) indexes each record's byte range, and conversion reads the bytes
back from the file in the workers (:func:`read_records`). Memory stays flat whatever
the file size, nothing but a small index is written, and records of any shape survive
(Arrow needs one schema; raw ShareGPT dumps do not have one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from eagle3kit.errors import UserError
from eagle3kit.types import HubRepo, Source

#: Columns of a dataset indexing JSON files: which file, where its record's bytes are, and
#: the record's place for messages (1-based line for JSON lines, 0-based index in an array).
FILE_COLUMN = "__file__"
START_COLUMN = "__start__"
LENGTH_COLUMN = "__length__"
LOC_COLUMN = "__loc__"
_CHUNK = 1 << 20
#: Bytes of a JSON-lines file read (and turned into one Arrow batch) at a time.
_BLOCK = 1 << 25


@dataclass
class RawData:
    """A loaded raw split and where it came from."""

    dataset: Any  # datasets.Dataset
    origin: str
    #: how to name a record's place in messages: "{origin} line {loc}" and the like
    where: str
    attempts: list[dict[str, str]] = field(default_factory=list)
    #: for JSON files: ``(path, size, mtime_ns)`` of each file the dataset's byte ranges point into
    files: tuple[tuple[str, int, int], ...] = ()
    #: for a folder of JSON files: how to name a record's place, per file (``where`` for each)
    file_where: tuple[str, ...] = ()
    #: for a folder: which of its files were read, and why (a line for the log)
    note: str = ""

    @property
    def is_raw_json(self) -> bool:
        """True when the dataset indexes JSON files (read with :func:`read_records`) rather than holding rows."""
        return START_COLUMN in self.dataset.column_names


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
    with open(path, encoding="utf-8", newline="") as f:
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
        for text, index, _start in _ArrayReader(path, f, head):
            yield text, index


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _ArrayReader:
    """Streams the records of a JSON array out of an open file, one chunk at a time.

    Yields ``(text, index, byte offset of the record in the file)``. The file must be
    opened with ``newline=""`` so that characters map to the file's bytes.
    """

    def __init__(self, path: str, f, head: str):
        self.path, self.f, self.buf = path, f, head
        self.pos = head.index("[") + 1
        self.bpos = _utf8_len(head[: self.pos])  # byte offset in the file of buf[pos]
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _more(self, at_least: int = _CHUNK) -> bool:
        chunk = self.f.read(max(at_least, _CHUNK))
        self.eof = not chunk
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return bool(chunk)

    def _skip_space(self) -> bool:
        """Move to the next non-space character; False at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
                self.bpos += 1
            if self.pos < len(self.buf):
                return True
            if not self._more():
                return False

    def _error(self, index: int, problem: str, at: int) -> UserError:
        offset = self.bpos + _utf8_len(self.buf[self.pos : at])
        return UserError(f"{self.path}: record {index} (line {_line_of(self.path, offset)}): {problem}")

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
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
                self.bpos += 1
                if not self._skip_space():
                    raise self._error(index, "the file ends after ','", self.pos)
            while True:
                try:
                    _, end = self.decoder.raw_decode(self.buf, self.pos)
                    break
                except json.JSONDecodeError as error:
                    if self.eof or not self._more(len(self.buf)):
                        raise self._error(index, f"bad JSON: {error.msg}", error.pos) from None
            text = self.buf[self.pos : end]
            yield text, index, self.bpos
            index += 1
            self.pos = end
            self.bpos += _utf8_len(text)
            if self.pos > _CHUNK:
                self.buf, self.pos = self.buf[self.pos :], 0


#: Bump when the index files written below change: they are cached under a name that includes it.
_RAW_FORMAT = 3
#: Records per Arrow record batch for JSON arrays (JSON lines are indexed a block at a time).
_ARRAY_BATCH = 10_000


def _json_lines_index(path: str) -> Iterator[tuple[Any, Any, Any]]:
    """``(starts, lengths, line numbers)`` numpy arrays of the records of a JSON-lines file.

    Vectorised, a block at a time: numpy finds the newlines; a record is a line that is
    not blank, without its newline. Nothing is decoded here (a line that is not UTF-8 is
    a malformed record when converted).
    """
    import numpy as np

    lines_before = 0
    with open(path, "rb") as f:
        position = 3 if f.read(3) == b"\xef\xbb\xbf" else 0  # a byte order mark is not part of a record
        size = _BLOCK
        while True:
            f.seek(position)
            data = f.read(size)
            if not data:
                return
            at_end = len(data) < size
            cut = len(data) if at_end else data.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this block: read a bigger one
                size *= 2
                continue
            raw = np.frombuffer(data, dtype=np.uint8, count=cut)
            ends = np.flatnonzero(raw == ord("\n"))
            lines = len(ends)
            if raw[-1] != ord("\n"):  # the last line of a file without a final newline
                ends = np.append(ends, cut)
            starts = np.empty(len(ends), dtype=np.int64)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            first = raw[np.minimum(starts, cut - 1)]
            keep = starts < ends
            maybe_blank = keep & ((first == ord(" ")) | (first == ord("\t")) | (first == ord("\r")))
            for i in np.flatnonzero(maybe_blank):  # rare: lines starting with white space
                keep[i] = bool(data[starts[i] : ends[i]].strip())
            numbers = np.arange(lines_before + 1, lines_before + 1 + len(starts), dtype=np.int64)
            yield position + starts[keep], (ends - starts)[keep], numbers[keep]
            lines_before += lines
            position += cut
            size = _BLOCK


def _json_array_index(path: str) -> Iterator[tuple[Any, Any, Any]]:
    """``(starts, lengths, indices)`` numpy arrays of the records of a JSON-array file."""
    import numpy as np

    starts: list[int] = []
    lengths: list[int] = []
    indices: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        head = f.read(_CHUNK)
        if head.lstrip().lstrip("\ufeff").lstrip():
            for text, index, start in _ArrayReader(path, f, head):
                starts.append(start)
                lengths.append(_utf8_len(text))
                indices.append(index)
                if len(starts) >= _ARRAY_BATCH:
                    yield np.array(starts), np.array(lengths), np.array(indices)
                    starts, lengths, indices = [], [], []
    if starts:
        yield np.array(starts), np.array(lengths), np.array(indices)


def _load_json_files(paths: list[str], cache_dir: Path):
    """Index the records of JSON files: a dataset of byte ranges, and the files' identities.

    The records are not copied: the dataset holds, per record, the file, the byte range
    and the place for messages (:data:`FILE_COLUMN`, :data:`START_COLUMN`,
    :data:`LENGTH_COLUMN`, :data:`LOC_COLUMN`); conversion reads the bytes with
    :func:`read_records`. The index is written to ``cache_dir/raw`` (a temporary name,
    renamed when complete) under a name made of the files' paths, sizes and modification
    times: an edited file is indexed again, an unchanged one is not. The dataset's
    fingerprint is that name's hash (so it does not depend on ``cache_dir``).
    """
    import datasets
    import pyarrow as pa

    from eagle3kit.atomic import replacing

    files = []
    for p in paths:
        st = os.stat(p)
        files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    fingerprint = hashlib.sha256(json.dumps([_RAW_FORMAT, files]).encode()).hexdigest()[:16]
    target = cache_dir / "raw" / f"json-{fingerprint}.arrow"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema(
            [(FILE_COLUMN, pa.int32()), (START_COLUMN, pa.int64()), (LENGTH_COLUMN, pa.int64()), (LOC_COLUMN, pa.int64())]
        )
        with replacing(target) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for number, path in enumerate(paths):
                lines = _is_json_lines(Path(path))
                if lines:
                    _refuse_one_object(path)
                index = _json_lines_index(path) if lines else _json_array_index(path)
                try:
                    for starts, lengths, locs in index:
                        columns = [pa.array([number] * len(starts), pa.int32()), pa.array(starts, pa.int64()),
                                   pa.array(lengths, pa.int64()), pa.array(locs, pa.int64())]
                        writer.write_batch(pa.record_batch(columns, schema=schema))
                except UnicodeDecodeError as error:
                    raise UserError(f"{path}: not UTF-8 text ({error.reason}); save the file as UTF-8") from None
    dataset = datasets.Dataset(datasets.table.MemoryMappedTable.from_file(str(target)), fingerprint=fingerprint)
    return dataset, tuple(files)


def read_records(files: Sequence[tuple[str, int, int]], file_numbers, starts, lengths) -> list[bytes]:
    """The bytes of the records at ``starts``/``lengths`` in ``files`` (indexed by ``file_numbers``).

    Reads each file's span of the batch with one read. Raises UserError when a file is
    no longer the one indexed (its size or modification time changed).
    """
    out: list[bytes] = [b""] * len(starts)
    by_file: dict[int, list[int]] = {}
    for i, number in enumerate(file_numbers):
        by_file.setdefault(number, []).append(i)
    for number, rows in by_file.items():
        path, size, mtime_ns = files[number]
        low = min(starts[i] for i in rows)
        high = max(starts[i] + lengths[i] for i in rows)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise UserError(f"{path} changed while it was being mixed (size or modification time); run again")
            f.seek(low)
            span = memoryview(f.read(high - low))
        for i in rows:
            out[i] = bytes(span[starts[i] - low : starts[i] - low + lengths[i]])
    return out


# --------------------------------------------------------------------------- local copies
#: Files of a Hub-like or ``save_to_disk`` folder that describe the data rather than hold it.
_METADATA_FILES = frozenset({"dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json"})
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def load_local(source: Source, path: str, cache_dir: Path, split: str | None = None,
               files: Sequence[str] | None = None) -> RawData:
    """Load a local copy of ``source``'s raw data from a file or folder.

    In a folder, ``files`` (glob patterns on paths relative to it, or on file names)
    picks the data files; without it, the files the source's repositories name
    (``HubRepo.data_files``) when the folder holds some, else every data file. ``split``
    picks the split of a parquet or ``save_to_disk`` folder. ``RawData.note`` says which
    files were read.
    """
    import datasets

    p = Path(path).expanduser()
    opt = f"--source {source.name}:path={path}"
    if not p.exists():
        raise UserError(f"{opt}: no such file or folder")
    origin = str(p)
    if not p.is_dir():
        if split or files:
            raise UserError(f"{opt}: split= and files= pick data in a folder; {origin} is one file")
        return _load_file(source, p, opt, cache_dir)
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        if files:
            raise UserError(f"{opt}: a save_to_disk folder is read whole; files= picks files of a folder of "
                            ".json, .jsonl or .parquet files")
        try:
            loaded = datasets.load_from_disk(str(p))
        except Exception as error:  # noqa: BLE001 - a damaged folder is the user's to fix
            raise UserError(f"{opt}: cannot read this save_to_disk folder: {_one_line(error)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(source, loaded, opt, split)
        elif split:
            raise UserError(f"{opt}: the folder holds one dataset, not splits; leave out split={split}")
        return RawData(loaded, origin, f"{origin} row {{row}}")
    chosen, why = _data_files_in(source, p, files, opt)
    parquet = [f for f in chosen if f.suffix == ".parquet"]
    json_files = [f for f in chosen if f.suffix != ".parquet"]
    if parquet and json_files:
        raise UserError(f"{opt}: the folder holds both .parquet ({len(parquet)}) and .json/.jsonl ({len(json_files)}) "
                        f"data files{why}: {_names(chosen, p)}; pick one kind with files=PATTERN")
    note = f"source {source.name}: reading {len(chosen)} file(s) of {origin}{why}: {_names(chosen, p)}"
    if parquet:
        raw = _load_parquet_folder(source, p, parquet, split, opt, cache_dir)
    elif split:
        raise UserError(f"{opt}: split= picks a split of parquet or save_to_disk data; pick JSON files with files=")
    else:
        dataset, indexed = _load_json_files([str(f) for f in json_files], cache_dir)
        wheres = tuple(f"{f} {'line' if _is_json_lines(f) else 'record'} {{loc}}" for f in json_files)
        raw = RawData(dataset, origin, f"{origin} record {{row}}", files=indexed, file_where=wheres)
    raw.note = note
    return raw


def _names(files: Sequence[Path], folder: Path, most: int = 5) -> str:
    names = [f.relative_to(folder).as_posix() for f in files[:most]]
    return ", ".join(names) + (f" and {len(files) - most} more" if len(files) > most else "")


def _patterns(data_files: Any, split: str | None = None) -> list[str]:
    """The file patterns a ``HubRepo.data_files`` value names (a string, a list or a
    ``{split: files}`` mapping, of which ``split``'s when it has it)."""
    if not data_files:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, Mapping):
        chosen = [data_files[split]] if split in data_files else list(data_files.values())
        return [q for v in chosen for q in _patterns(v)]
    return [q for v in data_files for q in _patterns(v)]


def _matching(candidates: Sequence[Path], folder: Path, patterns: Sequence[str]) -> list[Path]:
    def hit(f: Path) -> bool:
        rel = f.relative_to(folder).as_posix()
        return any(fnmatch.fnmatchcase(rel, q) or fnmatch.fnmatchcase(f.name, q) for q in patterns)

    return [f for f in candidates if hit(f)]


def _data_files_in(source: Source, folder: Path, files: Sequence[str] | None, opt: str) -> tuple[list[Path], str]:
    """The data files of ``folder`` to read, and why those (for the log line)."""
    candidates = sorted(
        f for f in folder.rglob("*")
        if f.is_file() and f.suffix.lower() in _DATA_SUFFIXES and f.name not in _METADATA_FILES
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )
    if not candidates:
        raise UserError(f"{opt}: the folder holds no .json, .jsonl or .parquet file")
    if files:
        chosen = _matching(candidates, folder, files)
        if not chosen:
            raise UserError(f"{opt}: no data file matches files={','.join(files)}; the folder holds "
                            f"{_names(candidates, folder, 10)}")
        return chosen, f" (files={','.join(files)})"
    for repo in source.repos:  # a copy of the Hub repository: the files the source reads there
        chosen = _matching(candidates, folder, _patterns(repo.data_files, repo.split))
        if chosen:
            return chosen, f" (the files {source.name} reads from {repo.repo_id})"
    return candidates, ""


def _load_parquet_folder(source: Source, folder: Path, parquet: list[Path], split: str | None, opt: str,
                         cache_dir: Path) -> RawData:
    """Parquet files in a folder: the split's files when their names or folders give
    splits (the Hub layout, ``data/train_sft-00000-of-00001.parquet``), else all."""
    import datasets

    from datasets.data_files import DataFilesDict, get_data_patterns

    origin = str(folder)
    try:  # the Hub's own rules for which file belongs to which split
        by_split = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
        keep = {q.resolve() for q in parquet}
        splits = {str(name): [f for f in found if Path(f).resolve() in keep]
                  for name, found in by_split.items()}
        splits = {name: found for name, found in splits.items() if found}
    except Exception:  # noqa: BLE001 - no split layout: every file is the one split
        splits = {}
    chosen = _pick_split(source, splits, opt, split) if splits else [str(f) for f in parquet]
    try:
        loaded = datasets.load_dataset("parquet", data_files=chosen, split="train", cache_dir=str(cache_dir / "hub"))
    except Exception as error:  # noqa: BLE001 - a damaged file is the user's to fix
        raise UserError(f"{opt}: cannot read the parquet data in {origin}: {_one_line(_cause(error))}") from None
    return RawData(loaded, origin, f"{origin} row {{row}}")


def _cause(error: BaseException) -> BaseException:
    """The innermost cause: datasets wraps reading errors (``DatasetGenerationError``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _load_file(source: Source, p: Path, opt: str, cache_dir: Path) -> RawData:
    import datasets

    origin = str(p)
    suffix = p.suffix.lower()
    if suffix in (".json", ".jsonl"):
        where = f"{origin} line {{loc}}" if _is_json_lines(p) else f"{origin} record {{loc}}"
        dataset, indexed = _load_json_files([str(p)], cache_dir)
        return RawData(dataset, origin, where, files=indexed)
    if suffix == ".parquet":
        try:
            loaded = datasets.load_dataset("parquet", data_files=str(p), split="train", cache_dir=str(cache_dir / "hub"))
        except Exception as error:  # noqa: BLE001 - a damaged file is the user's to fix
            raise UserError(f"{opt}: cannot read this parquet file: {_one_line(_cause(error))}") from None
        return RawData(loaded, origin, f"{origin} row {{row}}")
    raise UserError(f"{opt}: unsupported file type {suffix or '(none)'}; give a .json, .jsonl or .parquet file, or a folder")


def _refuse_one_object(path: str) -> None:
    """Raise UserError when a file read as JSON lines is one JSON object over many lines
    (``{"data": [...]}`` pretty-printed): every line would be a malformed record."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        json.loads(first)
        return  # a record per line, as it should be
    except ValueError:
        pass
    try:
        with open(path, encoding="utf-8-sig") as f:
            whole = json.load(f)
    except (ValueError, UnicodeDecodeError):
        return  # not one JSON document either: its bad lines are reported as records
    keys = ", ".join(repr(k) for k in list(whole)[:5]) if isinstance(whole, dict) else ""
    kind = "object" if isinstance(whole, dict) else type(whole).__name__
    raise UserError(f"{path}: one JSON {kind} spread over many lines"
                    f"{f' (keys {keys})' if keys else ''}, not a JSON array of records or JSON lines "
                    "(one record per line); save the records as one of those")


def _is_json_lines(p: Path) -> bool:
    with open(p, encoding="utf-8", errors="replace") as f:  # only the first character matters here
        head = f.read(4096).lstrip("\ufeff").lstrip()
    return not head.startswith("[")


def _pick_split(source: Source, splits: Mapping[str, Any], opt: str, split: str | None = None):
    """Of a folder's ``splits`` (name -> data), the one asked for with ``split=``, else the
    one the source's repositories name, else ``train``, else the only one."""
    wanted = [split] if split else [r.split for r in source.repos] + ["train"]
    for name in wanted:
        if name in splits:
            return splits[name]
    if len(splits) == 1 and not split:
        return next(iter(splits.values()))
    raise UserError(f"{opt}: the folder holds the splits {', '.join(sorted(splits))}, not {wanted[0]!r}; "
                    "pick one with split=NAME")


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
    from eagle3kit.hub import cache_only, hub_failure, hub_unreachable

    down = hub_unreachable()  # then each mirror would retry for 24 s, and only the cache can answer: ask only it
    attempts = []
    for repo in source.repos:
        try:
            with cache_only() if down else contextlib.nullcontext():
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
            if down and hub_failure(error) == "network":
                reason = f"not in the cache ({cache_dir / 'hub'}), and the Hugging Face Hub cannot be reached ({down})"
            attempts.append({"repo": repo.describe(), "error": reason})
            log(f"source {source.name}: could not load {repo.describe()}: {reason}")
            continue
        attempts.append({"repo": repo.describe(), "error": ""})
        return RawData(loaded, repo.describe(), f"{repo.repo_id} row {{row}}", attempts)
    tried = "\n".join(f"  - {a['repo']}: {a['error']}" for a in attempts)
    advice = ("Check the network (HF_HUB_OFFLINE, HF_ENDPOINT), or download a copy and pass "
              f"--source {source.name}:path=FILE_OR_DIR")
    if down:
        advice = (f"Load it once where the Hub can be reached (with the same --cache-dir), or download a copy there "
                  f"(hf download --repo-type dataset {source.repos[0].repo_id} --local-dir DIR) and pass "
                  f"--source {source.name}:path=DIR")
    raise UserError(f"could not load source {source.name!r} from any of its repositories:\n{tried}\n{advice}")


def _data_files(repo: HubRepo):
    files = repo.data_files
    if isinstance(files, tuple):
        return list(files)
    return files


def option_repo(source: Source, options: dict[str, Any]) -> HubRepo:
    """The Hub dataset ``--source NAME:repo=ID[@REVISION],split=S,files=F`` names."""
    repo_id, _, revision = options["repo"].partition("@")
    split = options.get("split") or (source.repos[0].split if source.repos else "train")
    return HubRepo(repo_id, split=split, data_files=options.get("files") or None, revision=revision or None)


def load_raw(source: Source, options: dict[str, Any], cache_dir: Path, log: Callable[[str], None] = print,
             load_dataset: Callable[..., Any] | None = None) -> RawData:
    """Load ``source`` from ``options['path']`` when given, else from the Hub: the
    dataset ``options['repo']`` names, or else the source's own repositories."""
    if options.get("path"):
        return load_local(source, options["path"], cache_dir, options.get("split"), options.get("files"))
    if options.get("repo"):
        source = dataclasses.replace(source, repos=(option_repo(source, options),))
    return load_hub(source, cache_dir, log, load_dataset)
