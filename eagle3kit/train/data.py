"""Training data: chat-template rendering, the assistant-only loss mask, truncation at a
turn boundary, tokenisation (cached), sequence packing, and the draft vocabulary.

The loss mask comes from the template itself: each assistant turn's span is found by
rendering the conversation up to that turn with the generation prompt (where the answer
starts) and through that turn (where it ends), and diffing against the full rendering.
No header strings are kept by hand, so Llama 3.x, Qwen 2.5/3 (ChatML) and any other
template work. The span covers the answer and the template's end-of-turn marker (what the
model generates before it stops), not white space after it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from eagle3kit.errors import RecordError, UserError
from eagle3kit.unified import validate_unified

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
#: Bump when rendering, masking or truncation changes: it invalidates cached tokenisations.
DATA_VERSION = 1


class TemplateError(UserError):
    """The chat template renders a conversation in a way the mask cannot be derived from."""


#: Tokens that end an assistant turn in common chat templates (used when they exist).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                      "<|eom_id|>", "</s>")


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """The token ids that end an answer: the tokenizer's and the model's generation eos,
    and the end-of-turn markers of common templates that this vocabulary has."""
    ids: list[int] = []

    def add(value):
        if isinstance(value, int):
            if value not in ids:
                ids.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            add(vocab[token])
    return ids


def to_messages(conversation: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Unified ``{"from", "value"}`` entries -> chat-template ``{"role", "content"}`` messages."""
    return [{"role": ROLES[m["from"]], "content": m["value"]} for m in conversation]


def require_chat_template(tokenizer, name: str | None = None) -> None:
    """Raise :class:`TemplateError` for a tokenizer without a chat template (a base model's)."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = name or getattr(tokenizer, "name_or_path", "")
        raise TemplateError(f"the tokenizer of {name!r} has no chat template; use an instruct/chat model, or set "
                            "chat_template in its tokenizer_config.json")


def _jinja_literal(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_jinja_literal(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v, where)}" for k, v in value.items()) + "}"
    raise UserError(f"{where}: cannot pass {type(value).__name__} values to a chat template")


def parse_template_kwargs(text: str | None, where: str = "--chat-template-kwargs") -> dict[str, Any]:
    """``'{"enable_thinking": false}'`` -> a dict of chat-template variables (as SGLang and
    vLLM take ``chat_template_kwargs``), with a clear error for anything else."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not JSON ({error.msg} at character {error.pos}); give an object such as "
                        "'{\"enable_thinking\": false}'") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: give a JSON object of template variables, such as '{{\"enable_thinking\": false}}'")
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise UserError(f"{where}: {key!r} is not a template variable name")
        _jinja_literal(value, where)
    return kwargs


def with_template_kwargs(tokenizer, kwargs: dict[str, Any] | None):
    """Make the chat template render as if ``kwargs`` were passed on every call (Qwen 3's
    ``enable_thinking``, for example): each becomes a ``{% set %}`` at the template's head.

    Every rendering then agrees (the loss mask's prefixes, evaluation prompts, regenerated
    turns), and the tokenizer's fingerprint, which holds the template, keys the caches."""
    if not kwargs:
        return tokenizer
    head = "".join(f"{{% set {key} = {_jinja_literal(value, '--chat-template-kwargs')} %}}"
                   for key, value in kwargs.items())
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates
        tokenizer.chat_template = {name: head + text for name, text in template.items()}
    else:
        tokenizer.chat_template = head + template
    return tokenizer


