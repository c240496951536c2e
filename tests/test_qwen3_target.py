"""The whole path on a Qwen3-shaped target: ChatML template, attention heads wider than
``hidden / heads`` (``head_dim`` set apart), q/k norms, tied input and output embeddings,
``rope_parameters`` with theta 1e6. Train, export to every format, evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from train_fixtures import TRAIN_ARGS, eval_report, read_conversations, run_cli


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory, mixed_data):
    from eagle3kit.tiny import build_tiny_target

    root = tmp_path_factory.mktemp("qwen3")
    target = build_tiny_target(root / "target", read_conversations(mixed_data / "train.jsonl"), style="chatml",
                               architecture="qwen3", steps=100, seed=1)
    result = run_cli(["train", "--basepath", str(target), "--trainpath", str(mixed_data / "train.jsonl"),
                      "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(root / "ck"),
                      "--cache-dir", str(root / "cache"), "--max-steps", "60", "--eval-every", "30", *TRAIN_ARGS])
    assert result.returncode == 0, result.stderr[-4000:]
    return target, root / "ck"


def test_the_draft_takes_the_qwen3_shapes_and_rope(qwen3_run):
    target, ck = qwen3_run
    t = json.loads((target / "config.json").read_text())
    assert t["architectures"] == ["Qwen3ForCausalLM"] and t["tie_word_embeddings"]
    assert t["head_dim"] * t["num_attention_heads"] != t["hidden_size"]  # the case a hidden/heads guess gets wrong
    d = json.loads((ck / "best" / "draft" / "config.json").read_text())
    assert d["eagle3kit"]["target_architectures"] == ["Qwen3ForCausalLM"]
    assert (d["head_dim"], d["num_attention_heads"], d["num_key_value_heads"]) == (t["head_dim"], 4, 2)
    assert d["rope_theta"] == 1e6 and d["max_position_embeddings"] == t["max_position_embeddings"] == 8192
    assert d["rms_norm_eps"] == t["rms_norm_eps"] and not d["tie_word_embeddings"]
    w = load_file(str(ck / "best" / "draft" / "model.safetensors"))
    heads_width = t["head_dim"] * t["num_attention_heads"]
    assert w["midlayer.self_attn.q_proj.weight"].shape == (heads_width, 2 * t["hidden_size"])
    assert w["midlayer.self_attn.k_proj.weight"].shape == (t["head_dim"] * 2, 2 * t["hidden_size"])
    assert w["midlayer.self_attn.o_proj.weight"].shape == (t["hidden_size"], heads_width)
    history = json.loads((ck / "logs" / "rank0.json").read_text())["history"]
    assert history[-1]["acc"][0] > history[0]["acc"][0] + 0.3 and history[-1]["tau_sim"] > 2.5


@pytest.mark.parametrize("fmt", ["sglang", "vllm", "speculators"])
def test_the_qwen3_draft_exports_and_checks_in_every_format(qwen3_run, tmp_path, fmt):
    from eagle3kit.cli import cli

    target, ck = qwen3_run
    out = tmp_path / fmt
    result = CliRunner().invoke(cli, ["export", str(ck / "best" / "draft"), "--to", fmt, "--out", str(out),
                                      "--basepath", str(target)])
    assert result.exit_code == 0, result.output
    assert "checked" in result.output
    check = CliRunner().invoke(cli, ["export", "--check", str(out), "--basepath", str(target)])
    assert check.exit_code == 0 and check.output.startswith("OK"), check.output


def test_speculative_decoding_of_the_qwen3_target_is_lossless_and_accepts(qwen3_run, mixed_data, tmp_path):
    target, ck = qwen3_run
    _, report = eval_report(target, ck / "best" / "draft", mixed_data / "test.jsonl", tmp_path / "eval.json",
                            samples=8, new_tokens=40, steps=5)
    assert report["prompts"] == 8 and report["identical_to_greedy"] == 8
    assert report["tau"] > 2.0


def test_the_draft_head_starts_from_the_tied_embedding(qwen3_run):
    """With tied embeddings the target's output head is its input embedding: the draft's
    lm_head starts from those rows (and training moves it away)."""
    from transformers import AutoModelForCausalLM

    from eagle3kit.checkpoint import load_draft

    target, ck = qwen3_run
    model = AutoModelForCausalLM.from_pretrained(str(target))
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    draft = load_draft(ck / "best" / "draft").requires_grad_(False)
    rows = model.get_input_embeddings().weight.detach()[draft.draft_ids]
    moved = (draft.lm_head.weight - rows).norm() / rows.norm()
    assert 0 < float(moved) < 1.0
    cos = torch.nn.functional.cosine_similarity(draft.lm_head.weight.flatten(), rows.flatten(), dim=0)
    assert float(cos) > 0.5
