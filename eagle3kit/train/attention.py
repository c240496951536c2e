"""Attention for packed batches: the document-causal mask, and the training-time-test
attention of the draft.

At TTT step k the query at position t attends to

* the step-0 keys at positions s <= t of its own conversation (document-causal), and
* the keys of steps 1..k at position t only (the draft's own chain at that position).

Computed as one document-causal attention over the step-0 keys, which also returns its
log-sum-exp, merged exactly with the k "diagonal" scores (:func:`merge_diagonal`). Two
backends give the causal part: ``eager`` (explicit scores, one conversation at a time,
any device, the reference for tests) and ``flex`` (``torch.nn.attention.flex_attention`` with a block-sparse mask built
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


def dense_doc_causal_mask(doc_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(T, T) bool: query t may see key s iff same conversation and s <= t (and, with a
    sliding ``window``, t - s < window: the transformers convention)."""
    t = torch.arange(doc_ids.numel(), device=doc_ids.device)
    allowed = (doc_ids[:, None] == doc_ids[None, :]) & (t[None, :] <= t[:, None])
    if window is not None:
        allowed &= t[:, None] - t[None, :] < window
    return allowed


def flex_block_mask(doc_ids: torch.Tensor, block: int = 128, window: int | None = None):
    """A flex-attention ``BlockMask`` of the document-causal mask (1 batch, all heads),
    optionally with a sliding ``window`` (query t sees key s only if t - s < window).

    Built directly from the conversation boundaries with O((T/block)^2) tensor work: no
    mask function is evaluated over the T x T grid. Conversations are contiguous and in
    order, so a key block j < i shares a conversation with query block i iff its last
    conversation is the query block's first, and is fully visible iff all of both blocks
    is one conversation. A window keeps block j if the closest pair of the two blocks is
    within it, and keeps it full only if the farthest pair is.
    """
    from torch.nn.attention.flex_attention import BlockMask

    docs = doc_ids.contiguous()
    n = docs.numel()
    nb = -(-n // block)
    padded = torch.full((nb * block,), int(docs[-1]) + 1, dtype=docs.dtype, device=docs.device)
    padded[:n] = docs
    tiles = padded.view(nb, block)
    first, last = tiles[:, 0], tiles[:, -1]
    i = torch.arange(nb, device=docs.device)[:, None]
    j = torch.arange(nb, device=docs.device)[None, :]
    visible = (j < i) & (last[None, :] == first[:, None]) | (j == i)
    full = (j < i) & (first[None, :] == last[:, None])
    if window is not None:
        visible &= (i - j) * block - (block - 1) < window  # closest pair: query i*B, key j*B + B - 1
        full &= (i - j) * block + (block - 1) < window  # farthest pair: query i*B + B - 1, key j*B
    partial = visible & ~full

    def table(m: torch.Tensor):
        counts = m.sum(1).to(torch.int32)
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)  # selected blocks first
        return counts[None, None], order[None, None]

    # the kernel evaluates the mask over whole blocks: indices up to nb * block - 1, past the
    # row when its length is not a multiple of the block, so it reads the padded ids
    if window is None:
        def mask_mod(b, h, q, kv):
            return (padded[q] == padded[kv]) & (kv <= q)
    else:
        def mask_mod(b, h, q, kv):
            return (padded[q] == padded[kv]) & (kv <= q) & (q - kv < window)

    kv_num, kv_idx = table(partial)
    full_num, full_idx = table(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(n, n))


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * groups, T, D) for grouped-query attention."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def eager_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Document-causal attention with explicit scores. Returns ``(out, lse)``, lse in fp32
    (fp64 for fp64 inputs)."""
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 for bf16, fp64 stays fp64
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ v.to(acc)
    return out.to(q.dtype), lse


_compiled_flex = None


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any, return_lse: bool, scale: float | None = None,
         score_mod: Any = None):
    """flex attention, compiled once per process on GPU (uncompiled on CPU: slow, forward
    only, for tests)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda and _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    fn = _compiled_flex if q.is_cuda else flex_attention
    kwargs: dict[str, Any] = dict(block_mask=block_mask, score_mod=score_mod, enable_gqa=k.shape[1] != q.shape[1],
                                  scale=scale)
    if not return_lse:
        return fn(q, k, v, **kwargs)
    try:  # torch >= 2.9 asks for the log-sum-exp this way (return_lse is deprecated)
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return fn(q, k, v, return_lse=True, **kwargs)
    out, aux = fn(q, k, v, return_aux=AuxRequest(lse=True), **kwargs)
    return out, aux.lse


