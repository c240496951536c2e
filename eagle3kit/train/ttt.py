"""The training-time test (TTT): the unroll of the draft over ``ttt_length`` steps, and
its loss. The one place that defines what the draft learns.

Notation for one packed row of T tokens x_0..x_{T-1}; f_t the target's fused features
at position t (it has read x_0..x_t); p_t the target's next-token distribution at t
(a prediction of x_{t+1}), restricted to the draft vocabulary and renormalised.

* Step 0 feeds ``fc(f_t)`` with the embedding of x_{t+1}; its output at t predicts
  x_{t+2}, so its label is p_{t+1}.
* Step k feeds the step-(k-1) output hidden state at t (gradient flows through it) with
  the embedding of x_{t+k+1}; its label is p_{t+k+1}, the prediction of x_{t+k+2}.
  Rotary positions are those of step 0 plus k; attention is
  :func:`eagle3kit.train.attention.ttt_attention`.
* Position t counts at step k iff the predicted token x_{t+k+2} is an assistant token
  (``loss_mask[t+k+2]``: the mask is aligned with the label at *every* step, the
  reference trainer is off by one at step 0), lies in the same conversation as t, and the
  target's top-1 token at t+k+1 is in the draft vocabulary.
* loss_k = soft cross-entropy of the draft logits against p_{t+k+1}, summed over counted
  positions and divided by their number; total = sum_k decay^k loss_k.
* Work is spent only where it can reach a loss: step k runs only on the positions still
  counted at k or later (:func:`live_positions`); step 0 also gives every position's key
  and value (later queries attend to them) but runs its queries, attention and MLP on the
  live ones. A prompt token costs one key and value, not ``ttt_length`` layer passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from eagle3kit.train.attention import PackedMask, ttt_attention
from eagle3kit.train.draft import Eagle3Draft


@dataclass
class TargetOutputs:
    """What the frozen target gives for one packed row (no gradient)."""

    aux: torch.Tensor  # (1, T, 3 * H_target): fused features
    embeds: torch.Tensor  # (1, T, H): token embeddings
    probs: torch.Tensor  # (R, V_draft): target distribution restricted to the draft vocabulary
    in_vocab: torch.Tensor  # (T,) bool: the target's top-1 token is in the draft vocabulary
    #: (T,) long: the row of ``probs`` that holds position t (-1: not computed, never a
    #: label); ``None``: ``probs`` has a row for every position (R = T)
    label_row: torch.Tensor | None = None

    def labels(self, positions: torch.Tensor) -> torch.Tensor:
        """The target distributions at ``positions``: (N,) -> (N, V_draft)."""
        rows = positions if self.label_row is None else self.label_row.index_select(0, positions)
        return self.probs.index_select(0, rows)


def label_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the positions whose target distribution can be a label at some TTT step.

    Position j is the label of step k at t = j - k - 1, counted only if ``loss_mask[j + 1]``
    (see the module docstring), whatever k: so the target's lm_head needs to run on
    these positions only (the answer tokens' predecessors), not on prompts.
    """
    need = torch.zeros_like(loss_mask, dtype=torch.bool)
    need[:-1] = loss_mask[1:]
    return need


#: Rows of the per-step statistics :func:`ttt_loss` returns (see :class:`StepStats`).
STATS_ROWS = 4


@dataclass
class StepStats:
    """Per-step sums over counted positions (they add up across batches and ranks)."""

    loss_sum: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    count: list[int] = field(default_factory=list)  # counted: an answer token whose target top-1 is in the vocabulary
    #: every answer token the step predicts, its target top-1 in the draft vocabulary or not
    answers: list[int] = field(default_factory=list)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "StepStats":
        return cls(t[0].tolist(), [int(x) for x in t[1].tolist()], [int(x) for x in t[2].tolist()],
                   [int(x) for x in t[3].tolist()] if t.shape[0] > 3 else [])

    def losses(self) -> list[float]:
        return [s / c if c else float("nan") for s, c in zip(self.loss_sum, self.count)]

    def accuracies(self) -> list[float]:
        """Top-1 agreement at each step, over the counted positions (the trained ones)."""
        return [a / c if c else float("nan") for a, c in zip(self.correct, self.count)]

    def acceptances(self) -> list[float]:
        """Top-1 agreement at each step over every answer token: a target top-1 outside the
        draft vocabulary is a miss, as in serving, where the draft cannot propose it."""
        if not self.answers:
            return self.accuracies()
        return [a / n if n else float("nan") for a, n in zip(self.correct, self.answers)]


def simulated_acceptance_length(accuracies: list[float]) -> float:
    """tau_sim = 1 + sum_k prod_{j<=k} acc_j: the expected tokens per target pass of a
    chain whose step-k proposal is right with probability acc_k given the earlier ones.
    Give it :meth:`StepStats.acceptances` (every answer token, out-of-vocabulary targets
    missed), not the accuracies over counted positions, which a small vocabulary inflates."""
    tau, run = 1.0, 1.0
    for acc in accuracies:
        if acc != acc:  # nan: no counted position at this step
            break
        run *= acc
        tau += run
    return tau


