"""The training-time test: its attention, its position weights and its loss, each against
a plain reference written here, and gradients reaching every trainable parameter."""

from __future__ import annotations

import math

import pytest
import torch

from eagle3kit.train.attention import PackedMask, dense_doc_causal_mask, doc_ids_from_positions, ttt_attention
from eagle3kit.train.draft import DraftConfig, Eagle3Draft
from eagle3kit.train.ttt import (SoftCrossEntropy, StepStats, TargetOutputs, label_positions, live_positions,
                                 simulated_acceptance_length, step_weights, ttt_loss)


def small_config(**kw) -> DraftConfig:
    base = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
                rms_norm_eps=1e-6, vocab_size=50, draft_vocab_size=20, max_position_embeddings=4096,
                aux_layers=[1, 2, 3], target_hidden_size=32, target_num_layers=4, rope={"rope_theta": 10000.0})
    base.update(kw)
    return DraftConfig(**base)


def packed_positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])


def slow_ttt_attention(q, keys, values, doc):
    """Plain loops: query t at step k sees step-0 keys s <= t of its conversation and the
    keys of steps 1..k at position t only."""
    b, hq, t_len, d = q.shape
    g = hq // keys[0].shape[1]
    out = torch.zeros_like(q, dtype=torch.float64)
    for h in range(hq):
        hk = h // g
        for t in range(t_len):
            ks = [keys[0][0, hk, s] for s in range(t + 1) if doc[s] == doc[t]]
            vs = [values[0][0, hk, s] for s in range(t + 1) if doc[s] == doc[t]]
            ks += [keys[j][0, hk, t] for j in range(1, len(keys))]
            vs += [values[j][0, hk, t] for j in range(1, len(keys))]
            scores = torch.stack([(q[0, h, t].double() * k.double()).sum() / math.sqrt(d) for k in ks])
            w = torch.softmax(scores, 0)
            out[0, h, t] = sum(wi * v.double() for wi, v in zip(w, vs))
    return out


def test_doc_ids_restart_with_positions():
    assert doc_ids_from_positions(packed_positions([3, 1, 2])).tolist() == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_ttt_attention_equals_the_plain_definition(steps):
    torch.manual_seed(steps)
    lengths = [5, 3, 6]
    doc = doc_ids_from_positions(packed_positions(lengths))
    t = doc.numel()
    q = torch.randn(1, 4, t, 8)
    keys = tuple(torch.randn(1, 2, t, 8) for _ in range(steps))
    values = tuple(torch.randn(1, 2, t, 8) for _ in range(steps))
    got = ttt_attention(q, keys, values, PackedMask.build(doc, "eager"))
    want = slow_ttt_attention(q, keys, values, doc.tolist())
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_flex_backend_agrees_with_eager_on_cpu_forward():
    """The GPU kernel's mask and log-sum-exp convention, checked here with flex attention's
    uncompiled forward (its backward runs on GPU only)."""
    torch.manual_seed(3)
    doc = doc_ids_from_positions(packed_positions([40, 24, 64]))
    q, k, v = torch.randn(1, 4, 128, 16), torch.randn(1, 2, 128, 16), torch.randn(1, 2, 128, 16)
    flex, eager = PackedMask.build(doc, "flex"), PackedMask.build(doc, "eager")
    (o1, l1), (o2, l2) = flex.causal(q, k, v), eager.causal(q, k, v)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    keys, values = (k, torch.randn_like(k)), (v, torch.randn_like(v))
    torch.testing.assert_close(ttt_attention(q, keys, values, flex), ttt_attention(q, keys, values, eager),
                               atol=1e-5, rtol=1e-5)


