"""``eagle3kit export`` and ``export --check``.

Each export is loaded the way its engine loads it, by small loaders written here from the
engines' published ``load_weights`` / config code (SGLang ``LlamaForCausalLMEagle3``, vLLM
``Eagle3LlamaForCausalLM`` and its speculators config conversion), without installing
either engine. The loaded tensors must equal the draft's bit for bit, the vocabulary
mapping must give the draft's target ids, and a forward pass written the way the engines
run the layer (fused qkv / gate_up, hot-token scatter) must give the logits eagle3kit's own
``load_draft`` gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from eagle3kit.checkpoint import CONFIG, REQUIRED_KEYS, WEIGHTS, load_draft, save_draft
from eagle3kit.cli import cli
from eagle3kit.errors import UserError
from eagle3kit.export import MARKER, Problem, check_command, check_draft, export_draft
from eagle3kit.train.draft import DraftConfig, Eagle3Draft

WIDE = {"COLUMNS": "400"}
VOCAB, DRAFT_VOCAB, TARGET_LAYERS = 100, 40, 12
AUX = [2, 6, 9]
LLAMA3_ROPE = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# --------------------------------------------------------------------------------------------
# Fixtures


def make_config(**overrides) -> DraftConfig:
    values = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                  rms_norm_eps=1e-5, vocab_size=VOCAB, draft_vocab_size=DRAFT_VOCAB, max_position_embeddings=131072,
                  aux_layers=list(AUX), target_hidden_size=32, target_num_layers=TARGET_LAYERS,
                  rope={"rope_parameters": dict(LLAMA3_ROPE)}, torch_dtype="bfloat16", target_model="tiny/target")
    values.update(overrides)
    return DraftConfig(**values)


def make_draft(seed: int = 0, **overrides) -> Eagle3Draft:
    torch.manual_seed(seed)
    draft = Eagle3Draft(make_config(**overrides))
    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    g = torch.Generator().manual_seed(seed)
    draft.set_vocab(torch.sort(torch.randperm(draft.config.vocab_size, generator=g)[:draft.config.draft_vocab_size]).values)
    return draft


@pytest.fixture
def draft_dir(tmp_path) -> Path:
    return save_draft(make_draft(), tmp_path / "draft")


def write_target(folder: Path, **overrides) -> Path:
    """A target config folder (transformers 5 writes rope_parameters)."""
    from transformers import LlamaConfig

    values = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                  vocab_size=VOCAB, num_hidden_layers=TARGET_LAYERS, max_position_embeddings=131072,
                  rope_theta=LLAMA3_ROPE["rope_theta"],
                  rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"},
                  architectures=["LlamaForCausalLM"])
    values.update(overrides)
    LlamaConfig(**values).save_pretrained(folder)
    return folder


def mutate(src: Path, dst: Path, config=None, tensors=None) -> Path:
    """A copy of the draft folder ``src`` with its config and/or tensors changed in place by the callbacks."""
    shutil.copytree(src, dst)
    if config is not None:
        data = json.loads((dst / CONFIG).read_text())
        config(data)
        (dst / CONFIG).write_text(json.dumps(data, indent=2))
    if tensors is not None:
        data = load_file(str(dst / WEIGHTS))
        tensors(data)
        save_file(data, str(dst / WEIGHTS))
    return dst


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.is_error]


def find(problems: list[Problem], key: str, severity: str = "error", text: str = "") -> Problem:
    for p in problems:
        if p.key == key and p.severity == severity and text.lower() in p.message.lower():
            return p
    raise AssertionError(f"no {severity} on {key!r} containing {text!r} in:\n" + "\n".join(map(str, problems)))


# --------------------------------------------------------------------------------------------
# Loaders written from the engines' load code


STACKED = [  # (fused param, checkpoint name, shard) as SGLang and vLLM both declare them
    (".qkv_proj", ".q_proj", "q"), (".qkv_proj", ".k_proj", "k"), (".qkv_proj", ".v_proj", "v"),
    (".gate_up_proj", ".gate_proj", 0), (".gate_up_proj", ".up_proj", 1),
]
LAYER_PARAMS = ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
                "mlp.down_proj.weight", "input_layernorm.weight", "hidden_norm.weight",
                "post_attention_layernorm.weight"]


def _read(folder: Path) -> tuple[dict, dict]:
    config = json.loads((folder / CONFIG).read_text())
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return config, tensors


def _fuse(shards: dict[str, dict]) -> dict[str, torch.Tensor]:
    out = {}
    for name, parts in shards.items():
        order = ["q", "k", "v"] if "qkv_proj" in name else [0, 1]
        assert sorted(parts, key=str) == sorted(order, key=str), f"{name}: shards {list(parts)}"
        out[name] = torch.cat([parts[s] for s in order], dim=0)
    return out


def sglang_load(folder: Path) -> dict:
    """SGLang LlamaForCausalLMEagle3: config, then load_weights (unknown names dropped silently)."""
    config, tensors = _read(folder)
    assert config["architectures"] == ["LlamaForCausalLMEagle3"]  # picked by name, no rename
    assert config["model_type"] == "llama"  # read through AutoConfig
    assert config["num_hidden_layers"] == 1
    draft_vocab = config["draft_vocab_size"]  # plain attribute read: a missing key fails
    assert draft_vocab is not None
    assert not config.get("tie_word_embeddings")
    params = {"lm_head.weight", "model.embed_tokens.weight", "model.fc.weight", "model.norm.weight",
              *(f"model.midlayer.{p}" for p in LAYER_PARAMS)}
    loaded, shards, dropped, hot = {}, {}, [], None
    for name, weight in tensors.items():
        if "d2t" in name:
            hot = weight + torch.arange(weight.shape[0])
            continue
        if "t2d" in name:
            continue
        for param, ckpt, shard in STACKED:
            if ckpt not in name:
                continue
            fused = name.replace(ckpt, param)
            full = fused if fused in params else "model." + fused
            if full in params:
                shards.setdefault(full, {})[shard] = weight
            else:
                dropped.append(name)
            break
        else:
            full = name if name in params else "model." + name
            if full in params:
                loaded[full] = weight
            else:
                dropped.append(name)  # silently, in SGLang
    loaded.update(_fuse(shards))
    nested = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    capture = [i + 1 for i in nested] if nested is not None else [2, TARGET_LAYERS // 2, TARGET_LAYERS - 3]
    return {"config": config, "params": loaded, "dropped": dropped, "hot_token_id": hot, "capture": capture,
            # SGLang always adds the residual before hidden_norm (norm_before_residual is not read).
            "norm_before_residual": False, "rope_config": config, "vocab_size": config["vocab_size"],
            "missing": sorted(params - set(loaded) - {"model.embed_tokens.weight"})}


def vllm_load(folder: Path, config: dict | None = None) -> dict:
    """vLLM Eagle3LlamaForCausalLM.load_weights and LlamaModel.load_weights (unknown name -> KeyError)."""
    raw, tensors = _read(folder)
    config = raw if config is None else config
    arch = config["architectures"][0]
    if not (arch.startswith("Eagle3") or arch.endswith("Eagle3")):  # EAGLEConfig for method eagle3
        arch = "Eagle3" + arch
    assert arch in ("Eagle3LlamaForCausalLM", "LlamaForCausalLMEagle3")  # the registry's two names
    assert config.get("num_hidden_layers", 32) == 1
    top = {"lm_head.weight": None, "draft_id_to_target_id": None}
    model_params = {"fc.weight", "norm.weight", "embed_tokens.weight", *(f"layers.0.{p}" for p in LAYER_PARAMS)}
    loaded, shards = {}, {}
    for name, weight in tensors.items():
        if "t2d" in name:
            continue
        if "d2t" in name:
            name = name.replace("d2t", "draft_id_to_target_id")
        elif "lm_head" not in name:
            name = "model." + name
        if not name.startswith("model."):
            if name not in top:
                raise KeyError(name)
            loaded[name] = weight
            continue
        sub = name[len("model."):].replace("midlayer.", "layers.0.")
        for param, ckpt, shard in STACKED:
            if ckpt not in sub:
                continue
            fused = sub.replace(ckpt, param)
            if fused not in model_params:
                raise KeyError(fused)
            shards.setdefault("model." + fused, {})[shard] = weight
            break
        else:
            if sub not in model_params:
                raise KeyError(sub)
            loaded["model." + sub] = weight
    loaded.update(_fuse(shards))
    mapping = loaded.get("draft_id_to_target_id")
    aux = config.get("eagle_aux_hidden_state_layer_ids") or [2, TARGET_LAYERS // 2, TARGET_LAYERS - 3]
    expected = {"lm_head.weight", "draft_id_to_target_id", "model.fc.weight", "model.norm.weight",
                *(f"model.layers.0.{p}" for p in LAYER_PARAMS)}
    sglang_names = {k.replace("model.layers.0.", "model.midlayer."): v for k, v in loaded.items()}
    return {"config": config, "params": sglang_names, "dropped": [],
            "hot_token_id": None if mapping is None else mapping + torch.arange(mapping.shape[0]),
            "draft_id_to_target_id": mapping, "capture": list(aux),
            "norm_before_residual": config.get("norm_before_residual", False), "rope_config": config,
            "vocab_size": config["vocab_size"], "missing": sorted(expected - set(loaded))}


def speculators_load(folder: Path) -> dict:
    """vLLM's speculators path: detect, validate, convert the config (update_eagle3), then load as vLLM."""
    raw = json.loads((folder / CONFIG).read_text())
    assert "model_type" not in raw and "speculators_config" in raw  # -> model_type "speculators"
    assert raw["speculators_model_type"] == "eagle3"
    spec = raw["speculators_config"]
    tokens = spec["proposal_methods"][0]["speculative_tokens"]
    verifier = spec["verifier"]["name_or_path"]
    assert isinstance(raw["transformer_layer_config"], dict)
    pre = dict(raw["transformer_layer_config"])
    pre["draft_vocab_size"] = raw.get("draft_vocab_size")
    if raw.get("target_hidden_size") is not None:
        pre["target_hidden_size"] = raw["target_hidden_size"]
    pre["norm_before_residual"] = raw.get("norm_before_residual", True)
    pre["architectures"] = ["Eagle3LlamaForCausalLM"]
    if raw.get("eagle_aux_hidden_state_layer_ids"):
        pre["eagle_aux_hidden_state_layer_ids"] = raw["eagle_aux_hidden_state_layer_ids"]
    pre.setdefault("num_lookahead_tokens", tokens)
    loaded = vllm_load(folder, pre)
    loaded.update(verifier=verifier, num_speculative_tokens=tokens, speculators_config=raw)
    return loaded


