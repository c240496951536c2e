"""Speculative decoding: lossless at temperature 0, the target's distribution at
temperature > 0, and acceptance that tells a trained draft from an untrained one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from eagle3kit.eval import (
    SpeculativeDecoder,
    TreeDecoder,
    accept_chain,
    accept_greedy,
    accept_tree,
    plain_decode,
    prompts_from_data,
    sampling_probs,
    summarize,
)
from eagle3kit.train.template import end_of_turn_ids


def test_greedy_acceptance_keeps_the_agreeing_prefix_and_the_target_token():
    draft = torch.tensor([5, 6, 7])
    assert accept_greedy(draft, torch.tensor([5, 6, 9, 1])) == (2, 9)
    assert accept_greedy(draft, torch.tensor([4, 6, 7, 1])) == (0, 4)
    assert accept_greedy(draft, torch.tensor([5, 6, 7, 1])) == (3, 1)  # all kept, plus the bonus token


def test_rejection_sampling_keeps_the_target_distribution_exactly():
    """Chains of 2 proposals on a 4-token vocabulary: the first two output tokens must be
    distributed as the target says, whatever the draft proposes."""
    torch.manual_seed(0)
    v, n = 4, 400_000
    g = torch.Generator().manual_seed(1)
    q1 = torch.tensor([0.55, 0.05, 0.3, 0.1])
    p1 = torch.tensor([0.1, 0.4, 0.2, 0.3])
    # the draft's and the target's second distributions depend on the first token
    q2 = torch.softmax(torch.randn(v, v, generator=g) * 2, -1)
    p2 = torch.softmax(torch.randn(v, v, generator=g) * 2, -1)
    p3 = torch.softmax(torch.randn(v, v, v, generator=g), -1)
    d1 = torch.multinomial(q1, n, replacement=True, generator=g)
    d2 = torch.multinomial(q2[d1], 1, generator=g).squeeze(-1)
    q = torch.stack([q1.expand(n, v), q2[d1]], 1)
    p = torch.stack([p1.expand(n, v), p2[d1], p3[d1, d2]], 1)
    accepted, nxt = accept_chain(torch.stack([d1, d2], 1), q, p, g)
    first = torch.where(accepted >= 1, d1, nxt)
    second = torch.where(accepted >= 2, d2, torch.where(accepted == 1, nxt, torch.full_like(nxt, -1)))
    freq1 = torch.bincount(first, minlength=v).double() / n
    torch.testing.assert_close(freq1, p1.double(), atol=4e-3, rtol=0)
    # joint of the first two tokens, where the chain produced two
    two = second >= 0
    joint = torch.zeros(v, v, dtype=torch.float64)
    joint.index_put_((first[two], second[two]), torch.ones(int(two.sum()), dtype=torch.float64), accumulate=True)
    cond = joint / joint.sum(1, keepdim=True)
    torch.testing.assert_close(cond, p2.double(), atol=1.5e-2, rtol=0)
    # and a wrong rule would fail: accepting every proposal gives the draft's distribution
    assert (torch.bincount(d1, minlength=v).double() / n - p1).abs().max() > 0.2


# a tree of 7 rows over a 5-token vocabulary: the root (row 0) proposes 2, 0, 4 (rows 1-3);
# row 1 proposes 1, 2 (rows 4, 5); row 2 proposes 3 (row 6)
TREE_CHILDREN = torch.tensor([[1, 2, 3], [4, 5, -1], [6, -1, -1]] + [[-1, -1, -1]] * 4)
TREE_TOKENS = torch.tensor([0, 2, 0, 4, 1, 2, 3])


def _walks(path: torch.Tensor, nxt: torch.Tensor) -> list[list[int]]:
    return [[int(TREE_TOKENS[r]) for r in row if r > 0] + [int(t)] for row, t in zip(path.tolist(), nxt.tolist())]


def test_target_only_tree_acceptance_keeps_the_target_distribution_exactly():
    """Every row's children are taken with the target's probability, the residual without
    them: the first, second and third tokens follow the target's distributions at the
    rows they come after, whatever the tree proposed."""
    v, n = 5, 300_000
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(7, v, generator=g) * 1.5, -1)
    path, nxt = accept_tree(p.expand(n, 7, v), TREE_CHILDREN, TREE_TOKENS, g)
    assert path.shape == (n, 6) and (path[:, 3:] == -1).all()  # the tree is 2 deep
    first = torch.where(path[:, 0] > 0, TREE_TOKENS[path[:, 0].clamp_min(0)], nxt)
    torch.testing.assert_close(torch.bincount(first, minlength=v).double() / n, p[0].double(), atol=4e-3, rtol=0)
    # the walk goes on exactly when the first token is one of the root's children, with that probability
    torch.testing.assert_close((path[:, 0] > 0).double().mean(), p[0, [2, 0, 4]].sum().double(), atol=4e-3, rtol=0)
    assert set(path[:, 0].unique().tolist()) == {-1, 1, 2, 3}
    # the second token after each child: that child's row (row 3 is a leaf: sampled from p[3] as it is)
    second = torch.where(path[:, 1] > 0, TREE_TOKENS[path[:, 1].clamp_min(0)], nxt)
    for row in (1, 2, 3):
        at = path[:, 0] == row
        freq = torch.bincount(second[at], minlength=v).double() / int(at.sum())
        torch.testing.assert_close(freq, p[row].double(), atol=1.2e-2, rtol=0)
    # the third token after 2, 1 (rows 1, 4): row 4's distribution
    at = path[:, 1] == 4
    freq = torch.bincount(nxt[at], minlength=v).double() / int(at.sum())
    torch.testing.assert_close(freq, p[4].double(), atol=2e-2, rtol=0)


def test_target_only_acceptance_of_a_one_hot_target_is_the_greedy_walk():
    """Temperature 0 (one-hot rows): the path of argmax children, then the argmax."""
    argmax = torch.tensor([0, 1, 3, 3, 4, 4, 1])  # root -> 0 (row 2) -> 3 (row 6) -> 1
    dist = torch.nn.functional.one_hot(argmax, 5).float()
    path, nxt = accept_tree(dist[None], TREE_CHILDREN, TREE_TOKENS)
    assert _walks(path, nxt) == [[0, 3, 1]] and path[0, :2].tolist() == [2, 6]
    argmax[0] = 1  # no child of the root is the argmax: the root's argmax, nothing accepted
    path, nxt = accept_tree(torch.nn.functional.one_hot(argmax, 5).float()[None], TREE_CHILDREN, TREE_TOKENS)
    assert _walks(path, nxt) == [[1]]


def _filtered(p: list[float], top_k: int, top_p: float) -> list[float]:
    """top-k then top-p of one distribution, written plainly."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    kept = [i for i in order if top_k == 0 or p[i] >= p[order[top_k - 1]]]
    total, mass, nucleus = sum(p[i] for i in kept), 0.0, []
    for i in kept:
        if mass < top_p * total:
            nucleus.append(i)
        mass += p[i]
    z = sum(p[i] for i in nucleus)
    return [p[i] / z if i in nucleus else 0.0 for i in range(len(p))]


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.6), (4, 0.5), (1, 1.0), (0, 1e-9)])
def test_sampling_probs_are_temperature_then_top_k_then_top_p(top_k, top_p):
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0, 1.5, 0.0], [0.3, 0.2, 0.1, 0.0, -0.1, -0.2]], dtype=torch.float64)
    got = sampling_probs(logits, 0.8, top_k, top_p)
    for row, out in zip(logits, got):
        p = torch.softmax(row / 0.8, -1).tolist()
        assert out.tolist() == pytest.approx(_filtered(p, top_k, top_p), abs=1e-6)


