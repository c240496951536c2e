"""Speculative decoding of one sequence with a Hugging Face target and an EAGLE-3 draft:
chains (:class:`SpeculativeDecoder`), trees (:class:`TreeDecoder`), and the plain decoding
they are compared with (:func:`plain_decode`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from eagle3kit.eval.acceptance import accept_chain, accept_greedy, accept_tree


class DraftState:
    """The draft's KV cache for one sequence, and its attention (causal over the cache)."""

    def __init__(self, draft) -> None:
        self.draft = draft
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def crop(self, length: int) -> None:
        if self.keys is not None:
            self.keys, self.values = self.keys[:, :, :length], self.values[:, :, :length]

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor, embed, start: int) -> torch.Tensor:
        """Run the draft layer on m new positions ``start..start+m-1`` (appended to the
        cache). ``hidden`` (1, m, H or 3H_target): fused features (then ``fc`` applies) or
        the draft's own previous hidden states. Returns the output hidden states (1, m, H)."""
        from eagle3kit.train.attention import repeat_kv

        draft = self.draft
        if hidden.shape[-1] != draft.config.hidden_size or hidden.shape[-1] == 3 * draft.config.target_hidden_size:
            hidden = draft.fc(hidden.to(draft.fc.weight.dtype))
        m = token_ids.shape[-1]
        positions = torch.arange(start, start + m, device=hidden.device)[None]
        cos, sin = draft.rope(positions, hidden)
        embeds = embed(token_ids.view(1, m)).to(hidden.dtype)

        def attend(q, k, v):
            self.keys = k if self.keys is None else torch.cat([self.keys[:, :, :start], k], dim=2)
            self.values = v if self.values is None else torch.cat([self.values[:, :, :start], v], dim=2)
            groups = q.shape[1] // k.shape[1]
            kk, vv = repeat_kv(self.keys, groups), repeat_kv(self.values, groups)
            total = kk.shape[2]
            allowed = torch.arange(total, device=q.device)[None, :] <= (torch.arange(m, device=q.device)[:, None] + start)
            return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed)

        return draft.layer(embeds, hidden, cos, sin, attend)


