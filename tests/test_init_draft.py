"""Drafts trained elsewhere: ``load_draft`` reads the SGLang/EAGLE and speculators layouts,
and ``eagle3kit train --init-draft`` continues training one (its weights, sizes and
vocabulary; the target's positions), refusing drafts made for another target."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import TRAIN_ARGS, run_cli

from eagle3kit.checkpoint import load_draft, resolve_draft
from eagle3kit.errors import UserError
from eagle3kit.train.warmstart import continued_config


def eagle_style_copy(draft_dir: Path, out: Path) -> Path:
    """``draft_dir`` the way SafeAILab/EAGLE publishes drafts: ``pytorch_model.bin`` with an
    embedding and no ``t2d``, a flat config without the feature layers, 2,048 positions."""
    out.mkdir()
    config = json.loads((draft_dir / "config.json").read_text())
    for key in ("eagle3kit", "eagle_aux_hidden_state_layer_ids", "eagle_config"):
        config.pop(key)
    config["max_position_embeddings"] = 2048
    (out / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(draft_dir / "model.safetensors"))
    tensors.pop("t2d")
    tensors["embed_tokens.weight"] = torch.randn(config["vocab_size"], config["hidden_size"])
    torch.save(tensors, out / "pytorch_model.bin")
    return out


def state(draft) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in draft.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_load_draft_reads_drafts_trained_elsewhere(trained_run, tiny_target, tmp_path):
    from eagle3kit.export import export_draft

    src = trained_run / "latest" / "draft"
    reference = load_draft(src)
    eagle = load_draft(eagle_style_copy(src, tmp_path / "eagle"))
    assert_same_weights(state(eagle), state(reference))  # t2d rebuilt from d2t, the embedding ignored
    assert eagle.config.aux_layers == [] and eagle.config.max_position_embeddings == 2048
    assert reference.config.aux_layers == [1, 3, 5]

    spec_dir, _, _ = export_draft(src, "speculators", tmp_path / "spec", basepath=str(tiny_target))
    keys = load_file(str(spec_dir / "model.safetensors"))
    assert any(k.startswith("layers.0.") for k in keys) and not any(k.startswith("midlayer.") for k in keys)
    spec = load_draft(spec_dir)
    assert_same_weights(state(spec), state(reference))
    assert spec.config.aux_layers == [1, 3, 5]


def test_load_draft_names_missing_weights_and_folders(trained_run, tmp_path, tiny_target):
    with pytest.raises(UserError, match=r"a whole model \(LlamaForCausalLM, 6 decoder layers\), not an EAGLE-3 draft"):
        load_draft(tiny_target)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained_run / "latest" / "draft" / "config.json").read_text())
    tensors = load_file(str(trained_run / "latest" / "draft" / "model.safetensors"))
    tensors.pop("fc.weight")
    tensors["midlayer.mlp.up_proj.weight"] = tensors["midlayer.mlp.up_proj.weight"][:-1]
    torch.save(tensors, broken / "pytorch_model.bin")
    with pytest.raises(UserError) as error:
        load_draft(broken)
    message = str(error.value)
    assert "missing: ['fc.weight']" in message and "midlayer.mlp.up_proj.weight" in message
    assert "export --check" in message

    assert resolve_draft(trained_run / "latest") == trained_run / "latest" / "draft"  # a checkpoint: its draft
    with pytest.raises(UserError, match=r"a training run's folder; give one of its checkpoints: .*best or .*latest"):
        resolve_draft(trained_run)
    with pytest.raises(UserError, match="no such draft folder"):
        resolve_draft(tmp_path / "nowhere")
    # a run without --testpath keeps no best: its latest is named
    (tmp_path / "run" / "latest" / "draft").mkdir(parents=True)
    (tmp_path / "run" / "latest" / "draft" / "config.json").write_text("{}")
    for asked in (tmp_path / "run" / "best", tmp_path / "run" / "best" / "draft"):
        with pytest.raises(UserError) as error:
            resolve_draft(asked)
        assert str(error.value) == (f"{asked}: {tmp_path / 'run'} has no best checkpoint (a run keeps one only when it "
                                    f"evaluates on --testpath); give its latest: {tmp_path / 'run' / 'latest' / 'draft'}")
    with pytest.raises(UserError) as error:  # the tests run with HF_HUB_OFFLINE=1
        resolve_draft("someone/no-such-draft")
    assert "Hugging Face Hub" in str(error.value) and "download it" in str(error.value)


def test_continued_config_keeps_the_drafts_shapes_and_the_targets_positions(trained_run, tiny_target):
    from transformers import AutoConfig

    target = AutoConfig.from_pretrained(tiny_target)
    start = load_draft(trained_run / "latest" / "draft").config
    warnings: list[str] = []

    same = continued_config(start, target, None, "t", "src", warnings.append)
    assert dataclasses.asdict(same) == {**dataclasses.asdict(start), "target_model": "t", "torch_dtype": same.torch_dtype}
    assert warnings == []

    published = dataclasses.replace(start, aux_layers=[], max_position_embeddings=2048,
                                    rope={"rope_theta": 12345.0}, intermediate_size=2 * start.intermediate_size)
    run = continued_config(published, target, None, "t", "src", warnings.append)
    assert run.aux_layers == [1, 3, 5] and run.max_position_embeddings == target.max_position_embeddings
    assert run.intermediate_size == 2 * start.intermediate_size and run.rope == start.rope
    assert [w.split(" ")[2:5] for w in warnings] == [["does", "not", "say"], ["was", "trained", "with"],
                                                     ["says", "max_position_embeddings", "2,048;"]]

    given = continued_config(dataclasses.replace(start, aux_layers=[]), target, [1, 2, 3], "t", "src", print)
    assert given.aux_layers == [1, 2, 3]
    with pytest.raises(UserError, match=r"trained on hidden states \[1, 3, 5\], not --aux-layers 1,2,3"):
        continued_config(start, target, [1, 2, 3], "t", "src", print)
    with pytest.raises(UserError, match="vocabulary of .* it is a draft for another model"):
        continued_config(dataclasses.replace(start, vocab_size=start.vocab_size + 1), target, None, "t", "src", print)
    with pytest.raises(UserError, match="hidden size 256, the target's is 128; the draft reads the target's token"):
        continued_config(dataclasses.replace(start, hidden_size=256), target, None, "t", "src", print)
    with pytest.raises(UserError, match="features of width 256 .* it is a draft for another model"):
        continued_config(dataclasses.replace(start, target_hidden_size=256), target, None, "t", "src", print)


def test_training_continues_from_a_published_draft(trained_run, tiny_target, mixed_data, tmp_path):
    src = trained_run / "latest" / "draft"
    published = eagle_style_copy(src, tmp_path / "published")
    base = ["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
            "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(tmp_path / "ck"),
            "--cache-dir", str(tmp_path / "cache"), *TRAIN_ARGS]
    # a learning rate too small to move a weight: what is saved is what was loaded
    result = run_cli(base + ["--init-draft", str(published), "--max-steps", "1", "--lr", "1e-30", "--eval-every", "1",
                             "--draft-vocab-size", "64"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "max_position_embeddings 2,048" in result.stderr and "does not say which hidden states" in result.stderr

    saved = tmp_path / "ck" / "latest" / "draft"
    assert_same_weights(load_file(str(saved / "model.safetensors")), load_file(str(src / "model.safetensors")))
    config = json.loads((saved / "config.json").read_text())
    assert config["draft_vocab_size"] == json.loads((src / "config.json").read_text())["draft_vocab_size"] != 64
    assert config["max_position_embeddings"] == 4096 and config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5]
    assert config["eagle3kit"]["init_draft"] == str(published)

    # the run's first evaluation is the trained draft's last one: same weights, features, positions
    first = json.loads((tmp_path / "ck" / "logs" / "rank0.json").read_text())["history"][0]
    last = json.loads((trained_run / "logs" / "rank0.json").read_text())["history"][-1]
    assert first["step"] == 0 and first["acc"][0] > 0.6
    assert first["acc"] == pytest.approx(last["acc"], abs=1e-6) and first["loss"] == pytest.approx(last["loss"], rel=1e-5)

    assert "--draft-vocab-size 64: with --init-draft the vocabulary is the draft's own, so it is ignored" in \
        " ".join(result.stderr.split())

    # a run started from a draft resumes as one: its sizes and vocabulary are the checkpoint's
    again = run_cli(base + ["--resume", "--max-steps", "2", "--lr", "1e-30"])
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = tmp_path / "ck" / "latest" / "draft"
    assert os.readlink(tmp_path / "ck" / "latest") == "step_2"
    assert_same_weights(load_file(str(resumed / "model.safetensors")), load_file(str(src / "model.safetensors")))
    assert json.loads((resumed / "config.json").read_text())["eagle3kit"]["init_draft"] == str(published)
    refused = run_cli(base + ["--resume", "--init-draft", str(published)])
    assert refused.returncode == 2 and "one started with --init-draft too: it records it" in refused.stderr