def test_block_mask_built_from_boundaries_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    from eagle3kit.train.attention import flex_block_mask

    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        lengths = torch.randint(1, 300, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
        doc = doc_ids_from_positions(packed_positions(lengths))
        n = doc.numel()
        ours = flex_block_mask(doc)
        ref = create_block_mask(lambda b, h, q, kv: (doc[q] == doc[kv]) & (kv <= q), 1, None, n, n, device="cpu")
        assert torch.equal(ours.to_dense(), ref.to_dense()), lengths
        assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks)
        assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
        for window in (1, 5, 127, 128, 129, 200, 1000):  # sliding windows, as transformers counts them
            ours = flex_block_mask(doc, window=window)
            ref = create_block_mask(lambda b, h, q, kv: (doc[q] == doc[kv]) & (kv <= q) & (q - kv < window),
                                    1, None, n, n, device="cpu")
            assert torch.equal(ours.to_dense(), ref.to_dense()), (lengths, window)
            assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks), (lengths, window)
            assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks), (lengths, window)
            # the element mask too, against the dense reference
            dense = dense_doc_causal_mask(doc, window)
            q, kv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            assert torch.equal(ours.mask_mod(0, 0, q, kv), dense)
            assert torch.equal(dense, (doc[:, None] == doc[None]) & (kv <= q) & (q - kv < window))
            # the kernel evaluates whole 128-blocks: past the row's end when n is not a multiple
            whole = torch.arange(-(-n // 128) * 128)
            q, kv = torch.meshgrid(whole, whole, indexing="ij")
            assert torch.equal(ours.mask_mod(0, 0, q, kv)[:n, :n], dense)


def test_dense_mask_never_crosses_conversations():
    doc = doc_ids_from_positions(packed_positions([2, 3]))
    assert dense_doc_causal_mask(doc).int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert dense_doc_causal_mask(doc, window=2).int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_step_weights_align_the_mask_with_the_predicted_token():
    doc = doc_ids_from_positions(packed_positions([6, 4]))
    loss_mask = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    in_vocab = torch.ones(10, dtype=torch.bool)
    in_vocab[4] = False
    for k in range(3):
        got = step_weights(loss_mask, doc, in_vocab, k).tolist()
        want = []
        for t in range(10):
            j = t + k + 2  # the token predicted at position t in step k
            want.append(j < 10 and bool(loss_mask[j]) and doc[j] == doc[t] and bool(in_vocab[t + k + 1]))
        assert got == want, k
    # step 0: position t predicts token t+2 from the label at t+1; position 3's label (4) is out of
    # the draft vocabulary; positions 4 and 5 would predict tokens of the next conversation
    assert step_weights(loss_mask, doc, in_vocab, 0).tolist()[:6] == [True, True, True, False, False, False]


@pytest.mark.parametrize("save_grad", [True, False])
def test_soft_cross_entropy_matches_autograd_in_chunks(save_grad):
    torch.manual_seed(0)
    h = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(13, 9, dtype=torch.float64), -1)
    total, correct = SoftCrossEntropy.apply(h, w, p, 5, save_grad)
    (2.5 * total).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = -(p * torch.log_softmax(h2 @ w2.T, -1)).sum()
    (2.5 * ref).backward()
    torch.testing.assert_close(total.double(), ref.detach())
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    assert int(correct) == int(((h2 @ w2.T).argmax(-1) == p.argmax(-1)).sum())


def test_soft_cross_entropy_keeps_the_logit_gradient_only_when_training():
    h = torch.randn(13, 6, requires_grad=True)
    w = torch.randn(9, 6, requires_grad=True)
    p = torch.softmax(torch.randn(13, 9), -1)
    total, _ = SoftCrossEntropy.apply(h, w, p, 4, True)
    saved = total.grad_fn.saved_tensors
    assert saved[2] is not p and saved[2].shape == p.shape  # the gradient, in the labels' place
    torch.testing.assert_close(saved[2], torch.softmax(h @ w.T, -1) - p)
    with torch.no_grad():
        total, correct = SoftCrossEntropy.apply(h, w, p, 4, True)
    assert total.grad_fn is None
    frozen = SoftCrossEntropy.apply(h.detach(), w.detach(), p, 4, True)[0]
    assert frozen.grad_fn is None


def make_inputs(config, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sum(lengths)
    positions = packed_positions(lengths)
    doc = doc_ids_from_positions(positions)
    loss_mask = torch.rand(t, generator=g) > 0.3
    target = TargetOutputs(
        aux=torch.randn(1, t, 3 * config.target_hidden_size, generator=g),
        embeds=torch.randn(1, t, config.hidden_size, generator=g),
        probs=torch.softmax(3 * torch.randn(t, config.draft_vocab_size, generator=g), -1),
        in_vocab=torch.rand(t, generator=g) > 0.1,
    )
    return positions, doc, loss_mask, target


def reference_ttt_loss(draft, target, positions, doc, loss_mask, steps, decay):
    """The TTT loss written plainly: full logits, explicit soft cross-entropy, explicit mask."""
    t = positions.numel()
    mask = PackedMask.build(doc, "eager")
    hidden = draft.fc(target.aux)
    keys, values = (), ()
    total = 0.0
    per_step = []
    for k in range(steps):
        embeds = torch.zeros_like(target.embeds)
        embeds[:, : t - k - 1] = target.embeds[:, k + 1 :]
        cos, sin = draft.rope((positions + k)[None], hidden)
        new = {}

        def attend(q, kk, vv):
            new["k"], new["v"] = kk, vv
            return ttt_attention(q, keys + (kk,), values + (vv,), mask)

        hidden = draft.layer(embeds, hidden, cos, sin, attend)
        keys, values = keys + (new["k"],), values + (new["v"],)
        logp = torch.log_softmax(draft.logits(hidden)[0].double(), -1)
        loss_sum, count = 0.0, 0
        for pos in range(t):
            label = pos + k + 1
            if label + 1 < t and loss_mask[label + 1] and doc[label + 1] == doc[pos] and target.in_vocab[label]:
                loss_sum = loss_sum - (target.probs[label].double() * logp[pos]).sum()
                count += 1
        per_step.append(count)
        total = total + decay**k * (loss_sum / max(count, 1))
    return total, per_step


@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_ttt_loss_and_gradients_equal_the_plain_reference(checkpoint_steps):
    torch.manual_seed(0)
    config = small_config()
    draft = Eagle3Draft(config).double()
    draft.set_vocab(torch.arange(0, 40, 2))
    positions, doc, loss_mask, target = make_inputs(config, [9, 5, 12])
    in_vocab = target.in_vocab.clone()
    in_vocab[1::4] = False  # some target top-1 tokens outside the draft vocabulary: not counted, still answers
    target = TargetOutputs(target.aux.double(), target.embeds.double(), target.probs.double(), in_vocab)
    mask = PackedMask.build(doc, "eager")
    loss, stats = ttt_loss(draft, target, positions, doc, loss_mask, mask, ttt_length=4, decay=0.8,
                           checkpoint_steps=checkpoint_steps, chunk=7)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in draft.named_parameters()}
    draft.zero_grad()
    ref, counts = reference_ttt_loss(draft, target, positions, doc, loss_mask, 4, 0.8)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-9, atol=1e-9)
    assert stats[2].tolist() == counts
    t = positions.numel()  # every answer token each step predicts, its target top-1 in the vocabulary or not
    answers = [sum(1 for pos in range(t) if pos + k + 2 < t and loss_mask[pos + k + 2] and doc[pos + k + 2] == doc[pos])
               for k in range(4)]
    assert stats[3].tolist() == answers and sum(answers) > sum(counts)
    for name, p in draft.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_tau_sim_counts_a_target_the_vocabulary_lacks_as_a_miss():
    # 8 of 10 counted positions agree at step 0, but 20 answers were predicted: the draft
    # could not propose the other 10 targets, so serving accepts 8 of 20
    stats = StepStats.from_tensor(torch.tensor([[1.0, 1.0], [8, 4], [10, 5], [20, 10]], dtype=torch.float64))
    assert stats.accuracies() == [0.8, 0.8] and stats.acceptances() == [0.4, 0.4]
    assert simulated_acceptance_length(stats.acceptances()) == pytest.approx(1 + 0.4 + 0.4 * 0.4)
    assert StepStats([1.0], [1], [2]).acceptances() == [0.5]  # recorded without answers: the accuracies