def _render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the character span of every assistant turn."""
    require_chat_template(tokenizer)
    full = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        if not full.startswith(before):
            raise TemplateError(
                "the chat template renders earlier turns differently once later turns follow "
                f"(turn {i}); cannot locate the answer's tokens"
            )
        start = len(before)
        through = _render(tokenizer, messages[: i + 1])
        if full.startswith(through) and len(through) > start:
            end = len(through)
        else:  # the template renders a final turn differently from a middle one (e.g. Qwen 3's think block)
            content = message["content"]
            at = full.find(content, start)
            if at < 0:
                raise TemplateError(f"cannot find assistant turn {i} in the rendered conversation")
            end = at + len(content)
            closing = through[through.rfind(content) + len(content) :].rstrip()
            if closing and full.startswith(closing, end):
                end += len(closing)
        while end > start and full[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return full, spans


@dataclass
class Tokenized:
    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool = False  # cut at a turn boundary
    cut_mid_turn: bool = False  # not even the first answer fit: cut inside it


def tokenize_conversation(tokenizer, conversation: Sequence[dict[str, str]], max_len: int) -> Tokenized:
    """Token ids and the assistant-only loss mask of one conversation, at most ``max_len``
    tokens, truncated after the last whole assistant turn that fits."""
    text, spans = assistant_spans(tokenizer, to_messages(conversation))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    mask = np.zeros(len(ids), dtype=np.int8)
    ends = []
    for s, e in spans:
        lo, hi = np.searchsorted(starts, s, "left"), np.searchsorted(starts, e, "left")
        mask[lo:hi] = 1
        ends.append(int(hi))
    truncated = cut = False
    if len(ids) > max_len:
        fitting = [e for e in ends if e <= max_len]
        if fitting:
            n, truncated = fitting[-1], True
        else:
            n, cut = max_len, True
        ids, mask = ids[:n], mask[:n]
    return Tokenized(list(ids), mask.tolist(), truncated, cut)


def tokenize_batch(batch: dict[str, list], *, tokenizer, max_len: int) -> dict[str, list]:
    """``datasets.map`` function: unified conversations -> ids, mask and truncation flags."""
    out: dict[str, list] = {"input_ids": [], "loss_mask": [], "truncated": [], "cut_mid_turn": [], "length": []}
    for conversation in batch["conversations"]:
        t = tokenize_conversation(tokenizer, conversation, max_len)
        out["input_ids"].append(t.input_ids)
        out["loss_mask"].append(t.loss_mask)
        out["truncated"].append(t.truncated)
        out["cut_mid_turn"].append(t.cut_mid_turn)
        out["length"].append(len(t.input_ids))
    return out


# ------------------------------------------------------------------ reading unified files
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
    """sha256 of a file's bytes (what the caches are keyed by, not its name or date)."""
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
        cause = error
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    if num_proc is None and len(raw) >= 20_000:
        num_proc = max(1, min(os.cpu_count() or 1, 16))
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
        }),
    )
    import pyarrow.compute as pc

    table = out.data.table
    answer_tokens = masked_per_row(table)
    has_answer = answer_tokens > 0
    kept = out if has_answer.all() else out.select(np.nonzero(has_answer)[0])
    return TokenizedData(
        dataset=kept,
        fingerprint=fp,
        conversations=len(raw),
        truncated=int(pc.sum(table.column("truncated")).as_py() or 0),
        cut_mid_turn=int(pc.sum(table.column("cut_mid_turn")).as_py() or 0),
        without_answer=int((~has_answer).sum()),
        tokens=int(pc.sum(table.column("length")).as_py() or 0),
        masked_tokens=int(answer_tokens.sum()),
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


# ------------------------------------------------------------------ packing
def pack(lengths: np.ndarray, max_tokens: int, seed: int) -> list[np.ndarray]:
    """Pack sequences into bins of at most ``max_tokens`` tokens (best fit, longest first).

    Ties in length are broken by a seeded shuffle and the bins are returned in a seeded
    random order, so every epoch (seed) packs and orders differently. Returns a list of
    index arrays; every index appears in exactly one bin.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > max_tokens:
        raise UserError(f"a sequence of {lengths.max()} tokens does not fit --max-tokens {max_tokens}; "
                        "raise --max-tokens or lower --max-len")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    space: list[int] = []  # remaining space of open bins, sorted ascending
    ids: list[int] = []  # bin id for each entry of ``space``
    bins: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        at = bisect.bisect_left(space, n)
        if at == len(space):
            bins.append([int(i)])
            b, left = len(bins) - 1, max_tokens - n
        else:
            b, left = ids.pop(at), space.pop(at) - n
            bins[b].append(int(i))
        at = bisect.bisect_left(space, left)
        space.insert(at, left)
        ids.insert(at, b)
    return [np.asarray(bins[j], dtype=np.int64) for j in rng.permutation(len(bins))]


def shard_bins(bins: list[np.ndarray], rank: int, world: int, multiple: int = 1) -> list[np.ndarray]:
    """Rank ``rank``'s share of the bins: every ``world``-th, the same count on every rank,
    rounded down to a multiple of ``multiple`` (the gradient accumulation steps)."""
    per_rank = len(bins) // world
    per_rank -= per_rank % multiple
    return bins[rank::world][:per_rank]


@dataclass
class MicroBatch:
    """One packed row: conversations laid end to end, positions restarting per conversation."""

    input_ids: Any  # torch (T,) long
    position_ids: Any
    doc_ids: Any
    loss_mask: Any  # torch (T,) bool
    tokens: int  # real tokens (without padding)
    rows: list[int] = field(default_factory=list)

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.input_ids.to(device, non_blocking=True), self.position_ids.to(device, non_blocking=True),
                          self.doc_ids.to(device, non_blocking=True), self.loss_mask.to(device, non_blocking=True),
                          self.tokens, self.rows)


def make_micro_batch(dataset, rows: Sequence[int], pad_to: int | None = None, pad_id: int = 0) -> MicroBatch:
    """Concatenate rows of a tokenised dataset into one packed row (optionally padded at
    the end to ``pad_to`` tokens, as one extra conversation that has no loss)."""
    import torch

    rows = [int(r) for r in rows]
    table = dataset.select(rows).with_format("numpy")
    ids, masks, pos, docs = [], [], [], []
    for d, (a, m) in enumerate(zip(table["input_ids"], table["loss_mask"])):
        ids.append(np.asarray(a, dtype=np.int64))
        masks.append(np.asarray(m, dtype=bool))
        pos.append(np.arange(len(a), dtype=np.int64))
        docs.append(np.full(len(a), d, dtype=np.int64))
    tokens = int(sum(len(a) for a in ids))
    if pad_to is not None and pad_to > tokens:
        n = pad_to - tokens
        ids.append(np.full(n, pad_id, np.int64))
        masks.append(np.zeros(n, bool))
        pos.append(np.arange(n, dtype=np.int64))
        docs.append(np.full(n, len(rows), np.int64))
    cat = lambda parts, dtype: torch.from_numpy(np.concatenate(parts).astype(dtype, copy=False))  # noqa: E731
    return MicroBatch(cat(ids, np.int64), cat(pos, np.int64), cat(docs, np.int64), cat(masks, bool), tokens, rows)


# ------------------------------------------------------------------ draft vocabulary
@dataclass
class DraftVocab:
    """The draft vocabulary: target ids sorted ascending, and how it was chosen."""

    ids: np.ndarray
    coverage: float  # share of loss-masked tokens whose id is in the vocabulary
    distinct: int  # distinct loss-masked ids in the data

    def d2t(self):
        import torch

        ids = torch.from_numpy(self.ids.astype(np.int64))
        return ids - torch.arange(len(ids))


def count_masked_tokens(dataset, vocab_size: int) -> np.ndarray:
    """How often each target id occurs among loss-masked tokens (Arrow, batch by batch)."""
    import pyarrow.compute as pc

    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in dataset.select_columns(["input_ids", "loss_mask"]).with_format("arrow").iter(batch_size=4096):
        ids = np.asarray(pc.list_flatten(batch.column("input_ids")).to_numpy(zero_copy_only=False))
        mask = np.asarray(pc.list_flatten(batch.column("loss_mask")).to_numpy(zero_copy_only=False)).astype(bool)
        picked = ids[mask]
        if len(picked) and picked.max() >= vocab_size:
            raise UserError(f"token id {picked.max()} is outside the target vocabulary ({vocab_size}); "
                            "was the data tokenised with another tokenizer?")
        counts += np.bincount(picked, minlength=vocab_size)[:vocab_size]
    return counts


def choose_draft_vocab(counts: np.ndarray, size: int, special_ids: Sequence[int] = (), warn=print) -> DraftVocab:
    """The ``size`` most frequent ids (ties: lower id first), sorted by id.

    With fewer distinct ids in the data than ``size``, every id seen plus the special
    tokens, and say so.
    """
    counts = np.asarray(counts)
    seen = np.nonzero(counts)[0]
    total = int(counts.sum())
    if len(seen) >= size:
        order = np.lexsort((np.arange(len(counts)), -counts))[:size]
        ids = np.sort(order)
    else:
        extra = [i for i in special_ids if 0 <= i < len(counts)]
        ids = np.unique(np.concatenate([seen, np.asarray(extra, dtype=np.int64)])).astype(np.int64)
        ids = ids[:size] if len(ids) > size else ids
        warn(f"the training data has {len(seen)} distinct answer tokens, fewer than --draft-vocab-size {size}: "
             f"the draft vocabulary has {len(ids)} entries (every token seen, plus the special tokens)")
    coverage = float(counts[ids].sum() / total) if total else 0.0
    return DraftVocab(ids=ids.astype(np.int64), coverage=coverage, distinct=int(len(seen)))


def load_or_build_draft_vocab(data: TokenizedData, vocab_size: int, size: int, special_ids: Sequence[int],
                              cache_dir: str | Path, warn=print) -> DraftVocab:
    """The draft vocabulary of ``data``, cached beside it, keyed by the data and tokenizer
    fingerprint and the size (so a new data set or tokenizer never reuses a stale one)."""
    folder = Path(cache_dir) / "draft_vocab"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data.fingerprint}-{vocab_size}-{size}.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            return DraftVocab(np.asarray(saved["ids"], dtype=np.int64), saved["coverage"], saved["distinct"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: build again
    vocab = choose_draft_vocab(count_masked_tokens(data.dataset, vocab_size), size, special_ids, warn)
    from eagle3kit.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"ids": vocab.ids.tolist(), "coverage": vocab.coverage, "distinct": vocab.distinct}))
    return vocab