def test_sampled_trees_decode_a_target_s_distribution():
    """End to end at temperature 1 with a tiny random target: the second and third tokens
    of many tree-decoded continuations are distributed as the target says (exact
    probabilities from the target itself), and so are the chain's (target-only rule)."""
    import transformers

    from eagle3kit.train.draft import DraftConfig, Eagle3Draft

    v = 12
    config = transformers.LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # spread, but not flat, next-token distributions
    draft = Eagle3Draft(DraftConfig.from_target(model.config, v, [0, 1, 2])).eval()
    draft.set_vocab(torch.arange(v))
    prompt = [3, 7, 1]
    with torch.no_grad():
        p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
        two = torch.tensor([prompt + [a] for a in range(v)])
        p2 = torch.softmax(model(two).logits[:, -1].double(), -1)  # (x1, x2)
        three = torch.tensor([prompt + [a, b] for a in range(v) for b in range(v)])
        p3 = torch.softmax(model(three).logits[:, -1].double(), -1).view(v, v, v)
    exact2 = p1 @ p2
    exact3 = torch.einsum("a,ab,abc->c", p1, p2, p3)
    assert (exact2 - torch.full((v,), 1 / v, dtype=torch.double)).abs().max() > 0.05  # not flat
    n = 1500
    for topk, size in ((3, 7), (1, 4)):
        g = torch.Generator().manual_seed(topk)
        decoder = TreeDecoder(model, draft, steps=3, eos_ids=[], topk=topk, num_draft_tokens=size, temperature=1.0,
                              generator=g)
        outs = torch.tensor([decoder.generate(prompt, 3).tokens for _ in range(n)])
        for column, exact in ((1, exact2), (2, exact3)):
            freq = torch.bincount(outs[:, column], minlength=v).double() / n
            torch.testing.assert_close(freq, exact, atol=0.04, rtol=0)
    # nucleus and top-k sampling: the filtered target distributions, written plainly above
    f1 = torch.tensor(_filtered(p1.tolist(), 4, 0.8), dtype=torch.double)
    f2 = torch.tensor([_filtered(row, 4, 0.8) for row in p2.tolist()], dtype=torch.double)
    g = torch.Generator().manual_seed(7)
    decoder = TreeDecoder(model, draft, steps=3, eos_ids=[], topk=3, num_draft_tokens=7, temperature=1.0, generator=g,
                          top_k=4, top_p=0.8)
    outs = torch.tensor([decoder.generate(prompt, 2).tokens for _ in range(n)])
    torch.testing.assert_close(torch.bincount(outs[:, 0], minlength=v).double() / n, f1, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.bincount(outs[:, 1], minlength=v).double() / n, f1 @ f2, atol=0.04, rtol=0)
    assert int((f1 @ f2 == 0).sum()) >= 3  # the filters cut tokens the unfiltered target would give
    greedy = plain_decode(model, prompt, 6, [])
    assert plain_decode(model, prompt, 6, [], temperature=1.0, generator=g, top_k=1).tokens == greedy.tokens