def prompt_heavy_inputs(config, seed=0):
    """Conversations with long prompts: later TTT steps have positions to skip."""
    lengths = [20, 9, 24]
    positions, doc, _, target = make_inputs(config, lengths, seed=seed)
    loss_mask = torch.tensor([p >= n // 2 for n in lengths for p in range(n)])
    loss_mask[30] = False  # a hole inside an answer
    return positions, doc, loss_mask, target


def test_live_positions_are_those_counted_at_this_step_or_later():
    torch.manual_seed(0)
    config = small_config()
    positions, doc, loss_mask, target = prompt_heavy_inputs(config)
    counted = [step_weights(loss_mask, doc, target.in_vocab, k) for k in range(4)]
    live = live_positions(counted)
    t = positions.numel()
    for k in range(4):
        want = [any(bool(counted[j][i]) for j in range(k, 4)) for i in range(t)]  # written plainly
        assert live[k].tolist() == want
    sizes = [int(x.sum()) for x in live]
    assert t > sizes[0] > sizes[1] > sizes[2] > sizes[3]  # prompts and conversation ends are skipped


@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_skipping_dead_positions_gives_the_plain_loss_and_gradients(checkpoint_steps):
    """Later steps run on the live positions only: the same loss, counts and gradients as
    the plain reference, and as running every step on every position."""
    torch.manual_seed(5)
    config = small_config()
    draft = Eagle3Draft(config).double()
    draft.set_vocab(torch.arange(0, 40, 2))
    positions, doc, loss_mask, target = prompt_heavy_inputs(config, seed=5)
    target = TargetOutputs(target.aux.double(), target.embeds.double(), target.probs.double(), target.in_vocab)
    mask = PackedMask.build(doc, "eager")
    results = []
    for live_only in (True, False):
        draft.zero_grad()
        loss, stats = ttt_loss(draft, target, positions, doc, loss_mask, mask, ttt_length=5, decay=0.8,
                               checkpoint_steps=checkpoint_steps, chunk=6, live_only=live_only)
        loss.backward()
        results.append((loss.detach(), stats, {n: p.grad.clone() for n, p in draft.named_parameters()}))
    draft.zero_grad()
    ref, counts = reference_ttt_loss(draft, target, positions, doc, loss_mask, 5, 0.8)
    ref.backward()
    for loss, stats, grads in results:
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-9, atol=1e-9)
        assert stats[2].tolist() == counts
        for name, p in draft.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-7, atol=1e-9, msg=name)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore")
