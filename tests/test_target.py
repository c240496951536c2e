"""The frozen target on packed rows: features equal those of each conversation alone."""

from __future__ import annotations

import torch

from eagle3kit.train.attention import PackedMask, doc_ids_from_positions
from eagle3kit.train.draft import default_aux_layers
from eagle3kit.train.target import FrozenTarget, load_target_model


def test_packed_row_gives_each_conversation_its_own_features(tiny_target):
    model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    vocab = model.config.vocab_size
    draft_ids = torch.arange(0, vocab, 3)
    target = FrozenTarget(model, default_aux_layers(model.config.num_hidden_layers), draft_ids, logits_chunk=7)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab, (11,), generator=g), torch.randint(0, vocab, (6,), generator=g)
    ids = torch.cat([a, b])
    pos = torch.cat([torch.arange(11), torch.arange(6)])
    doc = doc_ids_from_positions(pos)
    packed = target.run(ids, pos, doc, PackedMask.build(doc, "eager"))
    for part, sl in ((a, slice(0, 11)), (b, slice(11, 17))):
        p = torch.arange(part.numel())
        alone = target.run(part, p, torch.zeros_like(p))
        torch.testing.assert_close(packed.aux[:, sl], alone.aux, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.probs[sl], alone.probs, atol=1e-5, rtol=1e-5)
        # against the plain model forward on the conversation alone
        out = model(input_ids=part[None], output_hidden_states=True)
        want_aux = torch.cat([out.hidden_states[i] for i in target.aux_layers], -1)
        torch.testing.assert_close(alone.aux, want_aux, atol=1e-5, rtol=1e-5)
        logits = out.logits[0]
        torch.testing.assert_close(alone.probs, torch.softmax(logits[:, draft_ids], -1), atol=1e-5, rtol=1e-5)
        assert alone.in_vocab.tolist() == (logits.argmax(-1) % 3 == 0).tolist()


def test_flex_target_attention_matches_sdpa_on_a_packed_row(tiny_target):
    """The target's block-sparse flex kernel (the GPU default) gives the sdpa features;
    checked with flex attention's uncompiled CPU forward."""
    from eagle3kit.train.attention import TARGET_FLEX

    ids = torch.randint(0, 500, (40,), generator=torch.Generator().manual_seed(1))
    pos = torch.cat([torch.arange(25), torch.arange(15)])
    doc = doc_ids_from_positions(pos)
    outs = []
    for impl in ("sdpa", TARGET_FLEX):
        model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, attn_implementation=impl)
        target = FrozenTarget(model, [1, 3, 4], torch.arange(0, 500, 2))
        backend = "flex" if impl == TARGET_FLEX else "eager"
        outs.append(target.run(ids, pos, doc, PackedMask.build(doc, backend)))
    torch.testing.assert_close(outs[0].aux, outs[1].aux, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0].probs, outs[1].probs, atol=1e-5, rtol=1e-5)


def test_with_the_loss_mask_the_lm_head_runs_on_label_positions_only(tiny_target):
    model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    draft_ids = torch.arange(0, model.config.vocab_size, 2)
    target = FrozenTarget(model, default_aux_layers(model.config.num_hidden_layers), draft_ids, logits_chunk=4)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (20,), generator=g)
    pos = torch.cat([torch.arange(12), torch.arange(8)])
    doc = doc_ids_from_positions(pos)
    loss_mask = torch.zeros(20, dtype=torch.bool)
    loss_mask[[5, 6, 7, 15, 16, 19]] = True
    full = target.run(ids, pos, doc)
    compact = target.run(ids, pos, doc, loss_mask=loss_mask)
    labels = [4, 5, 6, 14, 15, 18]  # the tokens before answer tokens
    assert compact.probs.shape[0] == len(labels)
    torch.testing.assert_close(compact.labels(torch.tensor(labels)), full.probs[labels])
    assert compact.in_vocab.tolist() == [bool(full.in_vocab[j]) and j in labels for j in range(20)]
    torch.testing.assert_close(compact.aux, full.aux)
