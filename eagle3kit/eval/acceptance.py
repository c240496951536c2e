"""The acceptance rules of speculative decoding: which drafted tokens the target keeps.

* :func:`accept_greedy`: temperature 0, a chain: the proposals up to the first that is
  not the target's argmax.
* :func:`accept_chain`: temperature > 0, a chain of sampled proposals: the textbook
  rejection rule (``--acceptance rejection``).
* :func:`accept_tree`: any tree (a chain is a one-wide tree) of the draft's top tokens,
  greedy on one-hot rows or sampled: the target-only rule SGLang and vLLM verify with
  (``--acceptance target-only``).

Each keeps the target's output exactly: token for token when greedy, in distribution
when sampling (tested statistically in ``tests/test_eval.py``).
"""

from __future__ import annotations

import torch


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
    children = children.to(p.device)
    padded = torch.cat([tokens.to(p.device), tokens.new_tensor([v]).to(p.device)])  # row -1: a token of no mass
    cur = torch.zeros(b, dtype=torch.long, device=p.device)
    path = torch.full((b, max(r - 1, 1)), -1, dtype=torch.long, device=p.device)
    next_token = torch.zeros(b, dtype=torch.long, device=p.device)
    walking = torch.ones(b, dtype=torch.bool, device=p.device)
    for depth in range(r):
        kids = children[cur]  # (B, C)
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
