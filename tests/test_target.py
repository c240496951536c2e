"""The frozen target on packed rows: features equal those of each conversation alone."""

from __future__ import annotations

import pytest
import torch

from helpers import windowed_configs

from eagle3kit.train.attention import TARGET_FLEX, PackedMask, doc_ids_from_positions
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


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # the CPU reference path
def test_flex_target_attention_matches_sdpa_on_a_packed_row(tiny_target):
    """The target's block-sparse flex kernel (the GPU default) gives the sdpa features;
    checked with flex attention's uncompiled CPU forward."""
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


# ----------------------------------------------------------------- sliding windows, sinks, soft-capping
@pytest.fixture(scope="module", params=sorted(windowed_configs()))
def windowed_target(request, tmp_path_factory):
    import transformers

    make = windowed_configs()[request.param]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make())
    with torch.no_grad():
        for layer in model.model.layers:
            if getattr(layer.self_attn, "sinks", None) is not None:
                layer.self_attn.sinks.normal_(0, 2)  # zeros at init: make them matter
    out = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(out)
    return request.param, out


@pytest.mark.parametrize("impl", ["sdpa", TARGET_FLEX])
def test_packed_rows_keep_the_targets_own_attention(windowed_target, impl):
    """Sliding windows (one mask per kind of layer), attention sinks and soft-capping:
    each conversation of a packed row gets exactly the features and distributions of the
    plain HF forward on it alone, with transformers' own masks (eager attention)."""
    name, path = windowed_target
    model = load_target_model(str(path), device=torch.device("cpu"), dtype=torch.float32, attn_implementation=impl)
    reference = load_target_model(str(path), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="eager")
    draft_ids = torch.arange(0, 300, 2)
    target = FrozenTarget(model, [1, 2, 3], draft_ids)
    assert target.windows == ({None: 6} if name == "mistral" else
                              {"full_attention": None, "sliding_attention": 5 if name == "qwen3" else 4})
    g = torch.Generator().manual_seed(0)
    lengths = [11, 3, 9]
    parts = [torch.randint(0, 300, (n,), generator=g) for n in lengths]
    ids = torch.cat(parts)
    pos = torch.cat([torch.arange(n) for n in lengths])
    doc = doc_ids_from_positions(pos)
    backend = "flex" if impl == TARGET_FLEX else "eager"
    packed = target.run(ids, pos, doc, PackedMask.build(doc, backend))
    target.windows = {None: None}  # what ignoring the windows would give
    unwindowed = target.run(ids, pos, doc, PackedMask.build(doc, backend))
    start = 0
    for part in parts:
        rows = slice(start, start + part.numel())
        start += part.numel()
        out = reference(input_ids=part[None], output_hidden_states=True)
        want = torch.cat([out.hidden_states[i] for i in (1, 2, 3)], -1)
        torch.testing.assert_close(packed.aux[:, rows], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.probs[rows], torch.softmax(out.logits[0][:, draft_ids], -1), atol=1e-5, rtol=1e-5)
    assert (unwindowed.aux - packed.aux).abs().max() > 1e-3  # the windows matter on these rows


def test_attention_windows_read_the_config():
    from types import SimpleNamespace

    from eagle3kit.errors import UserError
    from eagle3kit.train.target import attention_windows

    assert attention_windows(SimpleNamespace()) == {None: None}  # Llama
    assert attention_windows(SimpleNamespace(sliding_window=4096)) == {None: 4096}  # Mistral v0.1
    assert attention_windows(SimpleNamespace(sliding_window=131072, use_sliding_window=False,
                                             layer_types=["full_attention"] * 2)) == {"full_attention": None}  # Qwen2.5
    assert attention_windows(SimpleNamespace(sliding_window=128, layer_types=["sliding_attention", "full_attention"])) == {
        "full_attention": None, "sliding_attention": 128}  # gpt-oss
    with pytest.raises(UserError, match="'linear_attention' layers"):
        attention_windows(SimpleNamespace(layer_types=["linear_attention", "full_attention"]))


def test_windows_no_shorter_than_the_longest_conversation_need_no_second_mask(tiny_target):
    model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    target = FrozenTarget(model, [1, 2, 3], torch.arange(10))
    doc = doc_ids_from_positions(torch.cat([torch.arange(6), torch.arange(4)]))
    packed = PackedMask.build(doc, "eager")
    target.windows = {"full_attention": None, "sliding_attention": 6}
    assert torch.equal(target.attention_mask(doc, packed), packed.dense[None, None])  # conversations of 6 and 4
    target.windows = {None: 6}
    assert torch.equal(target.attention_mask(doc, packed), packed.dense[None, None])
    target.windows = {"full_attention": None, "sliding_attention": 3}
    masks = target.attention_mask(doc, packed)
    assert torch.equal(masks["full_attention"], packed.dense[None, None])
    assert masks["sliding_attention"][0, 0].int().tolist()[5] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]