@pytest.fixture(scope="module")
def target_and_prompts(tiny_target, mixed_data):
    from transformers import AutoTokenizer

    from eagle3kit.train.target import load_target_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_target)
    model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    prompts = prompts_from_data(str(mixed_data / "test.jsonl"), tokenizer, 12)
    return model, tokenizer, prompts


def _decode_all(model, draft, prompts, eos):
    decoder = SpeculativeDecoder(model, draft, steps=5, eos_ids=eos)
    return [decoder.generate(p, 48) for p in prompts]


def test_greedy_speculative_output_equals_plain_greedy_and_trained_beats_untrained(trained_run, target_and_prompts):
    from eagle3kit.checkpoint import load_draft
    from eagle3kit.train.draft import Eagle3Draft

    model, tokenizer, prompts = target_and_prompts
    eos = end_of_turn_ids(tokenizer)
    trained = load_draft(trained_run / "latest" / "draft").eval()
    untrained = Eagle3Draft(trained.config).eval()
    untrained.set_vocab(trained.draft_ids)
    spec = _decode_all(model, trained, prompts, eos)
    plain = [plain_decode(model, p, 48, eos) for p in prompts]
    for s, b in zip(spec, plain):
        assert s.tokens == b.tokens  # lossless, token for token
    base = _decode_all(model, untrained, prompts, eos)
    assert [r.tokens for r in base] == [r.tokens for r in plain]  # lossless even with a useless draft
    good, bad = summarize(spec, 5), summarize(base, 5)
    assert bad["tau"] < 1.5 < 3.0 < good["tau"]
    assert good["tau_ci95"][0] <= good["tau"] <= good["tau_ci95"][1]
    reached = good["acceptance_reached"]
    assert all(a >= b for a, b in zip(reached, reached[1:])) and reached[0] > reached[-1]
    # every pass adds accepted + 1 tokens, less what follows the end of the turn or the
    # limit; tau counts exactly the tokens after the first (the prefill's)
    for r in spec:
        assert all(1 <= n <= a + 1 for n, a in zip(r.produced, r.accepted)) and len(r.produced) == r.passes
        assert sum(r.produced) == len(r.tokens) - 1
    assert good["tau"] == sum(len(r.tokens) - 1 for r in spec) / sum(r.passes for r in spec)


