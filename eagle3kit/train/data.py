"""The tokenised training data: unified JSONL files read and checked, tokenised once with
the loss mask (:mod:`eagle3kit.train.mask`) and cached as Arrow, keyed by the file's
content, the tokenizer (with its chat template) and ``--max-len``."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from eagle3kit.errors import RecordError, UserError, error_chain, interrupts_in_main_only
from eagle3kit.train.mask import tokenize_batch
from eagle3kit.unified import validate_unified

#: Bump when rendering, masking or truncation changes: it invalidates cached tokenisations.
DATA_VERSION = 2  # 2: answers located past templates' differences, failures per conversation


def read_unified(path: str | Path, keep: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Records of a unified JSONL file, each checked; errors name the file and line.

    Each is ``{"id", "conversations"}`` plus the fields named in ``keep`` that the line
    has, as they are (unchecked)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: bad JSON: {error.msg} (column {error.colno})") from None
            try:
                conversation = validate_unified(record, where)
            except RecordError as error:
                raise UserError(str(error)) from None
            out = {"id": str(record.get("id", f"line{number}")), "conversations": conversation}
            out.update((name, record[name]) for name in keep if name in record)
            yield out


def _unified_generator(path: str, size: int, mtime_ns: int) -> Iterator[dict[str, Any]]:
    yield from read_unified(path)  # size and mtime_ns are in the arguments for the cache fingerprint


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (what the caches are keyed by, not its name or date); read
    once per process for a file of the same size and date."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(json.dumps(sorted(tokenizer.all_special_tokens)).encode())
    return h.hexdigest()[:16]


@dataclass
class TokenizedData:
    """A tokenised unified file: an Arrow-backed dataset plus what happened to it."""

    dataset: Any  # datasets.Dataset with input_ids, loss_mask, length
    fingerprint: str
    conversations: int
    truncated: int
    cut_mid_turn: int
    without_answer: int  # dropped: no assistant token left
    tokens: int
    masked_tokens: int
    failed: int = 0  # dropped: the template failed on them (each with its reason)
    no_assistant: int = 0  # of without_answer: not cut at max_len, so no assistant turn with text at all
    failed_examples: list[str] = field(default_factory=list)


def load_tokenized(path: str | Path, tokenizer, max_len: int, cache_dir: str | Path, num_proc: int | None = None) -> TokenizedData:
    """Tokenise a unified JSONL file once; later calls with the same file, tokenizer and
    ``max_len`` reuse the cached Arrow file."""
    import datasets

    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist; run `eagle3kit mix` first or check the path")
    with open(path, encoding="utf-8", errors="replace") as f:
        if not any(line.strip() for line in f):  # datasets would fail on an empty generator
            raise UserError(f"{path}: holds no conversation (the file is empty); check the path or run `eagle3kit mix`")
    cache = Path(cache_dir) / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    fp = hashlib.sha256(
        json.dumps([file_digest(path), tokenizer_fingerprint(tokenizer), max_len, DATA_VERSION]).encode()
    ).hexdigest()[:16]
    features = datasets.Features(
        {"id": datasets.Value("string"),
         "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}]}
    )
    stat = path.stat()
    try:
        raw = datasets.Dataset.from_generator(
            _unified_generator, features=features, cache_dir=str(cache / "raw"),
            gen_kwargs={"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        )
    except Exception as error:  # datasets wraps the reader's UserError; show the reader's message
        cause = next((e for e in error_chain(error) if isinstance(e, UserError)), None)
        if cause is None:
            raise
        raise cause from None
    if num_proc is None and len(raw) >= 20_000:
        num_proc = max(1, min(os.cpu_count() or 1, 16))
    with interrupts_in_main_only():  # Ctrl-C: one line, not a traceback per worker
        out = raw.map(
            tokenize_batch, batched=True, batch_size=256, remove_columns=raw.column_names,
            fn_kwargs={"tokenizer": tokenizer, "max_len": max_len},
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            new_fingerprint=fp, cache_file_name=str(cache / f"{fp}.arrow"),
            features=datasets.Features({
                "input_ids": datasets.Sequence(datasets.Value("int32")),
                "loss_mask": datasets.Sequence(datasets.Value("int8")),
                "truncated": datasets.Value("bool"),
                "cut_mid_turn": datasets.Value("bool"),
                "length": datasets.Value("int32"),
                "error": datasets.Value("string"),
            }),
        )
    import pyarrow.compute as pc

    table = out.data.table
    answer_tokens = masked_per_row(table)
    has_answer = answer_tokens > 0
    errors = table.column("error")
    failed_rows = pc.indices_nonzero(pc.is_valid(errors)).to_numpy(zero_copy_only=False)
    examples = [errors[int(i)].as_py() for i in failed_rows[:3]]
    if len(failed_rows) == len(raw):
        raise UserError(f"{path}: the chat template of the target failed on every conversation, e.g. {examples[0]}")
    was_cut = (table.column("truncated").to_numpy(zero_copy_only=False).astype(bool)
               | table.column("cut_mid_turn").to_numpy(zero_copy_only=False).astype(bool))
    no_turn = ~has_answer & ~was_cut
    no_turn[failed_rows] = False
    kept_rows = np.nonzero(has_answer)[0]
    kept = out if has_answer.all() else out.select(kept_rows)
    flags = table.select(["truncated", "cut_mid_turn", "length"]).take(kept_rows)
    return TokenizedData(
        dataset=kept,
        fingerprint=fp,
        conversations=len(raw),
        truncated=int(pc.sum(flags.column("truncated")).as_py() or 0),  # of the conversations trained on
        cut_mid_turn=int(pc.sum(flags.column("cut_mid_turn")).as_py() or 0),
        without_answer=int((~has_answer).sum()) - len(failed_rows),
        tokens=int(pc.sum(flags.column("length")).as_py() or 0),
        masked_tokens=int(answer_tokens.sum()),
        failed=len(failed_rows),
        failed_examples=examples,
        no_assistant=int(no_turn.sum()),
    )


def masked_per_row(table) -> np.ndarray:
    """(rows,) int64: loss-masked tokens of each row of a tokenised Arrow table."""
    out = []
    for chunk in table.column("loss_mask").chunks:
        offsets = chunk.offsets.to_numpy()
        values = np.asarray(chunk.values.to_numpy(zero_copy_only=False), dtype=np.int64)
        sums = np.zeros(len(chunk), np.int64)
        if len(values):
            csum = np.concatenate([[0], np.cumsum(values)])
            sums = csum[offsets[1:]] - csum[offsets[:-1]]
        out.append(sums)
    return np.concatenate(out) if out else np.zeros(0, np.int64)