def test_flex_backend_skips_dead_positions_like_eager_on_cpu_forward():
    """Live positions' queries are put back at their places for the flex kernel's
    whole-row block mask: the same loss as eager (forward; flex backward runs on GPU)."""
    torch.manual_seed(6)
    config = small_config(head_dim=16)
    draft = Eagle3Draft(config)
    draft.set_vocab(torch.arange(20))
    lengths = [60, 30, 70]
    positions, doc, _, target = make_inputs(config, lengths, seed=6)
    loss_mask = torch.tensor([p >= n // 2 for n in lengths for p in range(n)])
    with torch.no_grad():
        got = [ttt_loss(draft, target, positions, doc, loss_mask, PackedMask.build(doc, backend), ttt_length=4)
               for backend in ("flex", "eager")]
    torch.testing.assert_close(got[0][0], got[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore")
def test_flex_backend_gradients_equal_eager_on_cpu(monkeypatch):
    """The backward of the GPU path (flex attention returning its log-sum-exp, merged with
    the later steps' keys, on live queries only) against eager, every parameter. torch
    refuses flex backward on CPU only by a device check; its reference backward (what the
    compiled GPU kernel must equal) runs here once that check is lifted."""
    import torch.nn.attention.flex_attention as flex_module

    monkeypatch.setattr(flex_module, "_validate_device", lambda *args, **kwargs: None)
    torch.manual_seed(8)
    config = small_config(head_dim=16)
    lengths = [60, 30, 70]
    positions, doc, _, target = make_inputs(config, lengths, seed=8)
    loss_mask = torch.tensor([p >= n // 3 for n in lengths for p in range(n)])
    grads = []
    for backend in ("flex", "eager"):
        torch.manual_seed(9)
        draft = Eagle3Draft(config)
        draft.set_vocab(torch.arange(20))
        loss, _ = ttt_loss(draft, target, positions, doc, loss_mask, PackedMask.build(doc, backend), ttt_length=4)
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in draft.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[1].values())
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_row_whose_answers_end_early_stops_the_unroll_with_zero_counts():
    torch.manual_seed(7)
    config = small_config()
    draft = Eagle3Draft(config)
    draft.set_vocab(torch.arange(20))
    positions, doc, _, target = make_inputs(config, [12], seed=7)
    target.in_vocab[:] = True
    loss_mask = torch.zeros(12, dtype=torch.bool)
    loss_mask[3] = True  # one answer token: counted at step 0 (t = 1) and step 1 (t = 0) only
    loss, stats = ttt_loss(draft, target, positions, doc, loss_mask, PackedMask.build(doc, "eager"), ttt_length=4)
    assert stats[2].tolist() == [1, 1, 0, 0]
    loss.backward()
    for name, p in draft.named_parameters():
        assert p.grad is not None, name


def test_a_row_without_answers_still_puts_every_parameter_in_the_graph():
    torch.manual_seed(8)
    config = small_config()
    draft = Eagle3Draft(config)
    draft.set_vocab(torch.arange(20))
    positions, doc, _, target = make_inputs(config, [7, 5], seed=8)
    loss, stats = ttt_loss(draft, target, positions, doc, torch.zeros(12, dtype=torch.bool),
                           PackedMask.build(doc, "eager"), ttt_length=3)
    assert stats.tolist() == [[0.0] * 3] * 4
    assert loss.item() == 0.0
    loss.backward()
    for name, p in draft.named_parameters():  # DeepSpeed's reduction expects every gradient
        assert p.grad is not None and not p.grad.any(), name


def test_decoder_layer_computes_only_the_requested_outputs_from_every_key():
    """``outputs=``: the same rows as the whole layer's output, while the attention still
    sees every position's key and value."""
    torch.manual_seed(9)
    config = small_config()
    draft = Eagle3Draft(config).double()
    lengths = [9, 14]
    positions, doc, _, target = make_inputs(config, lengths, seed=9)
    embeds, hidden = target.embeds.double(), torch.randn(1, 23, config.hidden_size, dtype=torch.float64)
    cos, sin = draft.rope(positions[None], hidden)
    mask = PackedMask.build(doc, "eager")
    rows = torch.tensor([0, 4, 9, 10, 22])
    seen = {}

    def attend_all(q, k, v):
        return ttt_attention(q, (k,), (v,), mask)

    def attend_rows(q, k, v):
        seen["q"], seen["k"] = q.shape[2], k.shape[2]
        return ttt_attention(q, (k,), (v,), mask, rows)

    whole = draft.layer(embeds, hidden, cos, sin, attend_all)
    some = draft.layer(embeds, hidden, cos, sin, attend_rows, outputs=rows)
    assert seen == {"q": 5, "k": 23}
    torch.testing.assert_close(some, whole.index_select(1, rows), rtol=1e-12, atol=1e-12)


def test_target_distributions_at_label_positions_only_give_the_same_loss_and_gradients():
    """The target's lm_head may run only where a label can be (before an answer token):
    the same loss, counts and gradients as with a distribution at every position."""
    torch.manual_seed(3)
    config = small_config()
    draft = Eagle3Draft(config).double()
    draft.set_vocab(torch.arange(0, 40, 2))
    positions, doc, loss_mask, full = make_inputs(config, [9, 5, 12], seed=3)
    full = TargetOutputs(full.aux.double(), full.embeds.double(), full.probs.double(), full.in_vocab)
    t = positions.numel()
    where = [j for j in range(t - 1) if loss_mask[j + 1]]  # written plainly
    assert 0 < len(where) < t - 1
    label_row = torch.full((t,), -1, dtype=torch.long)
    label_row[where] = torch.arange(len(where))
    in_vocab = torch.zeros(t, dtype=torch.bool)
    in_vocab[where] = full.in_vocab[where]
    compact = TargetOutputs(full.aux, full.embeds, full.probs[where], in_vocab, label_row=label_row)
    mask = PackedMask.build(doc, "eager")
    results = []
    for target in (full, compact):
        draft.zero_grad()
        loss, stats = ttt_loss(draft, target, positions, doc, loss_mask, mask, ttt_length=4, chunk=5)
        loss.backward()
        results.append((loss.detach(), stats, {n: p.grad.clone() for n, p in draft.named_parameters()}))
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = results
    assert loss_a.item() == loss_b.item()
    assert stats_a.tolist() == stats_b.tolist()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    assert label_positions(loss_mask).nonzero().squeeze(-1).tolist() == where


@pytest.mark.parametrize("prompt_heavy", [False, True])
def test_every_trainable_parameter_gets_a_gradient_with_activation_checkpointing(prompt_heavy):
    torch.manual_seed(1)
    config = small_config()
    draft = Eagle3Draft(config)
    draft.set_vocab(torch.arange(20))
    positions, doc, loss_mask, target = make_inputs(config, [16, 16], seed=1)
    if prompt_heavy:
        positions, doc, loss_mask, target = prompt_heavy_inputs(config, seed=1)
    loss, _ = ttt_loss(draft, target, positions, doc, loss_mask, PackedMask.build(doc, "eager"), ttt_length=3,
                       checkpoint_steps=True)
    loss.backward()
    names = [n for n, p in draft.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n in names} == {"fc", "midlayer", "norm", "lm_head"}
    for name, p in draft.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_tau_sim_is_one_plus_the_running_products():
    assert simulated_acceptance_length([0.8, 0.5, 0.5]) == pytest.approx(1 + 0.8 + 0.4 + 0.2)
    assert simulated_acceptance_length([]) == 1.0
    assert simulated_acceptance_length([0.9, float("nan"), 0.9]) == pytest.approx(1.9)


def test_eager_attention_per_conversation_equals_the_dense_mask():
    """The eager backend scores each conversation's queries against its own keys only;
    the result equals one attention over the whole row with the dense mask, for every
    position or any ascending subset of them (conversations without a query included)."""
    from eagle3kit.train.attention import conversation_eager_causal, eager_causal

    g = torch.Generator().manual_seed(3)
    doc = doc_ids_from_positions(packed_positions([5, 1, 12, 7]))
    mask = PackedMask.build(doc, "eager")
    assert mask.spans == [(0, 5), (5, 6), (6, 18), (18, 25)]
    q = torch.randn(2, 4, 25, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 2, 25, 8, generator=g, dtype=torch.float64), torch.randn(2, 2, 25, 8, generator=g, dtype=torch.float64)
    for rows in (None, torch.tensor([0, 4, 5, 20, 24]), torch.tensor([7]), torch.tensor([6, 7, 8, 9, 10, 11, 12, 13])):
        qr = q if rows is None else q[:, :, rows]
        dense = mask.dense if rows is None else mask.dense[rows]
        want_out, want_lse = eager_causal(qr, k, v, dense)
        out, lse = conversation_eager_causal(qr, k, v, mask.spans, rows)
        torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_scaled_embeddings_give_the_same_loss():
    """Gemma's embedding module multiplies by sqrt(hidden); SGLang's and vLLM's drafts read
    the raw embedding rows. The draft normalises the embeddings before anything else, so a
    draft trained on either scale serves the same (up to the norm's epsilon)."""
    torch.manual_seed(0)
    config = small_config()
    draft = Eagle3Draft(config).double()
    draft.set_vocab(torch.arange(0, 40, 2))
    positions, doc, loss_mask, target = make_inputs(config, [9, 5, 12])
    mask = PackedMask.build(doc, "eager")
    losses = []
    for scale in (1.0, math.sqrt(config.hidden_size)):
        scaled = TargetOutputs(target.aux.double(), target.embeds.double() * scale, target.probs.double(), target.in_vocab)
        losses.append(ttt_loss(draft, scaled, positions, doc, loss_mask, mask, ttt_length=4)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    assert losses[0] != losses[1]  # equal through the norm, not because the embeddings were ignored