LOADERS = {"sglang": sglang_load, "vllm": vllm_load, "speculators": speculators_load}


# --------------------------------------------------------------------------------------------
# A forward pass the way the engines run it, from the loaded (fused) parameters


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _attend(q, k, v):
    rep = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)


def engine_logits(loaded: dict, embeds, features, positions) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from eagle3kit.train.draft import apply_rope

    c = loaded["config"]
    rc = loaded["rope_config"]
    p = {k: v.to(torch.float64) for k, v in loaded["params"].items()}
    eps, H, heads, kv, hd = c["rms_norm_eps"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    # The engines of the transformers-4 era read rope_theta / rope_scaling.
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=H, num_attention_heads=heads, head_dim=hd,
                                              max_position_embeddings=rc["max_position_embeddings"],
                                              rope_theta=rc.get("rope_theta", 10000.0),
                                              rope_scaling=rc.get("rope_scaling")))
    m = "model.midlayer."
    h = features @ p["model.fc.weight"].T
    if loaded["norm_before_residual"]:
        h = _rms(h, p[m + "hidden_norm.weight"], eps)
        residual, hn = h, h
    else:
        residual, hn = h, _rms(h, p[m + "hidden_norm.weight"], eps)
    x = torch.cat((_rms(embeds, p[m + "input_layernorm.weight"], eps), hn), dim=-1)
    q, k, v = (x @ p[m + "self_attn.qkv_proj.weight"].T).split([heads * hd, kv * hd, kv * hd], dim=-1)
    b, t, _ = x.shape
    q, k, v = (y.view(b, t, -1, hd).transpose(1, 2) for y in (q, k, v))
    cos, sin = rotary(x, positions)
    o = _attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v).transpose(1, 2).reshape(b, t, heads * hd)
    h = residual + o @ p[m + "self_attn.o_proj.weight"].T
    gate, up = (_rms(h, p[m + "post_attention_layernorm.weight"], eps) @ p[m + "mlp.gate_up_proj.weight"].T).chunk(2, -1)
    h = h + (torch.nn.functional.silu(gate) * up) @ p[m + "mlp.down_proj.weight"].T
    logits = _rms(h, p["model.norm.weight"], eps) @ p["lm_head.weight"].T
    full = torch.full((*logits.shape[:-1], loaded["vocab_size"]), float("-inf"), dtype=logits.dtype)
    full[..., loaded["hot_token_id"]] = logits
    return full


def eagle3kit_logits(draft_dir: Path, embeds, features, positions) -> torch.Tensor:
    draft = load_draft(draft_dir, dtype=torch.float64)
    hidden = draft.fc(features)
    cos, sin = draft.rope(positions, hidden)
    logits = draft.logits(draft.layer(embeds, hidden, cos, sin, _attend))
    full = torch.full((*logits.shape[:-1], draft.config.vocab_size), float("-inf"), dtype=logits.dtype)
    full[..., draft.draft_ids] = logits
    return full


# --------------------------------------------------------------------------------------------
# Exports load in their engine


