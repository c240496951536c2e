"""Attention for packed batches: the document-causal mask, and the training-time-test
attention of the draft.

At TTT step k the query at position t attends to

* the step-0 keys at positions s <= t of its own conversation (document-causal), and
* the keys of steps 1..k at position t only (the draft's own chain at that position).

Computed as one document-causal attention over the step-0 keys, which also returns its
log-sum-exp, merged exactly with the k "diagonal" scores (:func:`merge_diagonal`). Two
backends give the causal part: ``eager`` (explicit scores, any device, the reference for
tests) and ``flex`` (``torch.nn.attention.flex_attention`` with a block-sparse mask built
once per batch: no T x T matrix, no compute on other conversations' blocks; CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def doc_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Conversation index of each token of a packed row: a new one starts where the
    position does not follow the previous by one. (T,) -> (T,)."""
    start = torch.ones_like(position_ids, dtype=torch.bool)
    start[1:] = position_ids[1:] != position_ids[:-1] + 1
    return torch.cumsum(start.long(), 0) - 1


def dense_doc_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(T, T) bool: query t may see key s iff same conversation and s <= t."""
    t = torch.arange(doc_ids.numel(), device=doc_ids.device)
    return (doc_ids[:, None] == doc_ids[None, :]) & (t[None, :] <= t[:, None])


def flex_block_mask(doc_ids: torch.Tensor):
    """A flex-attention ``BlockMask`` of the document-causal mask (1 batch, all heads)."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = doc_ids.contiguous()

    def mask_mod(b, h, q, kv):
        return (docs[q] == docs[kv]) & (kv <= q)

    n = docs.numel()
    return create_block_mask(mask_mod, 1, None, n, n, device=docs.device)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * groups, T, D) for grouped-query attention."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def eager_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Document-causal attention with explicit scores. Returns ``(out, lse)``, lse fp32."""
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v.float()
    return out.to(q.dtype), lse


_compiled_flex = None


def flex_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Document-causal attention with compiled flex attention. Returns ``(out, lse)``."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    out, lse = _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1], return_lse=True)
    return out, lse.float()


def merge_diagonal(out0: torch.Tensor, lse0: torch.Tensor, q: torch.Tensor, keys: list[torch.Tensor],
                   values: list[torch.Tensor]) -> torch.Tensor:
    """Add the keys ``keys[j][t]`` (one per position) to an attention over other keys.

    ``out0``/``lse0`` are the output and log-sum-exp of the attention over the step-0
    keys; the result is exactly the softmax attention over both key sets.
    """
    b, hq, t, d = q.shape
    hkv = keys[0].shape[1]
    g = hq // hkv
    qg = q.float().view(b, hkv, g, t, d)
    scale = 1.0 / math.sqrt(d)
    scores = [((qg * key.float()[:, :, None]).sum(-1) * scale).view(b, hq, t) for key in keys]
    m = lse0
    for s in scores:
        m = torch.maximum(m, s)
    w0 = torch.exp(lse0 - m)
    num = w0[..., None] * out0.float()
    den = w0
    for s, value in zip(scores, values):
        w = torch.exp(s - m)
        num = num + w[..., None] * repeat_kv(value.float(), g)
        den = den + w
    return (num / den[..., None]).to(q.dtype)


@dataclass
class PackedMask:
    """The document-causal mask of one packed row, in the form its backend needs."""

    backend: str
    dense: torch.Tensor | None = None
    block: Any = None

    @classmethod
    def build(cls, doc_ids: torch.Tensor, backend: str) -> "PackedMask":
        if backend == "flex":
            return cls(backend, block=flex_block_mask(doc_ids))
        if backend == "eager":
            return cls(backend, dense=dense_doc_causal_mask(doc_ids))
        raise ValueError(f"unknown attention backend {backend!r} (eager or flex)")

    def causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend == "flex":
            return flex_causal(q, k, v, self.block)
        return eager_causal(q, k, v, self.dense)


def ttt_attention(q: torch.Tensor, keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...],
                  mask: PackedMask) -> torch.Tensor:
    """Attention of TTT step ``len(keys) - 1``: ``keys[0]`` are the step-0 keys (causal),
    ``keys[1:]`` the later steps' keys, each seen at its own position only."""
    out0, lse0 = mask.causal(q, keys[0], values[0])
    if len(keys) == 1:
        return out0
    return merge_diagonal(out0, lse0, q, list(keys[1:]), list(values[1:]))


def default_backend(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "eager"