def test_eval_command_writes_a_report(trained_run, tiny_target, mixed_data, tmp_path):
    from train_fixtures import eval_report

    result, report = eval_report(tiny_target, trained_run / "best" / "draft", mixed_data / "test.jsonl",
                                 tmp_path / "report.json", samples=6, new_tokens=32, steps=4)
    assert report["prompts"] == 6 and report["identical_to_greedy"] == 6
    assert report["tau"] > 2 and len(report["acceptance_rate"]) == 4 and report["speedup"] > 0
    assert "acceptance length tau" in result.output


def test_sampling_decoder_runs_and_respects_max_tokens(trained_run, target_and_prompts):
    from eagle3kit.checkpoint import load_draft

    model, tokenizer, prompts = target_and_prompts
    draft = load_draft(trained_run / "latest" / "draft").eval()
    g = torch.Generator().manual_seed(0)
    decoder = SpeculativeDecoder(model, draft, steps=4, eos_ids=end_of_turn_ids(tokenizer), temperature=0.7, generator=g)
    out = decoder.generate(prompts[0], 20)
    assert 1 <= len(out.tokens) <= 20 and out.passes >= 1


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
@pytest.mark.parametrize("name", ["qwen3", "mistral", "gptoss"])
def test_speculative_decoding_is_lossless_on_sliding_window_targets(name, tree):
    """The verification cache is cut back after every rejection; with sliding-window
    layers (and sinks) the output must still be the target's greedy output (a tree's
    verification mask is cut to each layer's window too)."""
    import transformers

    from helpers import windowed_configs

    from eagle3kit.train.draft import DraftConfig, Eagle3Draft

    config = windowed_configs()[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # peaked predictions: greedy outputs that depend on the context
    draft = Eagle3Draft(DraftConfig.from_target(model.config, 100, [1, 2, 3])).eval()
    draft.set_vocab(torch.arange(0, 300, 3))
    if tree:
        decoder = TreeDecoder(model, draft, steps=4, eos_ids=[], topk=3, num_draft_tokens=10)
    else:
        decoder = SpeculativeDecoder(model, draft, steps=4, eos_ids=[])
    outputs = set()
    for seed in range(3):
        prompt = torch.randint(0, 300, (9,), generator=torch.Generator().manual_seed(seed)).tolist()
        spec, plain = decoder.generate(prompt, 30), plain_decode(model, prompt, 30, [])
        assert spec.tokens == plain.tokens and spec.passes >= 30 // 5
        outputs.add(tuple(plain.tokens))
    assert len(outputs) == 3


def test_tree_drafting_is_lossless_and_accepts_more_than_a_chain(trained_run, target_and_prompts):
    from eagle3kit.checkpoint import load_draft

    model, tokenizer, prompts = target_and_prompts
    eos = end_of_turn_ids(tokenizer)
    draft = load_draft(trained_run / "latest" / "draft").eval()
    plain = [plain_decode(model, p, 48, eos) for p in prompts]
    chain = _decode_all(model, draft, prompts, eos)
    single = [TreeDecoder(model, draft, 5, eos, topk=1, num_draft_tokens=6).generate(p, 48) for p in prompts]
    tree = [TreeDecoder(model, draft, 5, eos, topk=4, num_draft_tokens=16).generate(p, 48) for p in prompts]
    for c, s, t, b in zip(chain, single, tree, plain):
        assert c.tokens == s.tokens == t.tokens == b.tokens  # lossless, token for token
        assert c.accepted[:-1] == s.accepted[:-1]  # a one-wide tree is the chain (the last pass may be cut short)
        assert sum(t.produced) == len(t.tokens) - 1 and all(n <= a + 1 for n, a in zip(t.produced, t.accepted))
    assert summarize(tree, 5)["tau"] > summarize(chain, 5)["tau"] + 0.1  # more candidates, longer accepted runs


def test_tree_sampling_near_temperature_zero_is_greedy_and_sampling_accepts_drafts(trained_run, target_and_prompts):
    """The sampled walk uses the right row for every node: at a temperature so low the
    target is one-hot it gives greedy's output; at 0.7 a trained draft still gets long
    accepted runs, from trees and from target-only chains."""
    from eagle3kit.checkpoint import load_draft

    model, tokenizer, prompts = target_and_prompts
    eos = end_of_turn_ids(tokenizer)
    draft = load_draft(trained_run / "latest" / "draft").eval()
    g = torch.Generator().manual_seed(0)
    cold = TreeDecoder(model, draft, 5, eos, topk=4, num_draft_tokens=16, temperature=1e-6, generator=g)
    for ids in prompts[:4]:
        assert cold.generate(ids, 32).tokens == plain_decode(model, ids, 32, eos).tokens
    for topk, size in ((4, 16), (1, 6)):
        warm = TreeDecoder(model, draft, 5, eos, topk=topk, num_draft_tokens=size, temperature=0.7, generator=g)
        runs = [warm.generate(ids, 32) for ids in prompts[:6]]
        assert all(1 <= len(r.tokens) <= 32 for r in runs)
        assert summarize(runs, 5)["tau"] > 2.0


def test_eval_command_takes_tree_options(trained_run, tiny_target, mixed_data, tmp_path):
    from click.testing import CliRunner

    from eagle3kit.cli import cli

    args = ["eval", "--basepath", str(tiny_target), "--draft", str(trained_run / "best"), "--data",
            str(mixed_data / "test.jsonl"), "--num-samples", "3", "--max-new-tokens", "16", "--steps", "3"]
    result = CliRunner().invoke(cli, args + ["--topk", "3", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["identical_to_greedy"] == 3 and report["config"]["topk"] == 3
    result = CliRunner().invoke(cli, args + ["--topk", "3", "--temperature", "0.7", "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["acceptance_rule"] == "target-only" and report["tree_size"] == 10 and "identical_to_greedy" not in report
    assert "target-only acceptance" in result.output
    result = CliRunner().invoke(cli, args + ["--temperature", "0.7", "--acceptance", "target-only", "--json",
                                             str(tmp_path / "c.json")])
    report = json.loads((tmp_path / "c.json").read_text())
    assert result.exit_code == 0 and report["acceptance_rule"] == "target-only" and report["tree_size"] == 4
    result = CliRunner().invoke(cli, args + ["--temperature", "0.7", "--top-p", "0.9", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0 and "--acceptance target-only measures that" in " ".join(result.output.split())
    assert "temperature 0.7, top-p 0.9 (rejection acceptance)" in " ".join(result.output.split())
    assert json.loads((tmp_path / "p.json").read_text())["config"]["top_p"] == 0.9
    result = CliRunner().invoke(cli, args + ["--topk", "3", "--temperature", "0.7", "--acceptance", "rejection"])
    assert result.exit_code == 2 and "sampled proposals" in result.output


def test_a_draft_for_another_target_is_named(trained_run, tiny_target, mixed_data, tmp_path):
    from click.testing import CliRunner

    from eagle3kit.checkpoint import load_draft, save_draft
    from eagle3kit.cli import cli
    from eagle3kit.train.draft import Eagle3Draft

    trained = load_draft(trained_run / "best")
    other = Eagle3Draft(dataclasses.replace(trained.config, hidden_size=64, target_hidden_size=64))
    other.set_vocab(trained.draft_ids)
    folder = save_draft(other, tmp_path / "other")
    result = CliRunner().invoke(cli, ["eval", "--basepath", str(tiny_target), "--draft", str(folder), "--data",
                                      str(mixed_data / "test.jsonl"), "--num-samples", "1"])
    assert result.exit_code == 2 and "trained for a target of hidden size 64" in result.output
    layers = trained.config.target_num_layers
    for change in ({"target_num_layers": layers + 2}, {"target_num_layers": 0, "aux_layers": [1, 2, layers + 1]}):
        other = Eagle3Draft(dataclasses.replace(trained.config, **change))  # a target as wide, but deeper
        other.set_vocab(trained.draft_ids)
        folder = save_draft(other, tmp_path / f"deeper{len(change)}")
        result = CliRunner().invoke(cli, ["eval", "--basepath", str(tiny_target), "--draft", str(folder), "--data",
                                          str(mixed_data / "test.jsonl"), "--num-samples", "1"])
        aux, depth = other.config.aux_layers, change["target_num_layers"] or "more"
        assert result.exit_code == 2 and " ".join(result.stderr.split()).endswith(
            f"Error: the draft reads hidden states {aux} of a target with {depth} decoder layers, the target "
            f"'{tiny_target}' has {layers}: wrong target?")


def test_eval_warns_when_prompts_are_rendered_otherwise_than_the_draft_was_trained(trained_run, tiny_target, mixed_data,
                                                                                   tmp_path):
    """A draft records the chat-template kwargs it was trained with; eval says when its
    prompts differ, and the exported model card tells servers to send the same."""
    import shutil

    from click.testing import CliRunner

    from eagle3kit.cli import cli
    from eagle3kit.export.card import model_card

    draft = tmp_path / "draft"
    shutil.copytree(trained_run / "best" / "draft", draft)
    config = json.loads((draft / "config.json").read_text())
    config["eagle3kit"]["chat_template_kwargs"] = {"enable_thinking": False}
    (draft / "config.json").write_text(json.dumps(config))
    base = ["eval", "--basepath", str(tiny_target), "--draft", str(draft), "--data", str(mixed_data / "test.jsonl"),
            "--num-samples", "1", "--max-new-tokens", "4", "--no-baseline"]
    otherwise = CliRunner().invoke(cli, base)
    assert otherwise.exit_code == 0, otherwise.output
    text = " ".join(otherwise.output.split())
    assert ("the draft was trained with --chat-template-kwargs '{\"enable_thinking\": false}'; these prompts are "
            "rendered with {}: pass the same to measure it as trained") in text
    same = CliRunner().invoke(cli, [*base, "--chat-template-kwargs", '{"enable_thinking": false}'])
    assert same.exit_code == 0 and "trained with --chat-template-kwargs" not in same.output
    other = CliRunner().invoke(cli, [*base, "--chat-template-kwargs", '{"enable_thinking": true}'])
    assert other.exit_code == 0, other.output
    assert ("the draft was trained with --chat-template-kwargs '{\"enable_thinking\": false}'; these prompts are "
            "rendered with {\"enable_thinking\": true}: pass the same to measure it as trained"
            ) in " ".join(other.output.split())
    # and the other way round: a draft trained without them, measured with them
    plain = base[:4] + [str(trained_run / "best" / "draft")] + base[5:]
    added = CliRunner().invoke(cli, [*plain, "--chat-template-kwargs", '{"enable_thinking": false}'])
    assert added.exit_code == 0, added.output
    assert ("the draft was trained without --chat-template-kwargs; these prompts are rendered with "
            "'{\"enable_thinking\": false}': drop them to measure it as trained") in " ".join(added.output.split())
    as_trained = CliRunner().invoke(cli, plain)
    assert as_trained.exit_code == 0 and "--chat-template-kwargs" not in as_trained.output
    card = " ".join(model_card(config, "sglang", str(draft), None, 5).split())
    assert ("chat template kwargs: `{\"enable_thinking\": false}`, so send the same `chat_template_kwargs` when serving"
            in card)


def test_only_drafts_that_record_how_they_were_trained_are_compared():
    from eagle3kit.eval.run import template_difference

    thinking = {"enable_thinking": False}
    trainer = {"step": 50, "ttt_length": 7}  # what eagle3kit's trainer records, kwargs only when given
    assert template_difference(trainer, None) is None and template_difference(trainer, {}) is None
    assert template_difference(trainer, thinking) == ("the draft was trained without --chat-template-kwargs; these "
                                                      "prompts are rendered with '{\"enable_thinking\": false}': drop "
                                                      "them to measure it as trained")
    assert template_difference({**trainer, "chat_template_kwargs": thinking}, thinking) is None
    assert template_difference({**trainer, "chat_template_kwargs": thinking}, {"enable_thinking": True}) == (
        "the draft was trained with --chat-template-kwargs '{\"enable_thinking\": false}'; these prompts are rendered "
        "with {\"enable_thinking\": true}: pass the same to measure it as trained")
    # a draft trained elsewhere (or exported from one) says nothing about its prompts
    assert template_difference({}, thinking) is None
    assert template_difference({"version": "0.1.0", "draft_config": {}}, thinking) is None


def test_source_of_reads_mixed_record_ids():
    from eagle3kit.eval.report import source_of

    assert [source_of(i) for i in ("ultrachat_12", "my_data_0", "sharegpt_x", "_3", "plain", "7")] == [
        "ultrachat", "my_data", None, None, None, None]


def test_breakdown_gives_tau_per_prompt_and_per_source():
    from eagle3kit.eval.report import breakdown

    origins = [("a_0", 0), ("b_5", 0), ("a_0", 1), ("b_9", 0)]
    out = breakdown(origins, [10, 6, 8, 3], [4, 3, 2, 3])
    assert [(r["id"], r["turn"], r["tau"]) for r in out["per_prompt"]] == [("a_0", 0, 2.5), ("b_5", 0, 2.0),
                                                                          ("a_0", 1, 4.0), ("b_9", 0, 1.0)]
    assert {k: (v["prompts"], v["tau"]) for k, v in out["by_source"].items()} == {"a": (2, 18 / 6), "b": (2, 9 / 6)}
    low, high = out["by_source"]["a"]["tau_ci95"]
    assert 2.5 <= low <= 18 / 6 <= high <= 4.0
    assert "by_source" not in breakdown(origins[:1], [4], [2])  # one source: nothing to compare
    assert "by_source" not in breakdown([("x_1", 0), ("custom", 0)], [4, 4], [2, 2])  # ids of another form


def test_the_bootstrap_interval_resamples_the_prompts_that_made_a_pass():
    import numpy as np

    from eagle3kit.eval.report import bootstrap_interval

    def plain(produced, passes, seed=0, rounds=2000):  # resample prompts with a pass; the ratio of the sums
        kept = [(p, n) for p, n in zip(produced, passes) if n]
        rng = np.random.default_rng(seed)
        ratios = []
        for draw in rng.integers(0, len(kept), size=(rounds, len(kept))):
            ratios.append(sum(kept[i][0] for i in draw) / sum(kept[i][1] for i in draw))
        return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))

    produced, passes = [12, 0, 7, 30, 0, 9], [4, 0, 3, 8, 0, 5]  # two prompts ended at their first token
    assert bootstrap_interval(produced, passes) == pytest.approx(plain(produced, passes), rel=1e-12)
    assert bootstrap_interval([2, 0, 0], [2, 0, 0]) == (1.0, 1.0)  # was (0.0, 1.0): below the least possible tau
    assert bootstrap_interval([30] + [0] * 9, [10] + [0] * 9) == (3.0, 3.0)
    low, high = bootstrap_interval([0, 0], [0, 0])
    assert low != low and high != high  # no pass: no interval


def test_eval_with_no_pass_is_an_error_and_reports_have_no_nan(trained_run, tiny_target, mixed_data, tmp_path):
    from click.testing import CliRunner

    from eagle3kit.cli import cli

    args = ["eval", "--basepath", str(tiny_target), "--draft", str(trained_run / "best" / "draft"), "--data",
            str(mixed_data / "test.jsonl"), "--num-samples", "2", "--no-baseline"]
    result = CliRunner().invoke(cli, args + ["--max-new-tokens", "1", "--json", str(tmp_path / "one.json")])
    assert result.exit_code == 2 and " ".join(result.stderr.split()).endswith(
        "Error: no verification pass over 2 prompts: every answer ended at its first token, which the prompt's own "
        "pass gives (--max-new-tokens 1); give a larger --max-new-tokens, or prompts the target answers at more length")
    assert not (tmp_path / "one.json").exists()
    result = CliRunner().invoke(cli, args + ["--max-new-tokens", "3", "--steps", "6", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.json").read_text()
    report = json.loads(text)  # strict JSON: draft positions no pass reached are null, not NaN
    assert "NaN" not in text and report["acceptance_rate"][-1] is None and report["tau"] >= 1

    from eagle3kit.errors import UserError
    from eagle3kit.export.commands import _read_eval_report

    (tmp_path / "nan.json").write_text('{"tau": NaN}')  # what an older eval wrote for such a run
    with pytest.raises(UserError) as error:
        _read_eval_report(tmp_path / "nan.json")
    assert str(error.value) == (f"--eval-report {tmp_path / 'nan.json'}: its tau is nan, not an acceptance length (at "
                                "least 1); measure the draft again with `eagle3kit eval`")


def test_eval_report_breaks_tau_down_by_prompt_and_source(trained_run, tiny_target, mixed_data, tmp_path):
    from train_fixtures import eval_report

    records = [json.loads(line) for line in (mixed_data / "test.jsonl").read_text().splitlines()]
    records = ([r for r in records if r["id"].startswith("sharegpt_")][:3]
               + [r for r in records if r["id"].startswith("ultrachat_")][:2])
    data = tmp_path / "two_sources.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    expected = [(r["id"], k) for r in records for k in range(sum(m["from"] == "human" for m in r["conversations"]))]
    result, report = eval_report(tiny_target, trained_run / "best" / "draft", data, tmp_path / "report.json",
                                 samples=len(expected), new_tokens=24, steps=3)
    rows = report["per_prompt"]
    assert [(r["id"], r["turn"]) for r in rows] == expected
    assert sum(r["produced"] for r in rows) / sum(r["passes"] for r in rows) == pytest.approx(report["tau"])
    assert set(report["by_source"]) == {"ultrachat", "sharegpt"}
    for source, figures in report["by_source"].items():
        mine = [r for r in rows if r["id"].startswith(source + "_")]
        assert figures["prompts"] == len(mine)
        assert figures["tau"] == pytest.approx(sum(r["produced"] for r in mine) / sum(r["passes"] for r in mine))
    assert "acceptance length by source" in result.output


def test_eval_with_a_target_split_over_two_processes_decodes_the_same(trained_run, tiny_target, mixed_data, tmp_path):
    """``eval --target-tp 2``: two gloo processes each hold half of the target and decode
    in step; the first reports. The figures equal a whole target's in one process (the
    split only reorders float sums; greedy choices do not change on this model)."""
    import os
    import socket
    import subprocess
    import sys

    from train_fixtures import eval_report

    draft, data = trained_run / "best" / "draft", mixed_data / "test.jsonl"
    _, whole = eval_report(tiny_target, draft, data, tmp_path / "whole.json", samples=6, new_tokens=32, steps=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ["eval", "--basepath", str(tiny_target), "--draft", str(draft), "--data", str(data), "--num-samples", "6",
            "--max-new-tokens", "32", "--steps", "4", "--json", str(tmp_path / "split.json"), "--target-tp", "2"]
    procs = [subprocess.Popen([sys.executable, "-m", "eagle3kit", *args], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu"})
             for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "acceptance length tau" in outs[0][0] + outs[0][1] and "acceptance length tau" not in outs[1][0] + outs[1][1]
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["identical_to_greedy"] == split["prompts"] == 6
    assert [(r["produced"], r["passes"]) for r in split["per_prompt"]] == [(r["produced"], r["passes"])
                                                                          for r in whole["per_prompt"]]
    assert split["tau"] == whole["tau"] and split["acceptance_rate"] == whole["acceptance_rate"]
