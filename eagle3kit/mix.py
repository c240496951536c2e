"""``eagle3kit mix``: sources -> rules -> dedup -> weights -> shuffle -> split -> files.

1. Each source is loaded (:mod:`eagle3kit.rawdata`) and converted with a batched,
   multi-process ``datasets.map`` that calls only the owning plugin's
   ``convert_to_unified`` and applies the rules of :mod:`eagle3kit.unified`. The result
   (one Arrow file per source, fingerprinted, reused across runs) holds per raw record its
   status, its unified JSON line and a 16-byte duplicate key; no record is ever held as
   Python objects beyond one batch.
2. Counts per status come from Arrow; dedup keeps the first occurrence in source order;
   ``weight=`` options sample each source to its share; a seeded permutation shuffles and
   the first ``round(test_ratio * N)`` rows become the test split.
3. ``train.jsonl`` and ``test.jsonl`` are streamed out in that order to temporary names
   and renamed; ``manifest.json`` is written last. A run whose inputs have the
   fingerprint of the manifest already in ``--out`` reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eagle3kit import __version__
from eagle3kit.atomic import atomic_write_text, remove_quietly, replacing_together
from eagle3kit.errors import RecordError, UserError, interrupts_in_main_only, quiet_worker_interrupts, raised_at
from eagle3kit.plugins import Converter, Registry, converter_for
from eagle3kit.rawdata import FILE_COLUMN, LENGTH_COLUMN, LOC_COLUMN, START_COLUMN, RawData, load_raw, read_records
from eagle3kit.sourcespec import SourceSpec, resolve_options
from eagle3kit.ui import UI
from eagle3kit.unified import (
    INVALID,
    KEPT,
    ROLE_MAP,
    STATUSES,
    TOO_SHORT,
    UNKNOWN_ROLE,
    clean_messages,
    conversation_json,
    conversation_key,
    record_json,
)

#: Bump when the rules of eagle3kit.unified change: it invalidates every cached conversion.
RULES_VERSION = 3  # 3: ShareGPT answers in page HTML become markdown
MANIFEST = "manifest.json"
TRAIN_FILE = "train.jsonl"
TEST_FILE = "test.jsonl"
AUTO_PROC_MIN_ROWS = 20_000
_WRITE_BATCH = 8192


def convert_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    converter: Converter,
    raw_json: bool,
    where: str | Sequence[str],
    files: Sequence[tuple[str, int, int]] = (),
) -> dict[str, list]:
    """Convert one batch of raw rows: the function ``datasets.map`` runs in the workers.

    ``raw_json``: the batch indexes records of JSON ``files`` (byte ranges, read here);
    otherwise its rows are the records. ``where`` names a record's place in messages
    (``{loc}``, ``{row}``), or one such text per file of ``files``.
    """
    quiet_worker_interrupts()
    if raw_json:
        rows: Sequence[Any] = read_records(files, batch[FILE_COLUMN], batch[START_COLUMN], batch[LENGTH_COLUMN])
        locs = batch[LOC_COLUMN]
        places = [where if isinstance(where, str) else where[n] for n in batch[FILE_COLUMN]]
    else:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]
        locs = indices
        places = [where] * len(rows)
    out: dict[str, list] = {"id": [], "json": [], "key": [], "status": [], "error": []}
    for row, index, loc, place in zip(rows, indices, locs, places):
        record_id = f"{converter.source}_{index}"
        text, key, status, error = "", b"", KEPT, None
        try:
            record = _parse_json(row) if raw_json else row
            if not isinstance(record, dict):
                raise ValueError(f"the record is a JSON {type(record).__name__}, expected an object")
            messages = converter(record)
            if messages is None:
                raise ValueError("convert_to_unified returned None; a plugin returns [] to skip a record")
            conversation, status = clean_messages(messages)
            if conversation is not None:
                conv_text = conversation_json(conversation)
                text, key = record_json(record_id, conv_text), conversation_key(conv_text)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin's error for one record is reported, not a crash
            status, error = INVALID, f"{place.format(loc=loc, row=index)}: {_describe(exc)}"
        out["id"].append(record_id)
        out["json"].append(text)
        out["key"].append(key)
        out["status"].append(status)
        out["error"].append(error)
    return out


def _parse_json(data: bytes) -> Any:
    """One raw JSON record; RecordError saying what is wrong when it cannot be read."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # the place as a column of the record's (first) line; at most just past its end
        column = min(exc.pos, len(text.split("\n", 1)[0].rstrip("\r"))) + 1
        raise RecordError(f"bad JSON: {exc.msg} (column {column})") from None