def flex_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Document-causal attention with compiled flex attention. Returns ``(out, lse)``."""
    out, lse = flex(q, k, v, block_mask, return_lse=True)
    return out, lse.float()


TARGET_FLEX = "eagle3kit_flex"


#: attention arguments of some transformers models that change the scores in ways this
#: kernel does not reproduce (relative position biases, sparse index selection)
_UNSUPPORTED_ATTENTION_ARGS = ("position_bias", "indices", "block_indices")


def _hf_flex_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                       s_aux=None, sinks=None, **kwargs):
    """A transformers attention function: our compiled flex kernel with the packed row's
    ``BlockMask`` (registered as ``attn_implementation="eagle3kit_flex"``).

    Also what some targets add to the scores: ``softcap`` (Gemma 2: ``c * tanh(s / c)``)
    and attention sinks (``s_aux``/``sinks``, gpt-oss: one extra logit per head with a
    zero value, which scales each output by ``sigmoid(lse - sink)``; exact). The sliding
    window, if any, is in the mask."""
    from torch.nn.attention.flex_attention import BlockMask

    from eagle3kit.errors import UserError

    if not isinstance(attention_mask, BlockMask):  # without one flex attention would look both ways
        raise UserError(f"attn_implementation {TARGET_FLEX!r} runs only on packed rows with their block mask "
                        f"(got {type(attention_mask).__name__}); load the model with sdpa or eager for other uses")
    for name in _UNSUPPORTED_ATTENTION_ARGS:
        if kwargs.get(name) is not None:
            raise UserError(f"the target's attention ({type(module).__name__}) passes {name!r}, which the packed flex "
                            "kernel does not support; train with --target-attention eager")
    score_mod = None
    if softcap:
        cap = float(softcap)

        def score_mod(score, b, h, q, kv):
            return cap * torch.tanh(score / cap)

    sink = s_aux if s_aux is not None else sinks
    if sink is None:
        out = flex(query, key, value, attention_mask, return_lse=False, scale=scaling, score_mod=score_mod)
    else:
        out, lse = flex(query, key, value, attention_mask, return_lse=True, scale=scaling, score_mod=score_mod)
        keep = torch.sigmoid(lse.float() - sink.float().view(1, -1, 1))  # (B, heads, T)
        out = (out.float() * keep[..., None]).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def register_target_flex() -> str:
    """Make ``attn_implementation="eagle3kit_flex"`` known to transformers; returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(TARGET_FLEX, _hf_flex_attention)
    return TARGET_FLEX


def merge_diagonal(out0: torch.Tensor, lse0: torch.Tensor, q: torch.Tensor, keys: list[torch.Tensor],
                   values: list[torch.Tensor]) -> torch.Tensor:
    """Add the keys ``keys[j][t]`` (one per position) to an attention over other keys.

    ``out0``/``lse0`` are the output and log-sum-exp of the attention over the step-0
    keys; the result is exactly the softmax attention over both key sets. Works per
    key-value head group without copying keys or values for grouped-query attention.
    """
    b, hq, t, d = q.shape
    hkv = keys[0].shape[1]
    g = hq // hkv
    qg = q.view(b, hkv, g, t, d)
    scale = 1.0 / math.sqrt(d)
    scores = [torch.einsum("bhgtd,bhtd->bhgt", qg, key).float() * scale for key in keys]
    weights = torch.softmax(torch.stack([lse0.view(b, hkv, g, t)] + scores, dim=-1), dim=-1).to(q.dtype)
    out = out0.view(b, hkv, g, t, d) * weights[..., 0, None]
    for j, value in enumerate(values, 1):
        out = out + weights[..., j, None] * value[:, :, None]
    return out.view(b, hq, t, d)


@dataclass
class PackedMask:
    """The document-causal mask of one packed row, in the form its backend needs."""

    backend: str
    dense: torch.Tensor | None = None
    block: Any = None
    #: eager: (start, end) of each conversation, in order
    spans: list[tuple[int, int]] | None = None

    @classmethod
    def build(cls, doc_ids: torch.Tensor, backend: str) -> "PackedMask":
        if backend == "flex":
            return cls(backend, block=flex_block_mask(doc_ids))
        if backend == "eager":
            ends = torch.cumsum(torch.bincount(doc_ids), 0).tolist()
            return cls(backend, dense=dense_doc_causal_mask(doc_ids), spans=list(zip([0] + ends[:-1], ends)))
        raise ValueError(f"unknown attention backend {backend!r} (eager or flex)")

    def causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, lse)`` of the queries ``q`` over all the keys ``k``.

        ``rows``: the positions of ``q``'s rows when it holds only some of them (then
        ``q``: (B, heads, len(rows), D)); ``None``: one query per position."""
        if self.backend == "flex":
            if rows is None:
                return flex_causal(q, k, v, self.block)
            # the block mask is for the whole row: queries go to their positions (zeros
            # elsewhere, whose outputs are dropped), so its shape and compiled kernel stay
            b, h, _, d = q.shape
            full = q.new_zeros(b, h, k.shape[2], d).index_copy(2, rows, q)
            out, lse = flex_causal(full, k, v, self.block)
            return out.index_select(2, rows), lse.index_select(2, rows)
        return conversation_eager_causal(q, k, v, self.spans, rows)


def conversation_eager_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[tuple[int, int]],
                              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eager_causal` one conversation at a time: each query meets only its own
    conversation's keys, so the scores cost the sum of len^2 over conversations, not
    T^2 for the packed row. ``rows``: ascending positions of ``q``'s rows (``None``: all)."""
    starts = [a for a, _ in spans]
    if rows is None:
        cuts = starts + [k.shape[2]]
    else:
        cuts = torch.searchsorted(rows, torch.tensor(starts, device=rows.device)).tolist() + [rows.numel()]
    outs, lses = [], []
    for (a, e), lo, hi in zip(spans, cuts, cuts[1:]):
        if hi <= lo:
            continue
        where = torch.arange(lo, hi, device=q.device) if rows is None else rows[lo:hi]
        allowed = torch.arange(a, e, device=q.device)[None, :] <= where[:, None]
        out, lse = eager_causal(q[:, :, lo:hi], k[:, :, a:e], v[:, :, a:e], allowed)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def ttt_attention(q: torch.Tensor, keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...],
                  mask: PackedMask, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of TTT step ``len(keys) - 1``: ``keys[0]`` are the step-0 keys (causal,
    one per position), ``keys[1:]`` the later steps' keys, each seen at its own position
    only. ``rows``: the positions of ``q``'s rows, which ``keys[1:]`` and ``values[1:]``
    share, when only some positions are computed (``None``: all)."""
    out0, lse0 = mask.causal(q, keys[0], values[0], rows)
    if len(keys) == 1:
        return out0
    return merge_diagonal(out0, lse0, q, list(keys[1:]), list(values[1:]))


def default_backend(device: torch.device) -> str:
    return "flex" if device.type == "cuda" else "eager"