def cache_kwarg(model, cache) -> dict[str, Any]:
    """The KV cache argument under the name this transformers version uses (``cache``
    replaces ``past_key_values`` in recent releases)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _through_end(tokens: list[int], eos: set[int]) -> list[int]:
    """``tokens`` up to and including the first end-of-turn token, if any."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def _crop_cache(cache, length: int) -> None:
    """Cut the target's KV cache back to ``length`` positions."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)  # a negative count: what every transformers version takes


@dataclass
class Decoded:
    tokens: list[int]
    passes: int  # target forward passes after the prefill (verification passes)
    accepted: list[int] = field(default_factory=list)  # proposals the target accepted, per pass
    #: tokens each pass added to the output: accepted + 1, less what follows the end of the
    #: turn or passes ``max_new_tokens`` (tau counts these, as a server's completion does)
    produced: list[int] = field(default_factory=list)
    seconds: float = 0.0


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a sampler draws from: softmax(logits / temperature), kept to the
    ``top_k`` most likely tokens (0: all; ties with the k-th kept), then to the fewest most
    likely tokens whose probability reaches ``top_p`` (1.0: all), renormalised; the order
    of vLLM and Hugging Face."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if 0 < top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, 0.0)
    if top_p < 1.0:
        ranked, order = probs.sort(dim=-1, descending=True)
        before = ranked.cumsum(-1) - ranked  # the mass of the more likely tokens
        keep = before < top_p * ranked.sum(-1, keepdim=True)
        probs = torch.where(torch.zeros_like(keep).scatter(-1, order, keep), probs, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def pick_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None, top_k: int = 0,
               top_p: float = 1.0) -> int:
    """The next token from ``logits`` (V,): the argmax at temperature 0, else a draw from
    :func:`sampling_probs` (what the speculative decoders and the plain baseline share)."""
    if temperature == 0:
        return int(logits.argmax(-1))
    return int(torch.multinomial(sampling_probs(logits, temperature, top_k, top_p), 1, generator=generator))


def _ancestry(nodes: list, i: int) -> Iterator[int]:
    """Node ``i``, its parent, and so on up to its depth-1 ancestor (the root is not a node)."""
    while i >= 0:
        yield i
        i = nodes[i].parent


class SpeculativeDecoder:
    """Chain speculative decoding of one sequence at a time with a HF target and a draft.

    Sampling (``temperature`` > 0, with ``top_k`` / ``top_p``) draws from
    :func:`sampling_probs` of the target's logits; the draft samples its proposals from the
    same transformation of its own."""

    def __init__(self, model, draft, steps: int, eos_ids: Sequence[int], temperature: float = 0.0,
                 generator: torch.Generator | None = None, top_k: int = 0, top_p: float = 1.0) -> None:
        from eagle3kit.train.target import FrozenTarget

        self.model, self.draft, self.steps = model, draft, steps
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = generator
        self.eos = set(int(i) for i in eos_ids)
        self.target = FrozenTarget(model, draft.config.aux_layers, draft.draft_ids)
        self.embed = model.get_input_embeddings()
        self.device = next(model.parameters()).device
        self.draft_ids = draft.draft_ids.to(self.device)
        self.vocab = model.get_output_embeddings().weight.shape[0]

    def _target(self, ids: torch.Tensor, start: int, cache, positions: torch.Tensor | None = None,
                attention_mask: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the target on new tokens at ``start..`` (or at ``positions``, under
        ``attention_mask``; default: causal): (features (1,m,3H), logits (m,V))."""
        if positions is None:
            positions = torch.arange(start, start + ids.shape[-1], device=ids.device)
        with self.target.capturing() as captured:
            out = self.model(input_ids=ids.view(1, -1), position_ids=positions[None], attention_mask=attention_mask,
                             use_cache=True, **cache_kwarg(self.model, cache))
        return self.target.fused(captured), out.logits[0].float()

    def _prefill(self, prompt_ids: list[int]):
        """Read the prompt: ``(cache, first token, draft state, draft hidden states)``. The
        draft reads (f_i, x_{i+1}) for every prompt position: the tokens shifted by one."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = torch.tensor(prompt_ids, device=self.device)
        features, logits = self._target(ids, 0, cache)
        token = self._pick(logits[-1])
        state = DraftState(self.draft)
        shifted = torch.cat([ids[1:], torch.tensor([token], device=ids.device)])
        return cache, token, state, state.forward(features, shifted, self.embed, 0)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return sampling_probs(logits, self.temperature, self.top_k, self.top_p)

    def _pick(self, logits: torch.Tensor) -> int:
        return pick_token(logits, self.temperature, self.generator, self.top_k, self.top_p)

    def _draft_dist(self, hidden: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """Next draft proposal (a target id) and, when sampling, its distribution over the target vocabulary."""
        logits = self.draft.logits(hidden[:, -1:]).float()[0, 0]
        if self.temperature == 0:
            return int(self.draft_ids[logits.argmax(-1)]), None
        q_draft = self._probs(logits)
        q = torch.zeros(self.vocab, device=logits.device)
        q[self.draft_ids] = q_draft
        token = int(self.draft_ids[torch.multinomial(q_draft, 1, generator=self.generator)])
        return token, q

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Decoded:
        """Decode up to ``max_new_tokens`` after the prompt, timed from the prefill on."""
        start_time = time.perf_counter()
        cache, token, state, hidden = self._prefill(prompt_ids)
        result = Decoded(tokens=[token], passes=0)
        self._passes(result, cache, state, hidden, len(prompt_ids), max_new_tokens)
        result.tokens = result.tokens[:max_new_tokens]
        result.seconds = time.perf_counter() - start_time
        return result

    def _record(self, result: Decoded, accepted: int, new: list[int], max_new_tokens: int) -> None:
        """Book one verification pass: ``accepted`` proposals and the ``new`` tokens it gives
        (accepted + the target's), of which the output keeps those up to the end of the turn
        and ``max_new_tokens``."""
        result.passes += 1
        result.accepted.append(accepted)
        emitted = _through_end(new, self.eos)[:max_new_tokens - len(result.tokens)]
        result.produced.append(len(emitted))
        result.tokens.extend(emitted)

    def _passes(self, result: Decoded, cache, state: DraftState, hidden: torch.Tensor, pos: int,
                max_new_tokens: int) -> None:
        """Draft and verify until done, extending ``result`` (chain drafting). ``pos``: the
        next position to be written in the target cache (the position of the last token)."""
        device = self.device
        out = result.tokens
        token = out[-1]
        while len(out) < max_new_tokens and token not in self.eos:
            # propose a chain: draft positions pos-1+j, j = 0..steps-1
            proposals, qs = [], []
            h = hidden[:, -1:]
            budget = min(self.steps, max_new_tokens - len(out))
            for j in range(budget):
                proposal, q = self._draft_dist(h)
                proposals.append(proposal)
                qs.append(q)
                if j + 1 < budget:
                    h = state.forward(h, torch.tensor([proposal], device=device), self.embed, pos + j)
            # verify: the target reads token, d_1..d_s at positions pos..pos+s
            verify = torch.tensor([token] + proposals, device=device)
            features, logits = self._target(verify, pos, cache)
            drafted = torch.tensor(proposals, device=device)
            if self.temperature == 0:
                accepted, nxt = accept_greedy(drafted, logits.argmax(-1))
            else:
                p = self._probs(logits)[None]
                q = torch.stack(qs)[None]
                a, nx = accept_chain(drafted[None], q, p, self.generator)
                accepted, nxt = int(a), int(nx)
            self._record(result, accepted, proposals[:accepted] + [nxt], max_new_tokens)
            # keep the target cache for token + accepted proposals; the new token is not in it yet
            kept = pos + 1 + accepted
            _crop_cache(cache, kept)
            # the draft re-reads the accepted positions with the target's true features
            state.crop(pos)
            next_tokens = torch.tensor(proposals[:accepted] + [nxt], device=device)
            hidden = state.forward(features[:, : accepted + 1], next_tokens, self.embed, pos)
            pos = kept
            token = out[-1]


@dataclass
class _Node:
    """A candidate of the draft tree: a token, its parent candidate (-1: the root), its depth
    (1 = right after the root) and the draft's cumulative log-probability of its path."""

    token: int
    parent: int
    depth: int
    score: float


class TreeDecoder(SpeculativeDecoder):
    """Tree speculative decoding, as SGLang serves EAGLE-3 with ``--speculative-eagle-topk``.

    The draft grows a tree ``steps`` levels deep: every level expands the ``topk`` best
    candidates so far (by the draft's cumulative log-probability), each into its ``topk``
    best children; the ``num_draft_tokens - 1`` best candidates of the whole tree go to
    the target, which checks all of them in one forward pass under a tree mask (each
    node sees the context and its own ancestors). :func:`accept_tree` walks the tree
    from the root, trying each node's children best first: greedy, the path whose every
    token is the target's argmax, and the output is the target's greedy output token for
    token; sampling, the target-only rule, and the output follows the target's
    distribution. ``topk=1`` with ``steps + 1`` tokens is a chain verified that way.

    The target's cache keeps only the committed context: the tokens accepted in a pass are
    read again at the start of the next pass (a few tokens more in that pass), so the
    cache is only ever cropped, which every cache layout supports.
    """

    def __init__(self, model, draft, steps: int, eos_ids: Sequence[int], topk: int, num_draft_tokens: int,
                 temperature: float = 0.0, generator: torch.Generator | None = None, top_k: int = 0,
                 top_p: float = 1.0) -> None:
        super().__init__(model, draft, steps, eos_ids, temperature, generator, top_k, top_p)
        self.topk, self.num_draft_tokens = topk, num_draft_tokens
        self.target_id = self.draft_ids.tolist()  # draft id -> target id, on the host (no sync per candidate)

    def _grow(self, state: DraftState, h_last: torch.Tensor, start: int) -> list[_Node]:
        """The candidate tree below the root, whose draft hidden state is ``h_last`` (1, 1, H);
        depth-1 candidates are read by the draft at position ``start``."""
        from eagle3kit.train.attention import repeat_kv

        device = h_last.device
        committed_k, committed_v = state.keys[:, :, :start], state.values[:, :, :start]
        nodes: list[_Node] = []
        run_ids: list[int] = []  # candidates the draft has read, in the order of tree_k/tree_v
        tree_k = tree_v = None

        def children(hidden: torch.Tensor, parents: list[int], base: list[float], depth: int) -> list[int]:
            logp = torch.log_softmax(self.draft.logits(hidden).float()[0], dim=-1)  # (n, draft vocab)
            top = torch.topk(logp, min(self.topk, logp.shape[-1]), dim=-1)
            new = []
            for row, parent in enumerate(parents):
                for lp, idx in zip(top.values[row].tolist(), top.indices[row].tolist()):
                    nodes.append(_Node(self.target_id[idx], parent, depth, base[row] + lp))
                    new.append(len(nodes) - 1)
            return new

        frontier = children(h_last, [-1], [0.0], 1)
        frontier = sorted(frontier, key=lambda i: -nodes[i].score)[: self.topk]
        hidden_of = {-1: h_last[0, 0]}
        for depth in range(1, self.steps):
            tokens = torch.tensor([nodes[i].token for i in frontier], device=device)
            hidden = torch.stack([hidden_of[nodes[i].parent] for i in frontier])[None]
            run_ids.extend(frontier)
            ancestry = torch.zeros(len(frontier), len(run_ids), dtype=torch.bool, device=device)
            for row, i in enumerate(frontier):
                for j in _ancestry(nodes, i):
                    ancestry[row, run_ids.index(j)] = True
            positions = torch.full((1, len(frontier)), start + depth - 1, device=device)
            cos, sin = self.draft.rope(positions, hidden)
            embeds = self.embed(tokens.view(1, -1)).to(hidden.dtype)

            def attend(q, k, v):
                nonlocal tree_k, tree_v
                tree_k = k if tree_k is None else torch.cat([tree_k, k], dim=2)
                tree_v = v if tree_v is None else torch.cat([tree_v, v], dim=2)
                groups = q.shape[1] // k.shape[1]
                kk = repeat_kv(torch.cat([committed_k, tree_k], dim=2), groups)
                vv = repeat_kv(torch.cat([committed_v, tree_v], dim=2), groups)
                allowed = torch.cat([torch.ones(len(frontier), start, dtype=torch.bool, device=device), ancestry], 1)
                return torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed)

            out = self.draft.layer(embeds, hidden, cos, sin, attend)  # (1, n, H)
            for row, i in enumerate(frontier):
                hidden_of[i] = out[0, row]
            grown = children(out, frontier, [nodes[i].score for i in frontier], depth + 1)
            frontier = sorted(grown, key=lambda i: -nodes[i].score)[: self.topk]
        return nodes

    def _select(self, nodes: list[_Node]) -> list[int]:
        """The best ``num_draft_tokens - 1`` candidates, ancestors before descendants (a
        parent's score is at least its child's; ties go to the shallower)."""
        order = sorted(range(len(nodes)), key=lambda i: (-nodes[i].score, nodes[i].depth, i))
        chosen: list[int] = []
        taken: set[int] = set()
        for i in order:
            if len(chosen) == self.num_draft_tokens - 1:
                break
            if nodes[i].parent == -1 or nodes[i].parent in taken:
                chosen.append(i)
                taken.add(i)
        return sorted(chosen, key=lambda i: (nodes[i].depth, i))

    def _passes(self, result: Decoded, cache, state: DraftState, hidden: torch.Tensor, pos: int,
                max_new_tokens: int) -> None:
        device = self.device
        out = result.tokens
        pending = [out[-1]]  # tokens at pos.. not in the target cache yet (pos: the committed cache length)
        while len(out) < max_new_tokens and out[-1] not in self.eos:
            p = len(pending)  # the draft has read up to position pos + p - 2 (its last hidden: pos + p - 2)
            nodes = self._grow(state, hidden[:, -1:], pos + p - 1)
            chosen = self._select(nodes)
            row_of = {i: p + r for r, i in enumerate(chosen)}
            # the target reads the pending tokens (causal) and the chosen nodes (tree) in one pass
            q = p + len(chosen)
            allowed = torch.zeros(q, pos + q, dtype=torch.bool, device=device)
            allowed[:, :pos] = True
            allowed[:p, pos:pos + p] = torch.tril(torch.ones(p, p, dtype=torch.bool, device=device))
            allowed[p:, pos:pos + p] = True
            q_pos = [pos + r for r in range(p)]
            for r, i in enumerate(chosen):
                for j in _ancestry(nodes, i):
                    allowed[p + r, pos + row_of[j]] = True
                q_pos.append(pos + p - 1 + nodes[i].depth)
            q_positions = torch.tensor(q_pos, device=device)
            k_positions = torch.cat([torch.arange(pos, device=device), q_positions])
            verify = torch.tensor(pending + [nodes[i].token for i in chosen], device=device)
            features, logits = self._target_masked(verify, q_positions, k_positions, allowed, cache)
            path, nxt = self._walk(nodes, chosen, logits[[p - 1] + [row_of[i] for i in chosen]])
            new = [nodes[i].token for i in path] + [nxt]
            self._record(result, len(path), new, max_new_tokens)
            # commit the pending tokens; the accepted ones are read again next pass
            _crop_cache(cache, pos + p)
            state.crop(pos + p - 1)
            rows = torch.tensor([p - 1] + [row_of[i] for i in path], device=device)
            hidden = state.forward(features[:, rows], torch.tensor(new, device=device), self.embed, pos + p - 1)
            pos, pending = pos + p, new

    def _walk(self, nodes: list[_Node], chosen: list[int], logits: torch.Tensor) -> tuple[list[int], int]:
        """:func:`accept_tree` on the verified tree: ``logits`` (1 + len(chosen), V) are the
        target's at the root and at each chosen node. Returns the accepted nodes and the next token."""
        tree_row = {-1: 0} | {i: r for r, i in enumerate(chosen, 1)}
        kids: list[list[int]] = [[] for _ in range(len(chosen) + 1)]
        for i in sorted(chosen, key=lambda i: -nodes[i].score):  # the draft's best child first
            kids[tree_row[nodes[i].parent]].append(tree_row[i])
        width = max(len(k) for k in kids)
        children = torch.tensor([k + [-1] * (width - len(k)) for k in kids], dtype=torch.long).view(len(kids), width)
        tokens = torch.tensor([0] + [nodes[i].token for i in chosen], dtype=torch.long)
        if self.temperature == 0:
            dist = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        else:
            dist = self._probs(logits)
        path, nxt = accept_tree(dist[None], children, tokens, self.generator)
        return [chosen[r - 1] for r in path[0].tolist() if r > 0], int(nxt[0])

    def _target_masked(self, ids: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor,
                       allowed: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """The target on ``ids`` at ``q_positions`` attending as ``allowed`` says (keys: the
        cache, then ``ids``), each sliding layer also within its window."""
        windows = self.target.windows
        masks = {}
        for kind, w in windows.items():
            a = allowed if w is None else allowed & (q_positions[:, None] - k_positions[None, :] < w)
            masks[kind] = self.target.dense_mask(a)
        return self._target(ids, 0, cache, q_positions, masks[None] if None in masks else masks)


@torch.no_grad()
def plain_decode(model, prompt_ids: list[int], max_new_tokens: int, eos_ids: Sequence[int], temperature: float = 0.0,
                 generator: torch.Generator | None = None, top_k: int = 0, top_p: float = 1.0) -> Decoded:
    """The baseline: one target forward pass per token, with a KV cache (sampling from
    :func:`sampling_probs` when ``temperature`` > 0)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    eos = set(int(i) for i in eos_ids)
    cache = DynamicCache()
    ids = torch.tensor([prompt_ids], device=device)
    pos = 0
    out: list[int] = []
    start = time.perf_counter()
    while len(out) < max_new_tokens:
        positions = torch.arange(pos, pos + ids.shape[-1], device=device)[None]
        logits = model(input_ids=ids, position_ids=positions, use_cache=True, **cache_kwarg(model, cache)).logits[0, -1].float()
        pos += ids.shape[-1]
        token = pick_token(logits, temperature, generator, top_k, top_p)
        out.append(token)
        if token in eos:
            break
        ids = torch.tensor([[token]], device=device)
    return Decoded(tokens=out, passes=len(out), produced=[1] * len(out), seconds=time.perf_counter() - start)