def _describe(error: BaseException) -> str:
    """A record's error; for one a plugin's code raised, where (its last frame outside eagle3kit)."""
    if isinstance(error, RecordError):
        return str(error)
    if isinstance(error, KeyError):
        text = f"missing field {error.args[0]!r}" if error.args else "missing field"
    elif type(error) is ValueError:
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return text + raised_at(error)


def _features():
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "json": datasets.Value("large_string"),
            "key": datasets.Value("binary"),
            "status": datasets.Value("string"),
            "error": datasets.Value("string"),
        }
    )


def _digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass
class SourceRun:
    """One source of a mix: its options, what was loaded, and what became of each record."""

    name: str
    plugin: str
    plugin_version: str
    options: dict[str, Any]
    raw: RawData | None = None
    converted: Any = None  # datasets.Dataset of convert_batch's columns
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    used: int = 0
    train: int = 0
    test: int = 0
    code: str = ""  # code_digest of the plugin function that converts it

    def fingerprint_inputs(self, converter: Converter) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "converter": f"{converter.function.__module__}.{converter.function.__qualname__}",
            "code": self.code,
            "options": {k: v for k, v in sorted(self.options.items()) if k != "weight"},
            "raw": self.raw.dataset._fingerprint,
            "rules": RULES_VERSION,
            "eagle3kit": __version__,
        }