@pytest.mark.parametrize("fmt", ["sglang", "vllm", "speculators"])
def test_export_loads_like_the_engine(draft_dir, tmp_path, fmt):
    out, warnings, notes = export_draft(draft_dir, fmt, tmp_path / fmt, basepath="tiny/target", num_speculative_tokens=4)
    assert errors(check_draft(out, fmt)) == []
    assert (out / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    loaded = LOADERS[fmt](out)
    assert loaded["dropped"] == [] and loaded["missing"] == []
    original = load_file(str(draft_dir / WEIGHTS))
    fused = {
        "model.midlayer.self_attn.qkv_proj.weight": torch.cat([original[f"midlayer.self_attn.{x}_proj.weight"] for x in "qkv"]),
        "model.midlayer.mlp.gate_up_proj.weight": torch.cat([original[f"midlayer.mlp.{x}_proj.weight"] for x in ("gate", "up")]),
    }
    for name, value in loaded["params"].items():
        if name == "draft_id_to_target_id":
            continue
        ref = fused.get(name)
        if ref is None:
            ref = original[name[len("model."):] if name.startswith("model.") else name]
        assert value.dtype == ref.dtype and torch.equal(value, ref), name  # bit-exact

    draft = load_draft(draft_dir)
    assert torch.equal(loaded["hot_token_id"], draft.draft_ids)
    if fmt != "sglang":
        assert torch.equal(loaded["draft_id_to_target_id"] + torch.arange(DRAFT_VOCAB), loaded["hot_token_id"])
        assert loaded["draft_id_to_target_id"].dtype == torch.int64
    assert loaded["capture"] == AUX  # every engine captures the features the draft was trained on
    assert loaded["norm_before_residual"] is False
    if fmt == "speculators":
        assert loaded["verifier"] == "tiny/target" and loaded["num_speculative_tokens"] == 4
        raw = loaded["speculators_config"]
        assert raw["norm_before_residual"] is False  # explicit: vLLM's default here is true
        assert raw["speculators_config"]["verifier"]["architectures"] == ["LlamaForCausalLM"]
        assert raw["transformer_layer_config"]["vocab_size"] == VOCAB
        assert raw["transformer_layer_config"]["max_position_embeddings"] == 131072

    torch.manual_seed(1)
    embeds, features = torch.randn(2, 7, 32, dtype=torch.float64), torch.randn(2, 7, 96, dtype=torch.float64)
    positions = torch.arange(7).expand(2, 7) + torch.tensor([[0], [20000]])  # past 8192: llama3 scaling matters
    ours = eagle3kit_logits(draft_dir, embeds, features, positions)
    theirs = engine_logits(loaded, embeds, features, positions)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-9)
    # and eagle3kit reads its own export back
    torch.testing.assert_close(eagle3kit_logits(out, embeds, features, positions), ours, rtol=0, atol=0)