class SoftCrossEntropy(torch.autograd.Function):
    """sum_rows -sum_v p_v log softmax(h W^T)_v, in row chunks, never holding all logits
    in fp32. Also counts rows whose draft argmax equals the label's argmax (top-1 agreement).

    ``save_grad=True`` (training): the forward pass, which has each chunk's softmax at
    hand, keeps the loss's gradient with respect to the logits, ``softmax(z) sum(p) - p``,
    in the input dtype (bf16 on GPU: the precision backward would cast it to anyway)
    instead of the labels, which have the same shape; backward is then two matmuls.
    ``False``: keep the labels and recompute each chunk's logits and softmax in backward
    (one more ``h W^T``).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int,
                save_grad: bool = True):
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 math for bf16 inputs
        total = torch.zeros((), dtype=acc, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        keep = save_grad and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        dz_all = torch.empty(hidden.shape[0], weight.shape[0], dtype=hidden.dtype, device=hidden.device) if keep else None
        for s in range(0, hidden.shape[0], chunk):
            z = (hidden[s : s + chunk] @ weight.t()).to(acc)
            p = target[s : s + chunk].to(acc)
            logp = torch.log_softmax(z, dim=-1)
            total -= (p * logp).sum()
            correct += (z.argmax(-1) == p.argmax(-1)).sum()
            if dz_all is not None:
                dz_all[s : s + chunk] = logp.exp_().mul_(p.sum(-1, keepdim=True)).sub_(p)
        ctx.save_for_backward(hidden, weight, target if dz_all is None else dz_all)
        ctx.chunk, ctx.saved_grad = chunk, dz_all is not None
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_correct):
        hidden, weight, saved = ctx.saved_tensors
        acc = torch.promote_types(hidden.dtype, torch.float32)
        scale = grad_total.to(acc)  # applied to the matmul results, in fp32
        hidden_parts, grad_weight = [], None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s : s + ctx.chunk]
            if ctx.saved_grad:
                dz = saved[s : s + ctx.chunk]
            else:
                z = (h @ weight.t()).to(acc)
                p = saved[s : s + ctx.chunk].to(acc)
                dz = (torch.softmax(z, dim=-1) * p.sum(-1, keepdim=True) - p).to(hidden.dtype)
            if ctx.needs_input_grad[0]:
                hidden_parts.append((dz @ weight).to(acc).mul_(scale).to(hidden.dtype))
            if ctx.needs_input_grad[1]:  # fp32 accumulation over chunks, no zero-filled start
                part = (dz.t() @ h).to(acc)
                grad_weight = part if grad_weight is None else grad_weight.add_(part)
        grad_hidden = None
        if ctx.needs_input_grad[0]:
            grad_hidden = hidden_parts[0] if len(hidden_parts) == 1 else torch.cat(hidden_parts)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(scale).to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def step_weights(loss_mask: torch.Tensor, doc_ids: torch.Tensor, in_vocab: torch.Tensor | None, k: int) -> torch.Tensor:
    """(T,) bool: the positions t counted at TTT step k (see the module docstring);
    ``in_vocab=None``: every position predicting an answer token, whatever the target's top-1."""
    n = loss_mask.numel()
    w = torch.zeros(n, dtype=torch.bool, device=loss_mask.device)
    m = n - k - 2
    if m > 0:
        w[:m] = loss_mask[k + 2 :] & (doc_ids[k + 2 :] == doc_ids[:m])
        if in_vocab is not None:
            w[:m] &= in_vocab[k + 1 : k + 1 + m]
    return w


