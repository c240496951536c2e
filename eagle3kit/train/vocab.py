"""The draft vocabulary: the most frequent answer tokens of the training data, sorted by
id, cached beside the data under its fingerprint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from eagle3kit.errors import UserError
from eagle3kit.train.data import TokenizedData


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

    With fewer distinct ids in the data than ``size``, every id seen plus as many of the
    special tokens (in the order given) as fit, and say so.
    """
    counts = np.asarray(counts)
    seen = np.nonzero(counts)[0]
    total = int(counts.sum())
    if len(seen) >= size:
        order = np.lexsort((np.arange(len(counts)), -counts))[:size]
        ids = np.sort(order)
    else:
        seen_set = set(seen.tolist())
        extra = list(dict.fromkeys(i for i in special_ids if 0 <= i < len(counts) and i not in seen_set))
        extra = extra[:size - len(seen)]  # every answer token first; specials in the order given fill the rest
        ids = np.unique(np.concatenate([seen, np.asarray(extra, dtype=np.int64)])).astype(np.int64)
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