def test_export_with_a_target_folder_records_and_compares_it(draft_dir, tmp_path):
    target = write_target(tmp_path / "target", architectures=["MyLlamaForCausalLM"])
    out, warnings, _ = export_draft(draft_dir, "speculators", tmp_path / "spec", basepath=str(target))
    assert warnings == []
    raw = json.loads((out / CONFIG).read_text())
    assert raw["speculators_config"]["verifier"] == {"name_or_path": str(target), "architectures": ["MyLlamaForCausalLM"]}
    # A target with a longer context: the export is refused and nothing is written.
    short = write_target(tmp_path / "long", max_position_embeddings=262144)
    with pytest.raises(UserError, match="max_position_embeddings"):
        export_draft(draft_dir, "sglang", tmp_path / "refused", basepath=str(short))
    assert not (tmp_path / "refused").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_broken_draft_and_foreign_out(draft_dir, tmp_path):
    broken = mutate(draft_dir, tmp_path / "nan", tensors=lambda t: t["fc.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(UserError, match="fc.weight"):
        export_draft(broken, "vllm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by eagle3kit export"):
        export_draft(draft_dir, "vllm", foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    anonymous = save_draft(make_draft(target_model=""), tmp_path / "anonymous")  # no target recorded
    with pytest.raises(UserError) as error:
        export_draft(anonymous, "speculators", tmp_path / "spec")
    assert str(error.value) == ("--to speculators needs --basepath TARGET: the speculators config names the verifier "
                                "(the model `vllm serve OUT` serves), and this draft does not record its target")
    with pytest.raises(UserError, match="draft folder itself"):
        export_draft(draft_dir, "vllm", draft_dir)
    # An export of its own is replaced.
    out, _, _ = export_draft(draft_dir, "vllm", tmp_path / "again")
    (out / "stale.safetensors").write_bytes(b"")
    export_draft(draft_dir, "sglang", tmp_path / "again")
    assert not (out / "stale.safetensors").exists()
    assert json.loads((out / MARKER).read_text())["format"] == "sglang"


def test_export_normalises_a_foreign_layout(draft_dir, tmp_path):
    """model.-prefixed and layers.0.* keys, int32 d2t and no t2d: every export is clean."""
    def tensors(t):
        for k in list(t):
            v = t.pop(k)
            if k == "t2d":
                continue
            if k == "d2t":
                v = v.to(torch.int32)
            t["model." + k.replace("midlayer.", "layers.0.")] = v

    foreign = mutate(draft_dir, tmp_path / "foreign", tensors=tensors)
    assert errors(check_draft(foreign, "vllm"))  # model. prefix
    assert errors(check_draft(foreign, "sglang"))  # layers.0.*
    for fmt in ("sglang", "vllm", "speculators"):
        out, _, notes = export_draft(foreign, fmt, tmp_path / fmt, basepath="tiny/target")
        assert "t2d rebuilt from d2t" in notes
        loaded = LOADERS[fmt](out)
        assert loaded["dropped"] == [] and loaded["missing"] == []
        assert torch.equal(loaded["hot_token_id"], load_draft(draft_dir).draft_ids)
        assert torch.equal(load_file(str(out / WEIGHTS))["t2d"], load_file(str(draft_dir / WEIGHTS))["t2d"])


# --------------------------------------------------------------------------------------------
# --check


def test_check_a_good_draft(draft_dir, tmp_path):
    assert check_draft(draft_dir) == []
    for fmt in ("sglang", "vllm"):
        assert check_draft(draft_dir, fmt) == []
    target = write_target(tmp_path / "target")
    assert check_draft(draft_dir, basepath=str(target)) == []


def test_check_names_each_problem(draft_dir, tmp_path):
    def case(name, config=None, tensors=None):
        return mutate(draft_dir, tmp_path / name, config=config, tensors=tensors)

    p = check_draft(case("missing", tensors=lambda t: t.pop("norm.weight")))
    find(p, "norm.weight", text="missing")

    def stray(t):
        t["layers.0.mlp.down_proj.weight"] = t.pop("midlayer.mlp.down_proj.weight")

    folder = case("layers0", tensors=stray)
    find(check_draft(folder, "sglang"), "layers.0.*", text="(layers.0.mlp.down_proj.weight): SGLang only knows midlayer")
    assert errors(check_draft(folder, "vllm")) == []  # vLLM renames midlayer. itself and knows layers.0.
    find(check_draft(folder), "layers.0.*", "warning", text="SGLang cannot load it")

    p = check_draft(case("unknown", tensors=lambda t: t.__setitem__("verifier_lm_head.weight", t["lm_head.weight"].clone())), "vllm")
    find(p, "verifier_lm_head.weight", text="KeyError")
    p = check_draft(case("embed", tensors=lambda t: t.__setitem__("embed_tokens.weight", torch.zeros(VOCAB, 32))), "sglang")
    assert errors(p) == []
    find(p, "embed_tokens.weight", "warning", text="replaces")

    p = check_draft(case("shape", tensors=lambda t: t.__setitem__("fc.weight", t["fc.weight"][:, :64].contiguous())))
    find(p, "fc.weight", text="expected [32, 96]")
    p = check_draft(case("kshape", tensors=lambda t: t.__setitem__("midlayer.self_attn.k_proj.weight",
                                                                   torch.zeros(32, 64, dtype=torch.bfloat16))))
    find(p, "midlayer.self_attn.k_proj.weight", text="[16, 64]")

    def swap(t):
        ids = torch.arange(DRAFT_VOCAB) + t["d2t"]
        ids[[3, 4]] = ids[[4, 3]]
        t["d2t"] = ids - torch.arange(DRAFT_VOCAB)

    p = check_draft(case("order", tensors=swap))
    find(p, "d2t", text="strictly increasing")
    assert [e.key for e in errors(p)] == ["d2t"]

    def flip(t):
        t2d = t["t2d"].clone()
        on, off = t2d.nonzero()[0], (~t2d).nonzero()[0]
        t2d[on], t2d[off] = False, True
        t["t2d"] = t2d

    p = check_draft(case("t2d", tensors=flip))
    find(p, "t2d", text="disagrees with d2t")
    p = check_draft(case("t2dcount", tensors=lambda t: t["t2d"].__setitem__((~t["t2d"]).nonzero()[0], True)))
    find(p, "t2d", text="marks 41 target ids")
    p = check_draft(case("d2trange", tensors=lambda t: t["d2t"].__setitem__(-1, VOCAB)))
    find(p, "d2t", text="outside the vocabulary")

    p = check_draft(case("nan", tensors=lambda t: t["midlayer.mlp.up_proj.weight"].__setitem__((1, 1), float("inf"))))
    find(p, "midlayer.mlp.up_proj.weight", text="infinite")

    p = check_draft(case("offbyone", config=lambda c: c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", AUX)))
    find(p, "eagle_config.eagle_aux_hidden_state_layer_ids", text="same list is written in both places")
    p = check_draft(case("offbytwo", config=lambda c: c["eagle_config"].__setitem__(
        "eagle_aux_hidden_state_layer_ids", [i - 2 for i in AUX])))
    find(p, "eagle_config.eagle_aux_hidden_state_layer_ids", text="nested + 1 must equal")

    def repeated(c):
        c["eagle_aux_hidden_state_layer_ids"] = [2, 3, 3]
        c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [1, 2, 2]

    p = check_draft(case("repeated", config=repeated))
    find(p, "eagle_aux_hidden_state_layer_ids", text="capture each layer once")
    find(p, "eagle_config.eagle_aux_hidden_state_layer_ids", text="capture each layer once")

    p = check_draft(case("nbr", config=lambda c: c.__setitem__("norm_before_residual", True)), "sglang")
    find(p, "norm_before_residual", text="SGLang does not read it")
    p = check_draft(case("layers", config=lambda c: c.__setitem__("num_hidden_layers", 2)))
    find(p, "num_hidden_layers")
    p = check_draft(case("tie", config=lambda c: c.__setitem__("tie_word_embeddings", True)))
    find(p, "tie_word_embeddings")
    p = check_draft(case("dvs", config=lambda c: c.pop("draft_vocab_size")), "sglang")
    find(p, "draft_vocab_size", text="SGLang reads")
    p = check_draft(case("arch", config=lambda c: c.__setitem__("architectures", ["LlamaForCausalLM"])), "sglang")
    find(p, "architectures", text="LlamaForCausalLMEagle3")
    p = check_draft(case("rope", config=lambda c: c.__setitem__("rope_theta", 10000.0)))
    find(p, "rope_parameters", text="disagrees")

    def prefix(t):
        for k in list(t):
            t["model." + k] = t.pop(k)

    folder = case("prefix", tensors=prefix)
    find(check_draft(folder, "vllm"), "model.*", text="model.fc.weight")
    assert [e.key for e in errors(check_draft(folder, "sglang"))] == ["model.lm_head.weight"]
    p = check_draft(case("bias", tensors=lambda t: t.__setitem__("fc.bias", torch.zeros(32, dtype=torch.bfloat16))), "vllm")
    find(p, "fc.bias", text="no bias")
    p = check_draft(tmp_path / "nowhere")
    assert p[0].is_error and "no such draft folder" in p[0].message


def test_check_against_the_target(draft_dir, tmp_path):
    folder = mutate(draft_dir, tmp_path / "short", config=lambda c: c.__setitem__("max_position_embeddings", 2048))
    target = write_target(tmp_path / "target")
    find(check_draft(folder, basepath=str(target)), "max_position_embeddings", text="acceptance collapses")
    find(check_draft(draft_dir, basepath=str(write_target(tmp_path / "t2", rope_scaling=None, rope_theta=10000.0))),
         "rope_theta/rope_scaling", text="rope_theta 500000 vs the target's 10000")
    p = check_draft(draft_dir, basepath=str(write_target(tmp_path / "t3", vocab_size=128, hidden_size=64,
                                                         num_attention_heads=8)))
    find(p, "vocab_size", text="128")
    find(p, "target_hidden_size", text="64")
    find(p, "embed_tokens.weight", text="missing")
    # ids the target never captures (6 layers: indices 1..5)
    find(check_draft(draft_dir, basepath=str(write_target(tmp_path / "t4", num_hidden_layers=6))),
         "eagle_aux_hidden_state_layer_ids", text="never captured")
    # SGLang ignores the top-level list: without the nested one it captures the defaults, which differ here
    folder = mutate(draft_dir, tmp_path / "nonested", config=lambda c: c.pop("eagle_config"))
    deep = str(write_target(tmp_path / "t5", num_hidden_layers=16))  # defaults [2, 8, 13], not the draft's
    find(check_draft(folder, "sglang", basepath=deep), "eagle_config.eagle_aux_hidden_state_layer_ids",
         text="SGLang reads only this nested list")
    assert errors(check_draft(folder, "vllm", basepath=deep)) == []
    # with the target's defaults (12 layers: [2, 6, 9]) the missing nested list is harmless
    assert errors(check_draft(folder, "sglang", basepath=str(target))) == []


def eagle_reference(tmp_path: Path, bin_file: bool = False) -> Path:
    """A SafeAILab EAGLE traineagle3-style folder (scaled down): plain LlamaForCausalLM config, no rope,
    max_position_embeddings 2048, no eagle_config; midlayer.* keys, d2t, t2d, no embed_tokens."""
    draft = make_draft(seed=3)
    folder = tmp_path / "eagle"
    folder.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 2048,
              "model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1,
              "pad_token_id": 0, "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16",
              "transformers_version": "4.28.1", "use_cache": True, "vocab_size": VOCAB, "draft_vocab_size": DRAFT_VOCAB}
    (folder / CONFIG).write_text(json.dumps(config))
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in draft.state_dict().items()}
    if bin_file:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / WEIGHTS))
    return folder


@pytest.mark.parametrize("bin_file", [False, True])
def test_check_an_eagle_reference_checkpoint(tmp_path, bin_file):
    folder = eagle_reference(tmp_path, bin_file)
    p = check_draft(folder)
    assert errors(p) == []
    find(p, "eagle_aux_hidden_state_layer_ids", "warning", text="defaults")
    find(p, "max_position_embeddings", "warning", text="2048")
    find(p, "rope_theta", "warning", text="500000")
    find(p, "architectures", "warning", text="SGLang cannot load it as is")
    find(check_draft(folder, "sglang"), "architectures")
    assert errors(check_draft(folder, "vllm")) == []  # vLLM renames LlamaForCausalLM to Eagle3LlamaForCausalLM

    out, warnings, _ = export_draft(folder, "sglang", tmp_path / "sglang")
    find(warnings, "max_position_embeddings", "warning", text="2048")
    loaded = sglang_load(out)
    assert loaded["dropped"] == [] and loaded["missing"] == []
    assert loaded["capture"] == [2, TARGET_LAYERS // 2, TARGET_LAYERS - 3]  # no ids: the defaults
    assert "eagle_aux_hidden_state_layer_ids" not in json.loads((out / CONFIG).read_text())
    assert loaded["params"]["model.fc.weight"].dtype == torch.float16
    # With the real target, the 2048 positions are an error.
    find(check_draft(folder, basepath=str(write_target(tmp_path / "target"))), "max_position_embeddings",
         text="acceptance collapses")


def test_check_a_speculators_folder_from_elsewhere(draft_dir, tmp_path):
    out, _, _ = export_draft(draft_dir, "speculators", tmp_path / "spec", basepath="tiny/target")
    assert errors(check_draft(out)) == []
    assert errors(check_draft(out, "vllm")) == []
    find(check_draft(out, "sglang"), "speculators_config", text="SGLang cannot read it")
    folder = mutate(out, tmp_path / "elsewhere", config=lambda c: (c.pop("norm_before_residual"), c.__setitem__("model_type", "llama")))
    p = check_draft(folder)
    find(p, "norm_before_residual", text="assumes true")
    find(p, "model_type", text="top level")
    # the speculators loader's own default, so an export of it to SGLang is refused
    plain = mutate(out, tmp_path / "nonbr", config=lambda c: c.pop("norm_before_residual"))
    with pytest.raises(UserError, match="norm_before_residual"):
        export_draft(plain, "sglang", tmp_path / "sg")
    # and a speculators draft goes back to the SGLang layout
    back, _, _ = export_draft(out, "sglang", tmp_path / "back")
    assert torch.equal(sglang_load(back)["hot_token_id"], load_draft(draft_dir).draft_ids)


# --------------------------------------------------------------------------------------------
# The command line


def invoke(*args):
    return CliRunner().invoke(cli, list(args), env=WIDE, catch_exceptions=False)


def test_cli_check_and_export(draft_dir, tmp_path):
    result = invoke("export", "--check", str(draft_dir))
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "draft vocab 40" in result.stdout and "loads in: SGLang, vLLM" in result.stdout

    broken = mutate(draft_dir, tmp_path / "broken", tensors=lambda t: t.pop("lm_head.weight"))
    result = invoke("export", "--check", str(broken))
    assert result.exit_code == 2
    assert "lm_head.weight" in result.stdout and "missing" in result.stdout
    assert "Error:" in result.stderr and "1 error(s)" in result.stderr

    out = tmp_path / "vllm-out"
    result = invoke("export", str(draft_dir), "--to", "vllm", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / WEIGHTS).is_file() and "--speculative-config" in result.stdout and '"eagle3"' in result.stdout
    assert set(load_file(str(out / WEIGHTS))) == set(REQUIRED_KEYS)

    result = invoke("export", str(save_draft(make_draft(target_model=""), tmp_path / "anonymous")), "--to",
                    "speculators", "--out", str(tmp_path / "spec"))
    assert result.exit_code == 2 and "--basepath" in result.stderr
    result = invoke("export", str(broken), "--to", "sglang", "--out", str(tmp_path / "sg"))
    assert result.exit_code == 2 and "lm_head.weight" in result.stderr
    assert not (tmp_path / "sg").exists()


def test_check_command_returns_warnings(tmp_path, capsys):
    folder = eagle_reference(tmp_path)
    problems = check_command(folder)
    assert problems and not errors(problems)
    assert "OK" in capsys.readouterr().out
    with pytest.raises(UserError, match="error"):
        check_command(folder, fmt="sglang")


def test_export_writes_a_model_card_and_pushes_it_to_the_hub(draft_dir, tmp_path, monkeypatch):
    import huggingface_hub

    report = {"tau": 4.178, "tau_ci95": [3.811, 4.65], "speedup": 1.318, "identical_to_greedy": 20, "prompts": 20,
              "acceptance_rate": [0.911, 0.976], "device": "cpu", "dtype": "float32",
              "by_source": {"sharegpt": {"prompts": 9, "tau": 3.5, "tau_ci95": [3.0, 4.0]},
                            "ultrachat": {"prompts": 11, "tau": 4.731, "tau_ci95": [4.2, 5.1]}},
              "config": {"steps": 5, "temperature": 0.0, "data_path": "data/test.jsonl"}}
    (tmp_path / "eval.json").write_text(json.dumps(report))
    calls = []

    class FakeApi:  # what eagle3kit asks of the Hub, recorded instead of sent
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "sg"
    result = invoke("export", str(draft_dir), "--to", "sglang", "--out", str(out), "--eval-report",
                    str(tmp_path / "eval.json"), "--push-to-hub", "me/my-draft", "--private")
    assert result.exit_code == 0, result.output
    assert calls == [("create", "me/my-draft", {"private": True, "exist_ok": True, "repo_type": "model"}),
                     ("upload", "me/my-draft", ["README.md", "config.json", MARKER, WEIGHTS])]
    assert "Pushed" in result.stdout and "--speculative-draft-model-path me/my-draft" in result.stdout
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny/target\ntags:\n- eagle3\n")
    assert "--model-path tiny/target --speculative-algorithm EAGLE3 --speculative-draft-model-path me/my-draft" in card
    assert "| 32 | 4 (2) | 64 | 100 (40) | [2, 6, 9] | 131072 | rope_theta 500000.0, llama3 scaling |" in card
    assert "| 4.18 (3.81-4.65) | 1.32x | 20/20 |" in card and "0.91, 0.98" in card
    assert "By source of the prompts: sharegpt 3.50 (9 prompts), ultrachat 4.73 (11 prompts)." in card
    assert not errors(check_draft(out, "sglang"))  # the card is not a weight or config the engines read

    class Down(FakeApi):
        def upload_folder(self, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", Down)
    result = invoke("export", str(draft_dir), "--to", "vllm", "--out", str(tmp_path / "v"), "--push-to-hub", "me/x")
    assert result.exit_code == 2 and "no route to host" in result.stderr and "the export is in" in result.stderr
    assert (tmp_path / "v" / WEIGHTS).is_file() and "base_model: tiny/target" in (tmp_path / "v" / "README.md").read_text()
    (tmp_path / "bad.json").write_text("[]")
    result = invoke("export", str(draft_dir), "--to", "vllm", "--out", str(tmp_path / "w"), "--eval-report",
                    str(tmp_path / "bad.json"))
    assert result.exit_code == 2 and "not an `eagle3kit eval --json` report" in result.stderr


def test_the_model_card_says_how_acceptance_was_measured():
    from eagle3kit.export.card import _drafting

    chain = {"config": {"steps": 5, "topk": 1}, "tree_size": None, "acceptance_rule": "greedy"}
    assert _drafting(chain) == "chains of 5 draft tokens"
    sampled = {"config": {"steps": 5, "topk": 1}, "tree_size": 6, "acceptance_rule": "target-only"}
    assert _drafting(sampled) == "chains of 5 draft tokens, target-only acceptance"
    tree = {"config": {"steps": 5, "topk": 4}, "tree_size": 16, "acceptance_rule": "target-only"}
    assert _drafting(tree) == "trees of 16 tokens, top-4, 5 levels, target-only acceptance"
    assert _drafting({"engine": "sglang"}) == "as a sglang server drafts"


def test_serve_commands_quote_paths_for_the_shell():
    import shlex

    from eagle3kit.export.card import serve_hint

    where, base = "exports/my draft's v1", "/models/llama 8b"
    sglang = shlex.split(serve_hint("sglang", where, base, 5))
    assert sglang[sglang.index("--speculative-draft-model-path") + 1] == where
    assert sglang[sglang.index("--model-path") + 1] == base
    vllm = shlex.split(serve_hint("vllm", where, base, 5))
    assert vllm[:3] == ["vllm", "serve", base]
    assert json.loads(vllm[vllm.index("--speculative-config") + 1])["model"] == where
    assert shlex.split(serve_hint("speculators", where, base, 5)) == ["vllm", "serve", where]


def test_a_tree_the_eval_report_measured_is_what_sglang_serves(draft_dir, tmp_path):
    from eagle3kit.export.card import serve_hint, serving_tree

    report = {"tau": 4.12, "tau_ci95": [3.9, 4.3], "acceptance_rate": [0.9, 0.8], "tree_size": 16,
              "config": {"steps": 5, "topk": 4, "temperature": 0.0}}
    tree_note = ("the eval report measured trees (top-4, 16 tokens per pass), which the model card quotes; vLLM drafts "
                 "chains, which accept less: measure a chain (eval --topk 1) for its card")
    _, _, notes = export_draft(draft_dir, "vllm", tmp_path / "v", eval_report=report)
    assert tree_note in notes
    _, _, notes = export_draft(draft_dir, "sglang", tmp_path / "s", eval_report=report)
    assert not [n for n in notes if "measured trees" in n]  # SGLang serves the same tree

    tree = {"config": {"steps": 5, "topk": 4}, "tree_size": 16}
    assert serving_tree(tree, 5) == (4, 16)
    assert serving_tree(tree, 6) is None  # other steps than measured: a chain
    assert serving_tree({"config": {"steps": 5, "topk": 1}}, 5) is None
    assert serving_tree({**tree, "engine": "sglang"}, 5) is None  # a --server report: the server's own settings
    assert serving_tree(None, 5) is None
    words = serve_hint("sglang", "d", "t", 5, (4, 16)).split()
    assert words[words.index("--speculative-num-steps") + 1] == "5"
    assert words[words.index("--speculative-eagle-topk") + 1] == "4"
    assert words[words.index("--speculative-num-draft-tokens") + 1] == "16"
    words = serve_hint("sglang", "d", "t", 5).split()
    assert (words[words.index("--speculative-eagle-topk") + 1], words[words.index("--speculative-num-draft-tokens") + 1]) \
        == ("1", "6")


def test_weights_are_readable_by_the_server_s_user(draft_dir, tmp_path):
    """safetensors writes its files 0600; a server running as another user must read them."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        folder, _, _ = export_draft(draft_dir, "vllm", tmp_path / "out")
        draft = save_draft(load_draft(draft_dir), tmp_path / "saved")
    finally:
        os.umask(old)
    for path in (folder / "model.safetensors", draft / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# --------------------------------------------------------------------------------------------
# Where the target is, how many tokens to draft, and the Hub


def test_a_local_target_is_written_as_an_absolute_path_and_the_card_names_only_hub_ids(draft_dir, tmp_path,
                                                                                       monkeypatch):
    """`vllm serve` and the card's commands run from other folders; the Hub takes only model ids as base_model."""
    monkeypatch.chdir(tmp_path)
    folder = write_target(tmp_path / "models" / "target")
    here = str(folder.resolve())
    out, warnings, _ = export_draft(draft_dir, "speculators", "spec", basepath="models/target")
    assert warnings == []
    assert json.loads((out / CONFIG).read_text())["speculators_config"]["verifier"]["name_or_path"] == here
    assert json.loads((out / MARKER).read_text())["basepath"] == here
    card = (out / "README.md").read_text()
    assert card.startswith("---\ntags:\n- eagle3\n")  # no base_model: a local folder is no Hub id
    assert f"\n# EAGLE-3 draft for {here}\n" in card
    assert (f"A one-layer EAGLE-3 draft model for speculative decoding with the target model in `{here}`, in the "
            "vLLM (speculators) layout;") in card
    assert f"```bash\nvllm serve {(tmp_path / 'spec').resolve()}\n```" in card

    # a local copy of a Hub model (its config.json records where it came from): that id is the base_model
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**config, "_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}))
    result = invoke("export", str(draft_dir), "--to", "sglang", "--out", "sg", "--basepath", "models/target")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "sg" / "README.md").read_text()
    assert card.startswith("---\nbase_model: meta-llama/Llama-3.1-8B-Instruct\ntags:\n")
    assert "\n# EAGLE-3 draft for meta-llama/Llama-3.1-8B-Instruct\n" in card
    assert f"with `meta-llama/Llama-3.1-8B-Instruct` (the local copy in `{here}`), in the SGLang layout;" in card
    serve = (f"python -m sglang.launch_server --model-path {here} --speculative-algorithm EAGLE3 "
             f"--speculative-draft-model-path {(tmp_path / 'sg').resolve()} --speculative-num-steps 5")
    assert serve in card and serve in result.stdout
    # a path that is not here is no Hub id either: a mistyped folder, refused before it is written in
    for given, why in (("./elsewhere/target", "no such folder"), (str(tmp_path / "sg" / CONFIG), "a file, not a folder")):
        with pytest.raises(UserError) as error:
            export_draft(draft_dir, "vllm", tmp_path / "v", basepath=given)
        assert str(error.value) == (f"--basepath {given}: {why}; give the target model's folder or its Hugging Face "
                                    "name")
        assert not (tmp_path / "v").exists()
    # a folder the draft records, on the machine it was trained on: named, as an uncached Hub id is
    gone = save_draft(make_draft(target_model="/elsewhere/target"), tmp_path / "gone")
    out, warnings, notes = export_draft(gone, "vllm", tmp_path / "v")
    assert notes[0].startswith("--basepath not given: using the target the draft records, /elsewhere/target (not a "
                               "folder here nor in the Hugging Face cache")


def test_export_takes_the_recorded_target_and_trusts_positions_the_trainer_took_from_it(tmp_path, capsys):
    short = save_draft(make_draft(max_position_embeddings=4096), tmp_path / "short")  # trained for tiny/target
    assert check_draft(short) == []  # the trainer copied the target's 4096: nothing to warn about
    out, warnings, notes = export_draft(short, "sglang", tmp_path / "sg")
    assert warnings == []
    assert notes == ["--basepath not given: using the target the draft records, tiny/target (not a folder here nor "
                     "in the Hugging Face cache, so not compared with the draft; if it is a local folder, give "
                     "--basepath with its path)"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny/target\n") and "--model-path tiny/target " in card
    out, warnings, _ = export_draft(short, "speculators", tmp_path / "spec")  # no --basepath needed
    assert warnings == []
    assert json.loads((out / CONFIG).read_text())["speculators_config"]["verifier"]["name_or_path"] == "tiny/target"
    result = invoke("export", str(short), "--to", "vllm", "--out", str(tmp_path / "cli"))
    assert result.exit_code == 0, result.output
    assert "max_position_embeddings" not in result.stdout and "--basepath not given" in result.stdout

    # a target recorded as a local folder is compared with the draft
    target = write_target(tmp_path / "target", max_position_embeddings=4096)
    local = save_draft(make_draft(max_position_embeddings=4096, target_model=str(target)), tmp_path / "local")
    out, warnings, notes = export_draft(local, "speculators", tmp_path / "spec2")
    assert warnings == []
    assert notes == [f"--basepath not given: using the target the draft records, {target.resolve()}"]
    write_target(target, max_position_embeddings=131072)
    with pytest.raises(UserError, match="max_position_embeddings"):
        export_draft(local, "sglang", tmp_path / "refused")
    capsys.readouterr()
    with pytest.raises(UserError, match="1 error"):  # --check compares with it too
        check_command(local, fmt="sglang")
    printed = " ".join(capsys.readouterr().out.split())
    assert f"compared with the target the draft records, {target.resolve()} (--basepath to name another)" in printed
    assert "max_position_embeddings" in printed
    assert check_command(short) == [] and "compared with" not in capsys.readouterr().out  # tiny/target is not here

    # a draft of unknown provenance, or an eagle3kit draft whose value was edited, is warned about
    message = ("4096: if the target serves longer contexts (Llama-3.1: 131072), the draft's positions run out past "
               "4096 tokens and acceptance collapses. Compare with the target: add --basepath TARGET (its folder, or "
               "a Hub id in the local cache); if it serves more, write its max_position_embeddings (and rope "
               "settings) into the draft's config.json")
    foreign = mutate(short, tmp_path / "foreign", config=lambda c: c.pop("eagle3kit"))
    assert check_draft(foreign) == [Problem("warning", "max_position_embeddings", message)]
    edited = mutate(short, tmp_path / "edited", config=lambda c: c.__setitem__("max_position_embeddings", 2048))
    assert check_draft(edited) == [Problem("warning", "max_position_embeddings", message.replace("4096", "2048"))]


def test_the_serve_command_drafts_as_many_tokens_as_the_quoted_eval_measured(draft_dir, tmp_path):
    report = {"tau": 3.2, "tau_ci95": [3.0, 3.4], "prompts": 20, "acceptance_rate": [0.9] * 6,
              "config": {"steps": 6, "topk": 1, "temperature": 0.0, "data_path": "test.jsonl"}}  # eval's default
    (tmp_path / "eval.json").write_text(json.dumps(report))
    result = invoke("export", str(draft_dir), "--to", "sglang", "--out", str(tmp_path / "sg"), "--eval-report",
                    str(tmp_path / "eval.json"))
    assert result.exit_code == 0, result.output
    card = (tmp_path / "sg" / "README.md").read_text()
    six = "--speculative-num-steps 6 --speculative-eagle-topk 1 --speculative-num-draft-tokens 7"
    assert six in card and six in result.stdout
    assert "chains of 6 draft tokens" in card and "These figures are for" not in card
    result = invoke("export", str(draft_dir), "--to", "speculators", "--out", str(tmp_path / "spec"), "--eval-report",
                    str(tmp_path / "eval.json"))
    assert result.exit_code == 0, result.output
    raw = json.loads((tmp_path / "spec" / CONFIG).read_text())
    assert raw["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 6
    # given on the command line, the option wins, and the card says what its figures are for
    result = invoke("export", str(draft_dir), "--to", "sglang", "--out", str(tmp_path / "sg5"), "--eval-report",
                    str(tmp_path / "eval.json"), "--num-speculative-tokens", "5")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "sg5" / "README.md").read_text()
    assert "--speculative-num-steps 5 --speculative-eagle-topk 1 --speculative-num-draft-tokens 6" in card
    assert "These figures are for 6 draft tokens per pass; the serve command above drafts 5." in card
    assert ("--num-speculative-tokens 5, but the eval report measured 6 draft tokens per pass: the acceptance the "
            "model card quotes is for those") in result.stdout
    # without a report, or with a --server one (the server's own settings), 5
    result = invoke("export", str(draft_dir), "--to", "sglang", "--out", str(tmp_path / "plain"))
    assert "--speculative-num-steps 5 --speculative-eagle-topk 1" in result.stdout
    from eagle3kit.export.card import draft_steps

    assert draft_steps(None, {"engine": "sglang", "config": {"steps": 6}}) == 5
    assert draft_steps(None, report) == 6 and draft_steps(4, report) == 4


def _hub_http_error(cls, status: int):
    """A huggingface_hub HTTP error with this status, as the Hub's client raises it."""
    import importlib

    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # the HTTP client huggingface_hub uses
    request = http.Request("POST", "https://huggingface.co/api/repos/create")
    return cls(f"{status} Client Error for url: {request.url}", response=http.Response(status, request=request))


def test_hub_failures_are_told_apart():
    import errno
    import socket

    from huggingface_hub import errors

    from eagle3kit.hub import hub_failure

    def wrapped(cause):
        try:
            raise cause
        except Exception:  # noqa: BLE001
            try:
                raise RuntimeError("upload failed")
            except RuntimeError as error:
                return error

    network = [socket.gaierror(-2, "Name or service not known"), OSError(errno.ENETUNREACH, "Network is unreachable"),
               ConnectionError("no route to host"), TimeoutError("timed out"), errors.OfflineModeIsEnabled("offline"),
               errors.LocalEntryNotFoundError("not in the cache"), wrapped(socket.gaierror(-3, "Try again"))]
    assert [hub_failure(e) for e in network] == ["network"] * len(network)
    auth = [_hub_http_error(errors.HfHubHTTPError, 401), _hub_http_error(errors.HfHubHTTPError, 403),
            _hub_http_error(errors.GatedRepoError, 403), errors.LocalTokenNotFoundError("no token"),
            wrapped(_hub_http_error(errors.HfHubHTTPError, 401))]
    assert [hub_failure(e) for e in auth] == ["auth"] * len(auth)
    assert hub_failure(_hub_http_error(errors.RepositoryNotFoundError, 404)) == "missing"
    assert hub_failure(_hub_http_error(errors.HfHubHTTPError, 500)) is None
    assert hub_failure(PermissionError(errno.EACCES, "Permission denied")) is None  # the disk, not the network
    assert hub_failure(RuntimeError("boom")) is None


def test_hub_errors_name_the_cause_and_the_installed_cli(tmp_path, monkeypatch):
    import socket

    import huggingface_hub
    from huggingface_hub import errors

    from eagle3kit.checkpoint import resolve_draft
    from eagle3kit.export import push_folder

    class Api:
        failure: Exception

        def create_repo(self, repo_id, **kwargs):
            raise Api.failure

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    cases = [
        (socket.gaierror(-2, "Name or service not known"), "The Hugging Face Hub could not be reached: check the "
         "connection (and that HF_HUB_OFFLINE is not set) and run the export again"),
        (_hub_http_error(errors.HfHubHTTPError, 401), "Log in with an account that may write to me/x (`hf auth "
         "login`, or HF_TOKEN set to a token with write access) and run the export again"),
        (RuntimeError("boom"), "Run the export again"),
    ]
    for failure, fix in cases:
        Api.failure = failure
        with pytest.raises(UserError) as error:
            push_folder(tmp_path, "me/x", False, "export")
        assert str(error.value) == (f"--push-to-hub me/x: the upload failed ({str(failure).splitlines()[0]}); the "
                                    f"export is in {tmp_path}. {fix}, or upload the folder yourself "
                                    f"(`hf upload me/x {tmp_path}`)")

    def download(failure):
        def fail(*args, **kwargs):
            raise failure
        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        with pytest.raises(UserError) as error:
            resolve_draft("someone/draft")
        return str(error.value)

    assert download(errors.LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")) == (
        "someone/draft: not a local folder, and the Hugging Face Hub could not be reached (Got: ConnectError: "
        "[Errno -2] Name or service not known); check the connection (and that HF_HUB_OFFLINE is not set), or "
        "download it where the Hub can be reached (`hf download someone/draft --local-dir DIR`) and pass the folder")
    from eagle3kit import hub

    asked = []

    def from_the_cache_only(repo_id, **kwargs):  # as huggingface_hub answers local_files_only with nothing cached
        asked.append(kwargs.get("local_files_only"))
        raise errors.LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")

    monkeypatch.setattr(hub, "hub_unreachable", lambda: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", from_the_cache_only)
    with pytest.raises(UserError) as error:
        resolve_draft("someone/draft")
    assert asked == [True]  # not a minute of retries: the cache only
    assert str(error.value) == (
        "someone/draft: not a local folder, and it is not in the local cache, and the Hugging Face Hub cannot be "
        "reached (huggingface.co:443: Name or service not known); download it where the Hub can be reached (`hf "
        "download someone/draft --local-dir DIR`) and pass the folder")
    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    gated = _hub_http_error(errors.GatedRepoError, 403)
    assert download(gated) == (f"someone/draft: not a local folder, and the Hugging Face Hub refused access to it "
                               f"({gated}); log in with an account that may read it (`hf auth login` or HF_TOKEN; "
                               "a gated model's page asks you to accept its terms first)")
    missing = _hub_http_error(errors.RepositoryNotFoundError, 404)
    assert download(missing) == (f"someone/draft: not a local folder, and the Hugging Face Hub has no such repository "
                                 f"({missing}); check the name (a private one needs `hf auth login` or HF_TOKEN)")
    assert download(RuntimeError("boom")) == ("someone/draft: not a local folder, and fetching it from the Hugging "
                                              "Face Hub failed (boom); download it (`hf download someone/draft "
                                              "--local-dir DIR`) and pass the folder")


def test_a_pushed_speculators_export_names_its_verifier_by_hub_id(draft_dir, tmp_path):
    target = write_target(tmp_path / "target")
    config = json.loads((target / "config.json").read_text())
    config["_name_or_path"] = "org/target-instruct"  # the Hub id from_pretrained loaded it from
    (target / "config.json").write_text(json.dumps(config))

    def verifier(out, served_as):
        _, _, notes = export_draft(draft_dir, "speculators", tmp_path / out, basepath=str(target), served_as=served_as)
        spec = json.loads((tmp_path / out / CONFIG).read_text())["speculators_config"]
        return spec["verifier"]["name_or_path"], [n for n in notes if n.startswith("--push-to-hub")]

    assert verifier("here", None) == (str(target), [])  # served from this machine: the folder itself
    assert verifier("pushed", "me/draft") == ("org/target-instruct", [
        f"--push-to-hub: the verifier is recorded as org/target-instruct, the Hub id {target}/config.json records, "
        "so that `vllm serve` of the pushed repository finds it"])
    del config["_name_or_path"]
    (target / "config.json").write_text(json.dumps(config))
    assert verifier("pushed-local", "me/draft") == (str(target), [
        f"--push-to-hub: the verifier is recorded as the local folder {target}, which `vllm serve` of the pushed "
        "repository finds only on this machine; give --basepath the target's Hub id to record that instead"])


def test_a_whole_model_given_as_the_draft_is_one_line(tiny_target, tmp_path):
    expected = (f"{tiny_target}: a whole model (LlamaForCausalLM, 6 decoder layers), not an EAGLE-3 draft; give a "
                "draft folder, e.g. checkpoints/best/draft")
    for args in (["--check", str(tiny_target)], [str(tiny_target), "--to", "sglang", "--out", str(tmp_path / "x")]):
        result = invoke("export", *args)  # it was a table of every key the target has and a draft has not
        assert result.exit_code == 2 and result.stderr.strip() == f"Error: {expected}"
    assert not (tmp_path / "x").exists()


def test_feature_layers_out_of_order_are_warned(tmp_path):
    draft = make_draft()
    folder = mutate(save_draft(draft, tmp_path / "d"), tmp_path / "unsorted",
                    config=lambda c: (c.__setitem__("eagle_aux_hidden_state_layer_ids", [6, 2, 9]),
                                      c["eagle_config"].__setitem__("eagle_aux_hidden_state_layer_ids", [5, 1, 8])))
    problem = find(check_draft(folder, "vllm"), "eagle_aux_hidden_state_layer_ids", "warning", text="increasing order")
    assert problem.message == ("hidden-state indices [6, 2, 9] are not in increasing order: SGLang and vLLM join the "
                               "captured features in layer order ([2, 6, 9]), so a draft trained on them in the listed "
                               "order gets them permuted")
