"""``eagle3kit eval``: what a draft is worth, by real speculative decoding.

Chain drafting, as SGLang and vLLM run an EAGLE-3 chain: the target reads the prompt and
gives its next token and its fused features; the draft proposes ``steps`` tokens, one
after another, from those features and its own hidden states; the target verifies all of
them in one forward pass; the longest agreeing prefix plus the target's own next token
is kept. The draft then re-reads the accepted positions with the target's true features.

* Greedy (temperature 0): a proposal is accepted iff it is the target's argmax, so the
  output is token for token the target's greedy output (lossless).
* Trees (``--topk`` > 1; :class:`TreeDecoder`): the draft grows a tree the way SGLang
  does with ``--speculative-eagle-topk``, the target checks its best
  ``--num-draft-tokens`` nodes in one pass under a tree mask, the longest accepted path
  is kept. Chains are what the EAGLE-3 training objective measures; trees are how the
  paper's and the engines' acceptance lengths are usually reported.
* Sampling, two rules (``--acceptance``), both exact (the output follows the target's
  distribution):

  - ``rejection``, chains only (:func:`accept_chain`): the draft samples its proposals;
    accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), else sample from
    norm(max(0, p_i - q_i)) and stop; after a full acceptance sample the bonus token
    from p_{s+1}. The textbook rule, and the default for a chain.
  - ``target-only`` (:func:`accept_tree`): the draft proposes its top-k tokens and the
    target takes each with its own probability p(d). This is how SGLang (any tree) and
    vLLM (EAGLE chains) verify at temperature > 0, so it measures what a server gets;
    it is the rule for trees.

Reported: mean acceptance length tau (tokens per target verification pass, the EAGLE-3
paper's figure) with a bootstrap 95% interval over prompts, the acceptance rate at each
draft position, and the wall-clock speed-up over plain decoding of the same target in the
same run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from eagle3kit.errors import UserError
from eagle3kit.train.data import end_of_turn_ids
from eagle3kit.ui import UI


@dataclass
class EvalConfig:
    basepath: str
    draft_path: str | None
    data_path: str
    num_samples: int = 80
    max_new_tokens: int = 256
    steps: int = 6
    temperature: float = 0.0
    seed: int = 0
    dtype: str = "auto"
    json_path: str | None = None
    no_baseline: bool = False
    topk: int = 1  # > 1: tree drafting, as SGLang's --speculative-eagle-topk
    acceptance: str | None = None  # at temperature > 0: rejection (chains) | target-only; None: rejection for a chain
    server: str | None = None  # measure a running SGLang / vLLM server instead (eagle3kit.eval_server)
    engine: str = "auto"  # sglang | vllm | auto
    timeout: float = 600.0  # seconds per server request
    num_draft_tokens: int | None = None  # tree nodes the target checks per pass (with the root); default 1 + topk x steps, at most 64


def tree_size(cfg: EvalConfig) -> int | None:
    """Tokens per verification pass of tree drafting (root included), or None for a chain
    decoded with :class:`SpeculativeDecoder` (a chain verified by the target-only rule is
    a one-wide tree: ``steps + 1``)."""
    chain = cfg.topk == 1 and cfg.num_draft_tokens in (None, cfg.steps + 1)
    sampled = cfg.temperature > 0
    if cfg.acceptance not in (None, "rejection", "target-only"):
        raise UserError(f"--acceptance {cfg.acceptance!r}: rejection or target-only")
    if chain and not (sampled and cfg.acceptance == "target-only"):
        return None
    size = cfg.num_draft_tokens or min(1 + cfg.topk * cfg.steps, 64)
    if size < 2:
        raise UserError(f"--num-draft-tokens {size}: at least 2 (the root and one draft token)")
    if sampled and cfg.acceptance == "rejection":
        raise UserError("--acceptance rejection needs sampled proposals, one chain: a tree proposes the draft's top-k "
                        "tokens, which only the target-only rule verifies exactly; drop --acceptance, or use --topk 1")
    return size


def acceptance_rule(cfg: EvalConfig) -> str:
    """The acceptance rule a run uses: greedy, rejection or target-only."""
    if cfg.temperature == 0:
        return "greedy"
    return "rejection" if tree_size(cfg) is None else "target-only"


# ------------------------------------------------------------------ the acceptance rule
def accept_chain(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling for a chain, batched over B independent chains.

    ``draft_tokens`` (B, s): proposals, each drawn from ``q`` (B, s, V); ``p`` (B, s+1, V):
    the target's distributions after the prefix and after each proposal. Returns
    ``(accepted (B,), next_token (B,))``: how many proposals are kept, and the token that
    follows them (a correction drawn from the residual, or the bonus from p_{s+1}).
    """
    b, s = draft_tokens.shape
    u = torch.rand(b, s, generator=generator, device=p.device)
    idx = draft_tokens.unsqueeze(-1)
    p_d = p[:, :s].gather(-1, idx).squeeze(-1)
    q_d = q.gather(-1, idx).squeeze(-1)
    ok = u * q_d <= p_d  # u < p/q, without dividing by zero
    accepted = torch.cumprod(ok.long(), dim=1).sum(1)
    rows = torch.arange(b, device=p.device)
    p_next = p[rows, accepted]  # (B, V)
    q_next = torch.zeros_like(p_next)
    rejected = accepted < s
    q_next[rejected] = q[rows[rejected], accepted[rejected]]
    residual = (p_next - q_next).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    dist = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_next)
    next_token = torch.multinomial(dist, 1, generator=generator).squeeze(-1)
    return accepted, next_token