def shift_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, t + n] at position t, zeros past the end. x: (1, T, H)."""
    if n == 0:
        return x
    out = torch.zeros_like(x)
    if n < x.shape[1]:
        out[:, : x.shape[1] - n] = x[:, n:]
    return out


def live_positions(counted: list[torch.Tensor]) -> list[torch.Tensor]:
    """(T,) bool per step: the positions whose step-k hidden state can reach a loss.

    The step-k output at t feeds only step k+1 at t, and its key is seen only by the later
    steps' queries at t, so it matters iff t is counted at step k or at a later one:
    ``live[k] = counted[k] | counted[k+1] | ...``. Prompts and the last tokens of each
    conversation are not live: later steps skip them (a subset of the previous step's).
    """
    live, acc = [], torch.zeros_like(counted[0])
    for w in reversed(counted):
        acc = acc | w
        live.append(acc)
    return live[::-1]


def _draft_step(draft: Eagle3Draft, embeds, hidden, cos, sin, keys: tuple, values: tuple, mask: PackedMask,
                rows: torch.Tensor | None):
    """One TTT step whose outputs are the positions ``rows`` (``None``: all); returns the
    new hidden state and this step's keys and values.

    Step 0 (no cache yet) reads every position, since all are keys, and computes only
    ``rows``; later steps read only ``rows`` (their inputs are already selected).
    A pure function of its tensor arguments (the cache comes in, the new entries go out),
    so non-reentrant checkpointing can recompute it."""
    new: dict[str, torch.Tensor] = {}

    def attend(q, k, v):
        new["k"], new["v"] = k, v
        return ttt_attention(q, keys + (k,), values + (v,), mask, rows)

    hidden = draft.layer(embeds, hidden, cos, sin, attend, outputs=None if keys else rows)
    return hidden, new["k"], new["v"]


def ttt_loss(
    draft: Eagle3Draft,
    target: TargetOutputs,
    position_ids: torch.Tensor,
    doc_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    mask: PackedMask,
    ttt_length: int = 7,
    decay: float = 0.8,
    checkpoint_steps: bool = False,
    chunk: int = 4096,
    live_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The TTT loss of one packed row, and per-step sums for logging.

    ``position_ids``, ``doc_ids``, ``loss_mask``: (T,). Returns ``(total, stats)`` with
    ``stats`` a (4, ttt_length) float64 tensor on the device: per step the summed loss,
    the top-1 agreements, the counted positions and every answer position, counted or not
    (:meth:`StepStats.from_tensor`).

    Step k computes only the :func:`live_positions` (step 0 also gives every position's
    key and value). ``live_only=False`` runs every step on every position
    that has an input token (the same loss, more work: a baseline for benchmarks).
    """
    t = loss_mask.numel()
    counted = [step_weights(loss_mask, doc_ids, target.in_vocab, k) for k in range(ttt_length)]
    if live_only:
        live = live_positions(counted)
    else:
        pos = torch.arange(t, device=loss_mask.device)
        live = [pos < t - k - 1 for k in range(ttt_length)]
    # the positions of each step, found before the unroll in one go: the only host syncs
    hits = torch.stack(counted + live).nonzero()
    sizes = torch.bincount(hits[:, 0], minlength=2 * ttt_length).tolist()
    parts = torch.split(hits[:, 1], sizes)
    counted_rows, live_rows = parts[:ttt_length], parts[ttt_length:]
    # rank[k][t]: where position t sits among step k's live positions (its row in hidden)
    rank = torch.stack(live).long().cumsum(1) - 1

    hidden = draft.fc(target.aux.to(draft.fc.weight.dtype))
    embeds = target.embeds.to(hidden.dtype)
    keys: tuple = ()
    values: tuple = ()
    loss_sums, corrects = [], []
    total = hidden.new_zeros((), dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for k in range(ttt_length):
        if k == 0:  # every position in, the live ones out (none live: all, to keep the graph whole)
            rows = live_rows[0] if sizes[ttt_length] else None
            args = (draft, shift_left(embeds, 1), hidden, *draft.rope(position_ids[None], hidden), keys, values, mask, rows)
        elif not sizes[ttt_length + k]:  # no live position left: nothing more to learn in this row
            loss_sums.append(zero)
            corrects.append(zero)
            continue
        else:  # keep the live positions of the hidden state and of the diagonal keys
            rows = live_rows[k]
            keep = rank[k - 1].index_select(0, rows)
            hidden = hidden.index_select(1, keep)
            keys = keys[:1] + tuple(x.index_select(2, keep) for x in keys[1:])
            values = values[:1] + tuple(x.index_select(2, keep) for x in values[1:])
            cos, sin = draft.rope((position_ids.index_select(0, rows) + k)[None], hidden)
            args = (draft, embeds.index_select(1, rows + k + 1), hidden, cos, sin, keys, values, mask, rows)
        if checkpoint_steps and torch.is_grad_enabled():
            hidden, key, value = checkpoint(_draft_step, *args, use_reentrant=False)
        else:
            hidden, key, value = _draft_step(*args)
        keys, values = keys + (key,), values + (value,)

        where, n = counted_rows[k], sizes[k]
        if n:
            h = draft.norm(hidden[0].index_select(0, rank[k].index_select(0, where)))
            labels = target.labels(where + k + 1)
            loss_sum, correct = SoftCrossEntropy.apply(h, draft.lm_head.weight, labels, chunk)
            total = total + (decay**k) * loss_sum / n
        else:  # nothing counted at this step in this row: keep every parameter in the graph
            loss_sum = 0.0 * draft.logits(hidden[:, :1]).float().sum()
            correct = torch.zeros((), dtype=torch.long, device=hidden.device)
            total = total + loss_sum
        loss_sums.append(loss_sum.detach().double())
        corrects.append(correct.double())
    answers = torch.stack([step_weights(loss_mask, doc_ids, None, k).sum() for k in range(ttt_length)])
    stats = torch.stack([torch.stack(loss_sums), torch.stack(corrects),
                         torch.tensor(sizes[:ttt_length], dtype=torch.float64, device=hidden.device),
                         answers.to(device=hidden.device, dtype=torch.float64)])
    return total, stats