def code_digest(function: Any) -> str:
    """A digest of the file that defines a source's converter: an edited plugin converts
    again (its version alone would leave a stale cached conversion)."""
    import inspect

    try:
        return hashlib.sha256(Path(inspect.getsourcefile(function) or "").read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return ""


def default_num_proc(rows: int) -> int | None:
    """Worker processes for ``rows`` records: all CPUs for big inputs, none for small."""
    if rows < AUTO_PROC_MIN_ROWS:
        return None
    return max(1, min(os.cpu_count() or 1, 16))


def _load_sources(registry: Registry, specs: Sequence[SourceSpec], cache_dir: Path, ui: UI) -> list[SourceRun]:
    runs, seen = [], set()
    for spec in specs:
        if spec.name in seen:
            raise UserError(f"--source {spec.name} is given twice; give each source once (ids must be unique)")
        seen.add(spec.name)
        source = registry.source(spec.name)
        options = resolve_options(source, spec)
        runs.append(SourceRun(source.name, source.plugin, source.plugin_version, options))
    check_weights([run.options.get("weight") for run in runs])  # before any download
    for run in runs:
        source = registry.source(run.name)
        with ui.progress(f"loading {run.name}") as task:
            run.raw = load_raw(source, run.options, cache_dir, log=ui.warn)
            if run.raw.note:
                ui.log(run.raw.note)
            rows = len(run.raw.dataset)
            task.update(advance=rows, total=rows)
        if run.options.get("limit") is not None and run.options["limit"] < rows:
            run.raw.dataset = run.raw.dataset.select(range(run.options["limit"]))
    return runs


def _convert(run: SourceRun, registry: Registry, cache_dir: Path, num_proc: int | None, ui: UI) -> None:
    converter = converter_for(registry, run.name, run.options)
    fingerprint = _digest(run.fingerprint_inputs(converter))
    dataset = run.raw.dataset
    if len(dataset) == 0:
        what = "limit=0 leaves no records of" if run.options.get("limit") == 0 else "no records in"
        raise UserError(f"source {run.name}: {what} {run.raw.origin}; check the file or the source's options")
    if num_proc is None:
        num_proc = default_num_proc(len(dataset))
    if num_proc is not None:  # one process is this one: no pool (datasets would start one worker)
        num_proc = min(num_proc, max(1, len(dataset) // 1000))
        num_proc = num_proc if num_proc > 1 else None
    target = cache_dir / "converted"
    target.mkdir(parents=True, exist_ok=True)
    with ui.datasets_progress(f"converting {run.name}"), interrupts_in_main_only():
        run.converted = dataset.map(
            convert_batch,
            batched=True,
            batch_size=1000,
            with_indices=True,
            remove_columns=dataset.column_names,
            features=_features(),
            fn_kwargs={"converter": converter, "raw_json": run.raw.is_raw_json, "where": run.raw.file_where or run.raw.where,
                       "files": run.raw.files},
            num_proc=num_proc,
            new_fingerprint=fingerprint,
            cache_file_name=str(target / f"{run.name}-{fingerprint}.arrow"),
            load_from_cache_file=True,
            desc=f"converting {run.name}",
        )
    import pyarrow.compute as pc

    counts = {status: 0 for status in STATUSES}
    for item in pc.value_counts(run.converted.data.table.column("status")).to_pylist():
        counts[item["values"]] = item["counts"]
    run.counts = counts


#: Malformed records a manifest lists per source (each with its place and problem).
INVALID_LISTED = 1000


def _invalid_errors(run: SourceRun, limit: int) -> list[str]:
    """The first ``limit`` malformed records of a source, each as ``place: problem``."""
    import pyarrow.compute as pc

    if not run.counts.get(INVALID):
        return []
    errors = run.converted.data.table.column("error")
    return [errors[i].as_py() for i in pc.indices_nonzero(pc.is_valid(errors)).to_pylist()[:limit]]


def _invalid_report(runs: Sequence[SourceRun], limit: int = 5) -> str:
    lines = []
    for run in runs:
        if not run.counts.get(INVALID):
            continue
        lines.append(f"{run.name}: {run.counts[INVALID]} malformed record(s), for example:")
        lines += [f"  - {error}" for error in _invalid_errors(run, limit)]
    return "\n".join(lines)


def _kept_rows(run: SourceRun):
    import numpy as np
    import pyarrow.compute as pc

    mask = pc.equal(run.converted.data.table.column("status"), KEPT)
    return np.asarray(pc.indices_nonzero(mask).to_numpy(zero_copy_only=False), dtype=np.int64)


def _dedup(runs: Sequence[SourceRun], kept: list) -> list:
    import numpy as np

    seen: set[bytes] = set()
    out = []
    for run, rows in zip(runs, kept):
        keys = run.converted.data.table.column("key").take(rows).to_pylist() if len(rows) else []
        keep = np.zeros(len(rows), dtype=bool)
        for i, key in enumerate(keys):
            if key not in seen:
                seen.add(key)
                keep[i] = True
        run.duplicates = int(len(rows) - keep.sum())
        out.append(rows[keep])
    return out


def _role_hint(run: SourceRun) -> str:
    """For a source whose records had unknown roles: the role words the clean-up maps."""
    if not run.counts.get(UNKNOWN_ROLE):
        return ""
    return f". A message's \"from\" must be one of: {', '.join(sorted(ROLE_MAP))} (any case)"


def _left_out(run: SourceRun) -> str:
    """What became of a source's records: ``"2 read: 2 too short"``."""
    drops = [f"{run.counts[status]} {status.replace('_', ' ')}" for status in STATUSES
             if status != KEPT and run.counts.get(status)]
    if run.duplicates:
        drops.append(f"{run.duplicates} duplicate(s)")
    return f"{len(run.converted)} read" + (f": {', '.join(drops)}" if drops else "")


def check_weights(weights: Sequence[float | None]) -> None:
    """A weight on every source or on none (they are shares of the whole mix)."""
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise UserError("give weight= to every --source or to none (weights are shares of the whole mix)")


def apply_weights(sizes: Sequence[int], weights: Sequence[float | None]) -> list[int]:
    """How many conversations each source contributes so that shares follow ``weights``.

    No weight anywhere: every source gives everything. Otherwise every source must have
    a weight; the mix is the largest whose shares are the weights' without repeating a
    conversation (a source is never asked for more than it has).
    """
    if all(w is None for w in weights):
        return list(sizes)
    check_weights(weights)
    total = sum(weights)
    shares = [w / total for w in weights]
    n = min(size / share for size, share in zip(sizes, shares))
    return [min(size, int(round(n * share))) for size, share in zip(sizes, shares)]


def mix_fingerprint(runs: Sequence[SourceRun], registry: Registry, settings: dict[str, Any]) -> str:
    inputs = {
        "eagle3kit": __version__,
        "rules": RULES_VERSION,
        "settings": settings,
        "sources": [
            {
                "name": r.name,
                "plugin": r.plugin,
                "plugin_version": r.plugin_version,
                "options": r.options,
                "raw": r.raw.dataset._fingerprint,
                "code": r.code,
            }
            for r in runs
        ],
    }
    return _digest(inputs, 32)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a complete mix in ``out``, or None when there is none (or it is stale)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for name, info in manifest.get("files", {}).items():
        path = out / name
        if not path.is_file() or path.stat().st_size != info.get("bytes"):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != info.get("sha256"):
            return None
    return manifest


class _JsonColumn:
    """The converted ``json`` column of every source, read by global row number.

    The rows are read from the converted Arrow files with ``pread``, at byte ranges found
    by one sequential pass over the files' IPC messages. Gathering rows in a random
    order through memory maps would touch (and keep resident) nearly every page of the
    files; reading copies only the lines asked for, so the peak RSS of writing stays at
    one batch whatever the size of the mix. A dataset not laid out as expected (in
    memory, a view, compressed) is read through its Arrow table instead.
    """

    def __init__(self, runs: Sequence["SourceRun"]):
        import numpy as np

        self._fds: list[int] = []
        self._table_chunks = None
        try:
            begins, lengths, fds = [], [], []
            for run in runs:
                for b, n, fd in self._index(run):
                    begins.append(b)
                    lengths.append(n)
                    fds.append(np.full(len(b), fd, dtype=np.int32))
        except _NotIndexable:
            self.close()
            self._table_chunks = [c for run in runs for c in run.converted.data.table.column("json").chunks]
            self._starts = np.cumsum([0] + [len(c) for c in self._table_chunks])[:-1]
            return
        except BaseException:
            self.close()
            raise
        self._begin = np.concatenate(begins) if begins else np.zeros(0, np.int64)
        self._length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._fd = np.concatenate(fds) if fds else np.zeros(0, np.int32)

    def _index(self, run: "SourceRun"):
        """Per record batch of ``run``'s cache files: (file offset of each row, its length, fd)."""
        import numpy as np
        import pyarrow as pa

        files = [f["filename"] for f in run.converted.cache_files]
        if not files or run.converted._indices is not None:
            raise _NotIndexable
        out, rows = [], 0
        for name in files:
            fd = os.open(name, os.O_RDONLY)
            self._fds.append(fd)
            stream = pa.OSFile(name)
            try:
                schema = pa.ipc.read_schema(pa.ipc.read_message(stream))
                column = schema.get_field_index("json")
                while True:
                    try:
                        message = pa.ipc.read_message(stream)
                    except EOFError:
                        break
                    body_start = stream.tell() - message.body.size
                    array = pa.ipc.read_record_batch(message, schema).column(column)
                    if not pa.types.is_large_string(array.type) or array.null_count:
                        raise _NotIndexable
                    data = array.buffers()[2]
                    at = data.address - message.body.address if data is not None else 0
                    if data is not None and not (0 <= at and at + data.size <= message.body.size):
                        raise _NotIndexable  # not a zero-copy slice of the message (compressed?)
                    bounds = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
                    out.append((body_start + at + bounds[:-1], np.diff(bounds), fd))
                    rows += len(array)
            finally:
                stream.close()
        if rows != len(run.converted):
            raise _NotIndexable
        return out

    def lines(self, rows) -> bytes:
        """The JSON lines at global ``rows``, in that order, each followed by a newline."""
        if self._table_chunks is not None:
            return self._lines_from_table(rows)
        pieces = [
            os.pread(fd, n, at)
            for fd, n, at in zip(self._fd[rows].tolist(), self._length[rows].tolist(), self._begin[rows].tolist())
        ]
        if sum(map(len, pieces)) != int(self._length[rows].sum()):
            raise OSError("a converted cache file is shorter than its index: was it changed during the mix?")
        return b"\n".join(pieces) + b"\n" if pieces else b""

    def _lines_from_table(self, rows) -> bytes:
        import numpy as np
        import pyarrow as pa

        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        lines: list[str] = [""] * len(rows)
        for c in np.unique(chunk_of):
            at = np.nonzero(chunk_of == c)[0]
            for j, value in zip(at, self._table_chunks[c].take(pa.array(rows[at] - self._starts[c])).to_pylist()):
                lines[j] = value
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class _NotIndexable(Exception):
    pass


def _write_split(path: Path, column: _JsonColumn, order) -> dict[str, Any]:
    """Stream the JSON lines at ``order`` (global row numbers) into ``path``, a temporary
    name (:func:`run_mix` renames both splits once both are complete)."""
    digest = hashlib.sha256()
    size = 0
    # No fsync here (it cost about 5 s of a 30 s mix): the renames keep an interrupted run
    # from leaving a partial file under the real name, and a file lost to a power cut is
    # caught by the sha256 that read_manifest checks before reusing a mix.
    with open(path, "wb") as f:
        for start in range(0, len(order), _WRITE_BATCH):
            data = column.lines(order[start : start + _WRITE_BATCH])
            digest.update(data)
            size += len(data)
            f.write(data)
    return {"rows": int(len(order)), "bytes": size, "sha256": digest.hexdigest()}


def run_mix(
    registry: Registry,
    specs: Sequence[SourceSpec],
    out: Path,
    cache_dir: Path,
    *,
    test_ratio: float = 0.05,
    seed: int = 0,
    num_proc: int | None = None,
    dedup: bool = True,
    skip_invalid: bool = False,
    ui: UI | None = None,
) -> dict[str, Any]:
    """Mix ``specs`` into ``out/train.jsonl`` and ``out/test.jsonl``; return the manifest."""
    import numpy as np

    ui = ui or UI()
    if not specs:
        raise UserError("no --source given; run `eagle3kit sources` to see the available ones")
    if not 0 <= test_ratio < 1:
        raise UserError(f"--test-ratio {test_ratio}: must be at least 0 and below 1")
    out, cache_dir = Path(out), Path(cache_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output or cache folder: {error}") from None

    import datasets

    datasets.disable_progress_bars()
    runs = _load_sources(registry, specs, cache_dir, ui)
    settings = {"test_ratio": test_ratio, "seed": seed, "dedup": dedup, "skip_invalid": skip_invalid}
    for run in runs:
        run.code = code_digest(registry.converter_impl(run.name).function)
    fingerprint = mix_fingerprint(runs, registry, settings)
    previous = read_manifest(out)
    if previous and previous.get("fingerprint") == fingerprint:
        ui.log(f"{out}: up to date (fingerprint {fingerprint[:12]}), reusing the existing mix")
        previous["reused"] = True
        return previous

    for run in runs:
        _convert(run, registry, cache_dir, num_proc, ui)
    for run in runs:  # even with --skip-invalid: dropping every record is never what was meant
        if run.counts[INVALID] and run.counts[INVALID] == len(run.converted):
            plugin = registry.plugins.get(registry.source(run.name).plugin)
            owner = f"plugin {plugin.name} ({plugin.distribution} {plugin.version})" if plugin else "its plugin"
            raise UserError(
                _invalid_report([run])
                + f"\nEvery record of source {run.name} failed to convert: a file in another format (see `eagle3kit "
                f"sources` for what {run.name} reads), or a bug in {owner}, whose convert_to_unified raised these "
                "errors; --skip-invalid would leave nothing of it"
            )
    if not skip_invalid and any(run.counts[INVALID] for run in runs):
        report = _invalid_report(runs)
        code = " (or, for an error a plugin's code raised, at the place named, the plugin)" if " (at " in report else ""
        raise UserError(report + f"\nFix the file{code}, or pass --skip-invalid to drop malformed records (they are "
                        "counted in the manifest).")

    kept = [_kept_rows(run) for run in runs]
    if dedup:
        kept = _dedup(runs, kept)
    weighted = any(run.options.get("weight") is not None for run in runs)
    for run, rows in zip(runs, kept):
        if weighted and not len(rows):  # shares of the mix: one empty source leaves nothing of the others
            raise UserError(f"source {run.name} has no conversation left ({_left_out(run)}), and weight= makes "
                            "every source a share of the mix, so nothing would be mixed; fix its input, or leave it out")
        if len(run.converted) and not len(rows) and any(len(k) for k in kept):  # the others hid it (exit 0)
            raise UserError(f"source {run.name} has no conversation left ({_left_out(run)}): fix its input (or its "
                            f"plugin), or leave it out{_role_hint(run)}")
    sizes = apply_weights([len(k) for k in kept], [run.options.get("weight") for run in runs])
    chosen = []
    for i, (run, rows, size) in enumerate(zip(runs, kept, sizes)):
        if size < len(rows):
            pick = np.random.default_rng([seed, i]).choice(len(rows), size=size, replace=False)
            rows = rows[np.sort(pick)]
        run.used = int(len(rows))
        chosen.append(rows)

    # global row number = offset of the source's table + row in it
    source_offsets = np.cumsum([0] + [len(run.converted) for run in runs])[:-1]
    rows_global = np.concatenate([rows + off for rows, off in zip(chosen, source_offsets)]).astype(np.int64)
    source_index = np.concatenate([np.full(len(rows), i) for i, rows in enumerate(chosen)])
    total = len(rows_global)
    if total == 0:
        raise UserError("no conversation is left after the clean-up rules: "
                        + "; ".join(f"{run.name}: {_left_out(run)}" for run in runs) + "; check the inputs"
                        + next((_role_hint(run) for run in runs if run.counts.get(UNKNOWN_ROLE)), ""))
    perm = np.random.default_rng(seed).permutation(total)
    n_test = int(round(test_ratio * total))
    if test_ratio > 0 and n_test == 0:
        ui.warn(f"{total} conversation(s) x --test-ratio {test_ratio:g} rounds to an empty test split; "
                "mix more data (train --testpath needs at least one conversation)")
    if n_test == total:
        ui.warn(f"{total} conversation(s) x --test-ratio {test_ratio:g} rounds to an empty train split; "
                "mix more data or lower --test-ratio")
    test_order, train_order = perm[:n_test], perm[n_test:]
    for i, run in enumerate(runs):
        run.test = int(np.sum(source_index[test_order] == i))
        run.train = run.used - run.test

    remove_quietly(out / MANIFEST)  # from here on the folder is not a complete mix
    column = _JsonColumn(runs)
    files = {}
    # Renamed together once both are complete, train last: an interruption among the
    # renames leaves a test split without a train split, never a new split beside an old
    # one (test rows could then be trained on).
    try:
        with replacing_together([out / TEST_FILE, out / TRAIN_FILE]) as (test_tmp, train_tmp), \
                ui.progress("writing", total=total) as task:
            for name, tmp, order in ((TRAIN_FILE, train_tmp, rows_global[train_order]),
                                     (TEST_FILE, test_tmp, rows_global[test_order])):
                files[name] = _write_split(tmp, column, order)
                task.update(advance=len(order))
    finally:
        column.close()

    manifest = {
        "eagle3kit_version": __version__,
        "fingerprint": fingerprint,
        "seed": seed,
        "test_ratio": test_ratio,
        "dedup": dedup,
        "skip_invalid": skip_invalid,
        "rules_version": RULES_VERSION,
        "plugins": registry.plugin_versions(),
        "sources": [
            {
                "name": run.name,
                "plugin": run.plugin,
                "plugin_version": run.plugin_version,
                "options": run.options,
                "loaded_from": run.raw.origin,
                "attempts": run.raw.attempts,
                "rows_read": len(run.converted),
                "kept": run.counts[KEPT],
                "dropped": {UNKNOWN_ROLE: run.counts[UNKNOWN_ROLE], TOO_SHORT: run.counts[TOO_SHORT], INVALID: run.counts[INVALID]},
                "invalid_records": _invalid_errors(run, INVALID_LISTED),  # what --skip-invalid dropped, and why
                "duplicates": run.duplicates,
                "used": run.used,
                "train": run.train,
                "test": run.test,
            }
            for run in runs
        ],
        "split": {"train": int(len(train_order)), "test": int(n_test)},
        "files": files,
        "reused": False,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def summary_table(manifest: dict[str, Any]):
    """A Rich table of what the mix did per source (where each came from is in its caption)."""
    from rich.markup import escape
    from rich.table import Table

    # escaped: "HuggingFaceH4/ultrachat_200k [train_sft]" is not Rich markup
    caption = "\n".join(escape(f"{s['name']}: {s['loaded_from']}") for s in manifest["sources"])
    table = Table(title=f"eagle3kit mix ({'reused' if manifest.get('reused') else 'written'})", caption=caption)
    table.add_column("source")
    for col in ("read", "kept", "unknown\nrole", "too\nshort", "invalid", "dupli-\ncates", "used", "train", "test"):
        table.add_column(col, justify="right")
    totals = [0] * 9
    for s in manifest["sources"]:
        values = [s["rows_read"], s["kept"], s["dropped"][UNKNOWN_ROLE], s["dropped"][TOO_SHORT], s["dropped"][INVALID],
                  s["duplicates"], s["used"], s["train"], s["test"]]
        totals = [a + b for a, b in zip(totals, values)]
        table.add_row(s["name"], *(f"{v:,}" for v in values))
    table.add_row("total", *(f"{v:,}" for v in totals), style="bold")
    return table
