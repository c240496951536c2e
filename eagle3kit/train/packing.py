"""Sequence packing: conversations laid end to end in rows of ``--max-tokens`` (best fit,
longest first, seeded per epoch), each rank's share of the rows, and the packed
micro-batch with positions restarting per conversation."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from eagle3kit.errors import UserError


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
        # positions no higher than the row's own: targets whose rope depends on the longest
        # position in the row (dynamic NTK, Phi-3's longrope) must not see the padding's
        top = max((len(a) for a in ids), default=1) - 1
        ids.append(np.full(n, pad_id, np.int64))
        masks.append(np.zeros(n, bool))
        pos.append(np.minimum(np.arange(n, dtype=np.int64), max(top, 0)))
        docs.append(np.full(n, len(rows), np.int64))
    cat = lambda parts, dtype: torch.from_numpy(np.concatenate(parts).astype(dtype, copy=False))  # noqa: E731
    return MicroBatch(cat(ids, np.int64), cat(pos, np.int64), cat(docs, np.int64), cat(masks, bool), tokens, rows)