def test_the_draft_head_starts_as_the_targets_head(tiny_target, windowed_target):
    """Llama's RMS norm scales by ``weight``, Gemma's by ``1 + weight``: either way the
    initial draft head gives the target's own logits on the draft vocabulary."""
    from eagle3kit.train.draft import DraftConfig, Eagle3Draft
    from eagle3kit.train.target import draft_head_from_target

    for path in (tiny_target, windowed_target[1]):
        model = load_target_model(str(path), device=torch.device("cpu"), dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            model.get_decoder().norm.weight.normal_(0, 0.5)  # not the init value
        ids = torch.arange(1, model.config.vocab_size, 5)
        head, scale = draft_head_from_target(model, ids)
        draft = Eagle3Draft(DraftConfig.from_target(model.config, ids.numel()))
        with torch.no_grad():
            draft.lm_head.weight.copy_(head)
            draft.norm.weight.copy_(scale)
            h = torch.randn(7, model.config.hidden_size)
            want = model.get_output_embeddings()(model.get_decoder().norm(h))[:, ids]
            torch.testing.assert_close(draft.logits(h), want, atol=1e-4, rtol=1e-4)


def test_the_packed_flex_kernel_refuses_to_run_without_its_block_mask(tiny_target):
    """Flex attention without a block mask attends both ways: a model loaded with the
    packed kernel and called like a plain model must fail loudly, not decode wrongly."""
    from eagle3kit.errors import UserError

    model = load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32,
                              attn_implementation=TARGET_FLEX)
    with pytest.raises(UserError, match="block mask"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_a_target_that_cannot_be_loaded_is_named(tmp_path):
    from eagle3kit.errors import UserError
    from eagle3kit.train.target import load_target_model, load_tokenizer

    file = tmp_path / "weights.bin"
    file.write_text("x")
    for path, reason in [(str(tmp_path / "nowhere"), "no such folder"), (str(file), "it is a file, not a folder"),
                         ("someone/no-such-model", "someone/no-such-model")]:  # offline: the Hub's own reason
        with pytest.raises(UserError, match=f"cannot load the tokenizer of '{path}': ") as error:
            load_tokenizer(path)
        assert reason in str(error.value) and "Hub id" in str(error.value)
        with pytest.raises(UserError, match=f"cannot load the target model '{path}': "):
            load_target_model(path, device=torch.device("cpu"), dtype=torch.float32)


def test_a_target_whose_weights_are_cut_short_says_so(tiny_target, tmp_path):
    import shutil

    from eagle3kit.errors import UserError

    for name in ("model.safetensors", "pytorch_model.bin"):
        folder = tmp_path / name
        shutil.copytree(tiny_target, folder)
        if name.endswith(".bin"):  # an older checkpoint's layout
            from safetensors.torch import load_file

            (folder / "model.safetensors").unlink()
            torch.save(load_file(str(tiny_target / "model.safetensors")), folder / name)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])  # an interrupted download or copy
        with pytest.raises(UserError) as error:
            load_target_model(str(folder), device=torch.device("cpu"), dtype=torch.float32)
        message = str(error.value)
        assert message.startswith(f"cannot load the target model '{folder}': its weights cannot be read (")
        assert message.endswith("); a file is incomplete or damaged (an interrupted download or copy): fetch it again")