def accept_tree(p: torch.Tensor, children: torch.Tensor, tokens: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-only verification of a draft tree, batched over B independent walks of one tree.

    ``p`` (B, R, V): the target's distribution after each tree row (row 0: the root, the
    last committed token; row r: after the path to r); ``children`` (R, C): the child rows
    of each row, in the order they are tried, -1 padded; ``tokens`` (R,): each row's token
    (row 0's unused). From the root, one uniform u per level: the first child whose
    cumulative target probability exceeds u is accepted and the walk goes on from it, so
    each child token d is taken with probability p(d). If none is, the next token is drawn
    from p with the children's tokens removed, which makes the output follow p exactly
    whatever the draft proposed. (SGLang's target-only tree sampling with thresholds 1;
    one child per row is vLLM's rule for drafts without probabilities.) A one-hot ``p``
    (temperature 0) gives the greedy walk: the target's argmax or nothing.

    Returns ``(path (B, R-1), next_token (B,))``: the accepted rows in order, -1 padded,
    and the token that follows them.
    """
    b, r, v = p.shape
    batch = torch.arange(b, device=p.device)
    padded = torch.cat([tokens.to(p.device), tokens.new_tensor([v]).to(p.device)])  # row -1: a token of no mass
    cur = torch.zeros(b, dtype=torch.long, device=p.device)
    path = torch.full((b, max(r - 1, 1)), -1, dtype=torch.long, device=p.device)
    next_token = torch.zeros(b, dtype=torch.long, device=p.device)
    walking = torch.ones(b, dtype=torch.bool, device=p.device)
    for depth in range(r):
        kids = children.to(p.device)[cur]  # (B, C)
        kid_tokens = padded[kids]  # -1 wraps to the no-mass token
        dist = torch.nn.functional.pad(p[batch, cur], (0, 1))  # (B, V + 1), the last column empty
        cum = dist.gather(1, kid_tokens).cumsum(1)
        u = torch.rand(b, 1, generator=generator, device=p.device)
        hit = (u < cum) & (kids >= 0)
        took = hit.any(1) & walking
        chosen = kids[batch, hit.long().argmax(1)]
        stop = walking & ~took
        if stop.any():
            residual = dist[stop].scatter(1, kid_tokens[stop], 0.0)[:, :v]
            empty = residual.sum(1, keepdim=True) <= 0  # rounding left no mass outside the children
            residual = torch.where(empty, dist[stop, :v], residual)
            next_token[stop] = torch.multinomial(residual, 1, generator=generator).squeeze(1)
            walking &= ~stop
        if not walking.any():
            break
        path[took, depth] = chosen[took]
        cur = torch.where(took, chosen, cur)
    return path, next_token


def accept_greedy(draft_tokens: torch.Tensor, target_argmax: torch.Tensor) -> tuple[int, int]:
    """Greedy verification of one chain: ``target_argmax`` (s+1,) are the target's choices
    after the prefix and after each proposal. Returns ``(accepted, next_token)``."""
    s = draft_tokens.numel()
    same = (draft_tokens == target_argmax[:s]).long()
    accepted = int(torch.cumprod(same, 0).sum())
    return accepted, int(target_argmax[accepted])


# ------------------------------------------------------------------ the draft at inference
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

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.draft.logits(hidden)


# ------------------------------------------------------------------ decoding
def cache_kwarg(model, cache) -> dict[str, Any]:
    """The KV cache argument under the name this transformers version uses (``cache``
    replaces ``past_key_values`` in recent releases)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


@dataclass
class Decoded:
    tokens: list[int]
    passes: int  # target forward passes after the prefill (verification passes)
    accepted: list[int] = field(default_factory=list)  # proposals accepted per pass
    seconds: float = 0.0


class SpeculativeDecoder:
    """Chain speculative decoding of one sequence at a time with a HF target and a draft."""

    def __init__(self, model, draft, steps: int, eos_ids: Sequence[int], temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        from eagle3kit.train.target import FrozenTarget

        self.model, self.draft, self.steps = model, draft, steps
        self.temperature = temperature
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
        return torch.softmax(logits / self.temperature, dim=-1)

    def _pick(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
            return int(logits.argmax(-1))
        return int(torch.multinomial(self._probs(logits), 1, generator=self.generator))

    def _draft_dist(self, hidden: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """Next draft proposal (a target id) and, when sampling, its distribution over the target vocabulary."""
        logits = self.draft.logits(hidden[:, -1:]).float()[0, 0]
        if self.temperature == 0:
            return int(self.draft_ids[logits.argmax(-1)]), None
        q_draft = torch.softmax(logits / self.temperature, dim=-1)
        q = torch.zeros(self.vocab, device=logits.device)
        q[self.draft_ids] = q_draft
        token = int(self.draft_ids[torch.multinomial(q_draft, 1, generator=self.generator)])
        return token, q

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Decoded:
        device = self.device
        start_time = time.perf_counter()
        cache, token, state, hidden = self._prefill(prompt_ids)
        out = [token]
        pos = len(prompt_ids)  # next position to be written in the target cache (the position of ``token``)
        result = Decoded(tokens=out, passes=0)
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
            result.passes += 1
            result.accepted.append(accepted)
            new = proposals[:accepted] + [nxt]
            # stop at an end-of-turn token inside the accepted run
            for i, t in enumerate(new):
                if t in self.eos:
                    new = new[: i + 1]
                    break
            out.extend(new)
            # keep the target cache for token + accepted proposals; the new token is not in it yet
            kept = pos + 1 + accepted
            excess = cache.get_seq_length() - kept
            if excess > 0:
                cache.crop(-excess)
            # the draft re-reads the accepted positions with the target's true features
            state.crop(pos)
            next_tokens = torch.tensor(proposals[:accepted] + [nxt], device=device)
            hidden = state.forward(features[:, : accepted + 1], next_tokens, self.embed, pos)
            pos = kept
            token = out[-1]
        result.tokens = out[:max_new_tokens]
        result.seconds = time.perf_counter() - start_time
        return result


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
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(model, draft, steps, eos_ids, temperature, generator)
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
                j = i
                while j >= 0:
                    ancestry[row, run_ids.index(j)] = True
                    j = nodes[j].parent
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

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Decoded:
        device = self.device
        start_time = time.perf_counter()
        cache, token, state, hidden = self._prefill(prompt_ids)
        out = [token]
        pos, pending = len(prompt_ids), [token]  # committed cache length; tokens at pos.. not in the target cache yet
        result = Decoded(tokens=out, passes=0)
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
                j = i
                while j >= 0:
                    allowed[p + r, pos + row_of[j]] = True
                    j = nodes[j].parent
                q_pos.append(pos + p - 1 + nodes[i].depth)
            q_positions = torch.tensor(q_pos, device=device)
            k_positions = torch.cat([torch.arange(pos, device=device), q_positions])
            verify = torch.tensor(pending + [nodes[i].token for i in chosen], device=device)
            features, logits = self._target_masked(verify, q_positions, k_positions, allowed, cache)
            path, nxt = self._walk(nodes, chosen, logits[[p - 1] + [row_of[i] for i in chosen]])
            result.passes += 1
            result.accepted.append(len(path))
            new = [nodes[i].token for i in path] + [nxt]
            for k, t in enumerate(new):
                if t in self.eos:
                    new = new[: k + 1]
                    break
            out.extend(new)
            # commit the pending tokens; the accepted ones are read again next pass
            excess = cache.get_seq_length() - (pos + p)
            if excess > 0:
                cache.crop(-excess)  # a negative count: what every transformers version takes
            state.crop(pos + p - 1)
            rows = torch.tensor([p - 1] + [row_of[i] for i in path], device=device)
            hidden = state.forward(features[:, rows], torch.tensor([nodes[i].token for i in path] + [nxt], device=device),
                                   self.embed, pos + p - 1)
            pos, pending = pos + p, [nodes[i].token for i in path] + [nxt]
        result.tokens = out[:max_new_tokens]
        result.seconds = time.perf_counter() - start_time
        return result

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
                 generator: torch.Generator | None = None) -> Decoded:
    """The baseline: one target forward pass per token, with a KV cache."""
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
        if temperature == 0:
            token = int(logits.argmax(-1))
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        out.append(token)
        if token in eos:
            break
        ids = torch.tensor([[token]], device=device)
    return Decoded(tokens=out, passes=len(out), seconds=time.perf_counter() - start)


# ------------------------------------------------------------------ the report
def prompts_from_data(path: str, tokenizer, limit: int) -> list[list[int]]:
    """Token ids of up to ``limit`` prompts: each human turn of each conversation, with the
    conversation before it, rendered with the chat template and the generation prompt."""
    from eagle3kit.train.data import read_unified, to_messages

    prompts = []
    for record in read_unified(path):
        messages = to_messages(record["conversations"])
        for i, message in enumerate(messages):
            if message["role"] != "user":
                continue
            text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=True)
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(prompts) >= limit:
                return prompts
    if not prompts:
        raise UserError(f"{path}: holds no human turn to use as a prompt")
    return prompts


def bootstrap_interval(produced: Sequence[int], passes: Sequence[int], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% interval of sum(produced)/sum(passes), resampling prompts."""
    import numpy as np

    produced, passes = np.asarray(produced, float), np.asarray(passes, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(produced), size=(rounds, len(produced)))
    ratios = produced[idx].sum(1) / np.maximum(passes[idx].sum(1), 1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def summarize(results: list[Decoded], steps: int) -> dict[str, Any]:
    """tau, its interval, and acceptance per draft position."""
    produced = [sum(a + 1 for a in r.accepted) for r in results]
    passes = [r.passes for r in results]
    total_passes = sum(passes)
    tau = sum(produced) / total_passes if total_passes else float("nan")
    low, high = bootstrap_interval(produced, passes) if total_passes else (float("nan"), float("nan"))
    all_accepted = [a for r in results for a in r.accepted]
    reached = [sum(1 for a in all_accepted if a >= i) for i in range(steps + 1)]
    conditional = [reached[i + 1] / reached[i] if reached[i] else float("nan") for i in range(steps)]
    unconditional = [reached[i + 1] / len(all_accepted) if all_accepted else float("nan") for i in range(steps)]
    return {"tau": tau, "tau_ci95": [low, high], "passes": total_passes, "tokens": sum(len(r.tokens) for r in results),
            "acceptance_rate": conditional, "acceptance_reached": unconditional}


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def run_eval(cfg: EvalConfig, ui: UI | None = None) -> dict[str, Any]:
    """Decode ``num_samples`` prompts speculatively (and plainly, for the speed-up); report."""
    from eagle3kit.checkpoint import load_draft
    from eagle3kit.train.draft import default_aux_layers
    from eagle3kit.train.target import load_target_model, load_tokenizer

    ui = ui or UI()
    if cfg.server:
        return _run_served(cfg, ui)
    if not cfg.draft_path:
        raise UserError("give --draft DRAFT (or --server URL to measure a running SGLang or vLLM server)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(cfg.basepath)
    model = load_target_model(cfg.basepath, device=device, dtype=dtype, attn_implementation="sdpa")
    draft = load_draft(cfg.draft_path, device=device, dtype=dtype)
    draft.eval()
    text = model.config.get_text_config()
    if draft.config.vocab_size != text.vocab_size:
        raise UserError(f"the draft was trained for a vocabulary of {draft.config.vocab_size} tokens, "
                        f"the target {cfg.basepath!r} has {text.vocab_size}: wrong target?")
    if text.hidden_size != draft.config.hidden_size or draft.config.target_hidden_size != text.hidden_size:
        raise UserError(f"the draft was trained for a target of hidden size {draft.config.target_hidden_size} (its own: "
                        f"{draft.config.hidden_size}), the target {cfg.basepath!r} has {text.hidden_size}: wrong target?")
    if not draft.config.aux_layers:
        draft.config.aux_layers = default_aux_layers(text.num_hidden_layers)
        ui.warn(f"{cfg.draft_path} does not say which hidden states it was trained on; using "
                f"{draft.config.aux_layers} (EAGLE-3's default)")
    prompts = prompts_from_data(cfg.data_path, tokenizer, cfg.num_samples)
    eos = end_of_turn_ids(tokenizer, model)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    size = tree_size(cfg)
    if size is None:
        decoder = SpeculativeDecoder(model, draft, cfg.steps, eos, cfg.temperature, gen)
    else:
        decoder = TreeDecoder(model, draft, cfg.steps, eos, cfg.topk, size, cfg.temperature, gen)

    # warm up kernels and allocator once, outside the timings
    decoder.generate(prompts[0], min(8, cfg.max_new_tokens))
    if not cfg.no_baseline:
        plain_decode(model, prompts[0], min(8, cfg.max_new_tokens), eos, cfg.temperature, gen)

    spec, base = [], []
    with ui.progress("speculative decoding", total=len(prompts)) as task:
        for ids in prompts:
            spec.append(decoder.generate(ids, cfg.max_new_tokens))
            _sync(device)
            s = summarize(spec, cfg.steps)
            task.update(advance=1, tau=f"{s['tau']:.2f}")
    if not cfg.no_baseline:
        gen.manual_seed(cfg.seed)
        with ui.progress("plain decoding (baseline)", total=len(prompts)) as task:
            for ids in prompts:
                base.append(plain_decode(model, ids, cfg.max_new_tokens, eos, cfg.temperature, gen))
                _sync(device)
                task.update(advance=1)

    report = summarize(spec, cfg.steps)
    report.update({
        "tree_size": size,
        "acceptance_rule": acceptance_rule(cfg),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "prompts": len(prompts),
        "spec_seconds": sum(r.seconds for r in spec),
        "spec_tokens_per_s": sum(len(r.tokens) for r in spec) / max(sum(r.seconds for r in spec), 1e-9),
    })
    if base:
        base_seconds = sum(r.seconds for r in base)
        report["baseline_seconds"] = base_seconds
        report["baseline_tokens_per_s"] = sum(len(r.tokens) for r in base) / max(base_seconds, 1e-9)
        report["speedup"] = report["spec_tokens_per_s"] / report["baseline_tokens_per_s"]
        if cfg.temperature == 0:
            report["identical_to_greedy"] = sum(a.tokens == b.tokens for a, b in zip(spec, base))
    return _finish(ui, report, cfg)


def _run_served(cfg: EvalConfig, ui: UI) -> dict[str, Any]:
    """``--server``: the same prompts, decoded by a running SGLang or vLLM server."""
    from eagle3kit.eval_server import served_acceptance
    from eagle3kit.train.target import load_tokenizer

    if cfg.topk != 1 or cfg.num_draft_tokens or cfg.draft_path or cfg.acceptance:
        ui.warn("with --server the server's own draft and drafting settings are measured; --draft, --steps, --topk, "
                "--num-draft-tokens and --acceptance are ignored")
    prompts = prompts_from_data(cfg.data_path, load_tokenizer(cfg.basepath), cfg.num_samples)
    return _finish(ui, served_acceptance(cfg.server, cfg.engine, prompts, cfg.max_new_tokens, cfg.temperature,
                                         cfg.timeout, ui), cfg)


def _finish(ui: UI, report: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Add the configuration to ``report``, print it, write it to ``--json``; return it."""
    report["config"] = asdict(cfg)
    _print_report(ui, report, cfg)
    if cfg.json_path:
        from eagle3kit.atomic import atomic_write_text

        atomic_write_text(cfg.json_path, json.dumps(report, indent=2) + "\n")
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_report(ui: UI, report: dict[str, Any], cfg: EvalConfig) -> None:
    from rich.table import Table

    low, high = report["tau_ci95"]
    if report.get("engine"):
        how = f"as the {report['engine']} server at {report['server']} drafts"
    elif report.get("tree_size") and cfg.topk > 1:
        how = f"trees of {report['tree_size']} tokens (top-{cfg.topk}, {cfg.steps} levels)"
    else:
        how = f"{cfg.steps} draft tokens per pass"
    rule = f" ({report['acceptance_rule']} acceptance)" if report.get("acceptance_rule") not in (None, "greedy") else ""
    table = Table(title=f"eagle3kit eval: {report['prompts']} prompts, {how}, temperature {cfg.temperature}{rule}")
    table.add_column("draft position", justify="right")
    table.add_column("acceptance rate (given the previous)", justify="right")
    table.add_column("reached", justify="right")
    for i, (c, u) in enumerate(zip(report["acceptance_rate"], report["acceptance_reached"]), 1):
        table.add_row(str(i), f"{c:.3f}" if c == c else "-", f"{u:.3f}" if u == u else "-")
    caption = f"acceptance length tau {report['tau']:.3f} (95% CI {low:.3f}-{high:.3f})"
    if "speedup" in report:
        caption += (f"; speed-up {report['speedup']:.2f}x ({report['spec_tokens_per_s']:.1f} vs "
                    f"{report['baseline_tokens_per_s']:.1f} tokens/s)")
    if "identical_to_greedy" in report:
        caption += f"; identical to greedy: {report['identical_to_greedy']}/{report['prompts']}"
    table.caption = caption
    ui.table(table)