def test_a_base_model_without_a_chat_template_is_refused_by_every_command(tiny_target, mixed_data, tmp_path):
    """train, eval and regenerate all render conversations with the chat template: a base
    model's tokenizer is named at load time, before any weights are read."""
    import json
    import shutil

    from train_fixtures import run_cli

    from eagle3kit.errors import UserError
    from eagle3kit.train.target import load_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_target, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "model.safetensors").write_bytes(b"not weights")  # never read: the tokenizer is refused first
    with pytest.raises(UserError, match=f"the tokenizer of '{base}' has no chat template; use an instruct/chat model"):
        load_tokenizer(str(base))
    assert load_tokenizer(str(base), chat=False).chat_template is None
    baked = load_tokenizer(str(tiny_target), template_kwargs={"enable_thinking": False})
    assert baked.chat_template == "{% set enable_thinking = false %}" + load_tokenizer(str(tiny_target)).chat_template
    data = str(mixed_data / "test.jsonl")
    for args in (["train", "--trainpath", data, "--savedir", str(tmp_path / "run"), "--max-steps", "1"],
                 ["eval", "--draft", str(tiny_target), "--data", data],
                 ["regenerate", "--input", data, "--out", str(tmp_path / "regen.jsonl")]):
        result = run_cli([args[0], "--basepath", str(base), *args[1:]])
        assert result.returncode != 0
        assert f"the tokenizer of '{base}' has no chat template" in result.stderr, (args[0], result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_target_tp_errors_name_what_to_do(tiny_target, monkeypatch):
    import importlib.util

    from eagle3kit.errors import UserError
    from eagle3kit.train.target import load_target_model
    from eagle3kit.train.target_parallel import tensor_parallel_mesh

    with pytest.raises(UserError, match=r"--target-tp 2: the 3 rank\(s\) must split into groups of 2; launch a multiple"):
        tensor_parallel_mesh(3, 2, torch.device("cpu"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(UserError, match="--target-tp needs the accelerate package: pip install accelerate"):
        load_target_model(str(tiny_target), device=torch.device("cpu"), dtype=torch.float32, tp_mesh=object())


def test_a_split_over_other_ranks_than_asked_is_refused(monkeypatch):
    """Recent transformers ignore the mesh and split over every process: with 4 processes
    and --target-tp 2 the target would be split four ways while eagle3kit pairs ranks."""
    from types import SimpleNamespace

    from eagle3kit.errors import UserError
    from eagle3kit.train import target_parallel

    monkeypatch.setattr(torch.distributed, "get_process_group_ranks", lambda group: group)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    mesh = SimpleNamespace(mesh_dim_names=("dp", "tp"))
    pair = SimpleNamespace(get_group=lambda: [2, 3], size=lambda: 2)
    monkeypatch.setattr(target_parallel, "_tp", lambda m: pair)

    def model(ranks):
        weight = SimpleNamespace(device_mesh=SimpleNamespace(mesh=torch.tensor(ranks)))
        return SimpleNamespace(parameters=lambda: iter([torch.zeros(1), weight]))

    target_parallel.check_split(model([3, 2]), mesh)  # the pair asked for
    with pytest.raises(UserError, match=r"--target-tp 2: this transformers version split the target over ranks "
                                        r"\[0, 1, 2, 3\], not over groups of 2; use --target-tp 4 \(all processes\)"):
        target_parallel.check_split(model([0, 1, 2, 3]), mesh)
    with pytest.raises(UserError, match="the target was loaded whole"):
        target_parallel.check_split(SimpleNamespace(parameters=lambda: iter([torch.zeros(1)])), mesh)


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_padding_does_not_change_a_position_dependent_rope(kind):
    """transformers picks longrope's (Phi-3-128k) and dynamic NTK's frequencies from the
    row's largest position: the padding of a row must not raise it, or every conversation
    in the row would be encoded as a long one."""
    import datasets
    import transformers

    from eagle3kit.train.packing import make_micro_batch

    torch.manual_seed(0)
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, initializer_range=0.5)
    if kind == "longrope":
        config = transformers.Phi3Config(**small, max_position_embeddings=256, original_max_position_embeddings=16,
                                         pad_token_id=0, rope_scaling={"type": "longrope", "short_factor": [1.0] * 4,
                                                                       "long_factor": [4.0] * 4})
    else:
        config = transformers.LlamaConfig(**small, max_position_embeddings=16,
                                          rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})
    config._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    target = FrozenTarget(model, [1, 2, 3], torch.arange(0, 100, 2))
    conv = torch.randint(1, 100, (10,)).tolist()
    data = datasets.Dataset.from_dict({"input_ids": [conv], "loss_mask": [[0] * 5 + [1] * 5]})
    mb = make_micro_batch(data, [0], pad_to=64)
    assert int(mb.position_ids.max()) == 9  # the padding stays within the row's own positions
    padded = target.run(mb.input_ids, mb.position_ids, mb.doc_ids, PackedMask.build(mb.doc_ids, "eager"))
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([conv]), output_hidden_states=True)
    want = torch.cat([ref.hidden_states[i] for i in (1, 2, 3)], -1)
    torch.testing.assert_close(padded.aux[:, :10], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["granite", "cohere"])
def test_output_heads_that_scale_the_logits_give_the_same_labels(name):
    """Granite divides the logits by logits_scaling, Cohere multiplies them by logit_scale:
    the soft labels are the model's own distribution."""
    import transformers

    torch.manual_seed(0)
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, initializer_range=0.2)
    config = (transformers.GraniteConfig(**small, logits_scaling=8.0) if name == "granite"
              else transformers.CohereConfig(**small, logit_scale=0.0625))
    config._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    draft_ids = torch.arange(0, 100, 2)
    target = FrozenTarget(model, [1, 2, 3], draft_ids)
    ids = torch.randint(0, 100, (12,))
    doc = torch.zeros(12, dtype=torch.long)
    out = target.run(ids, torch.arange(12), doc, PackedMask.build(doc, "eager"))
    with torch.no_grad():
        want = torch.softmax(model(input_ids=ids[None]).logits[0][:, draft_ids].float(), -1)
    torch.testing.assert_close(out.probs.float(), want, rtol=1e-5, atol=1e-6)


def test_position_dependent_ropes_are_recognised():
    import transformers

    from eagle3kit.train.target import position_dependent_rope

    small = dict(vocab_size=100, hidden_size=32, num_attention_heads=4)
    phi = transformers.Phi3Config(**small, max_position_embeddings=256, original_max_position_embeddings=16,
                                  pad_token_id=0, rope_scaling={"type": "longrope", "short_factor": [1.0] * 4,
                                                                "long_factor": [4.0] * 4})
    dynamic = transformers.LlamaConfig(**small, max_position_embeddings=16,
                                       rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0})
    assert position_dependent_rope(phi) == ("longrope", 16) and position_dependent_rope(dynamic) == ("dynamic", 16)
    assert position_dependent_rope(transformers.LlamaConfig(**small)) is None
