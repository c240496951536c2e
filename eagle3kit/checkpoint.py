"""The servable draft on disk: its layout, atomic save, and load.

A draft folder holds ``config.json`` and ``model.safetensors``, in the layout SGLang's
``LlamaForCausalLMEagle3`` loads (and vLLM's ``eagle3`` method too):

* keys ``fc.weight``, ``midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight``,
  ``midlayer.self_attn.{q,k,v,o}_proj.weight``, ``midlayer.mlp.{gate,up,down}_proj.weight``,
  ``norm.weight``, ``lm_head.weight``, ``d2t`` (int64 offsets: target id = i + d2t[i]) and
  ``t2d`` (bool over the target vocabulary); no ``embed_tokens``, no target weight;
* a flat Llama-style config with ``architectures: ["LlamaForCausalLMEagle3"]``,
  ``num_hidden_layers: 1``, ``draft_vocab_size``, the target's sizes and rope settings, and
  the three feature layers in both engines' conventions: vLLM's top-level
  ``eagle_aux_hidden_state_layer_ids`` is the HF ``hidden_states`` index (the input of that
  decoder layer); SGLang's ``eagle_config.eagle_aux_hidden_state_layer_ids`` is one less
  (SGLang adds one).

The exporters and the checker (``eagle3kit export``) live in :mod:`eagle3kit.export`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from eagle3kit import __version__
from eagle3kit.errors import UserError, first_line
from eagle3kit import hub
from eagle3kit.hub import hub_failure, is_hub_id

CONFIG = "config.json"
WEIGHTS = "model.safetensors"

LAYER_KEYS = (
    "midlayer.input_layernorm.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
)
REQUIRED_KEYS = ("fc.weight",) + LAYER_KEYS + ("norm.weight", "lm_head.weight", "d2t", "t2d")


def legacy_rope(rope: dict[str, Any]) -> dict[str, Any]:
    """``rope_theta`` and ``rope_scaling`` as transformers 4.x (and SGLang) read them."""
    out: dict[str, Any] = {}
    params = rope.get("rope_parameters")
    if isinstance(params, dict):
        params = dict(params)
        out["rope_theta"] = params.pop("rope_theta", rope.get("rope_theta", 10000.0))
        kind = params.get("rope_type", params.get("type", "default"))
        out["rope_scaling"] = None if kind == "default" else params
    else:
        out["rope_theta"] = rope.get("rope_theta", 10000.0)
        out["rope_scaling"] = rope.get("rope_scaling")
    if rope.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = rope["partial_rotary_factor"]
    return out


def servable_config(config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a servable draft for a :class:`~eagle3kit.train.draft.DraftConfig`."""
    data = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
        "draft_vocab_size": config.draft_vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        **legacy_rope(config.rope),
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "norm_before_residual": False,
        "target_hidden_size": config.target_hidden_size,
        "torch_dtype": config.torch_dtype,
        "eagle_aux_hidden_state_layer_ids": list(config.aux_layers),
        "eagle_config": {
            "use_aux_hidden_state": True,
            "eagle_aux_hidden_state_layer_ids": [i - 1 for i in config.aux_layers],
        },
        "eagle3kit": {
            "version": __version__,
            "draft_config": config.to_dict(),
            **(extra or {}),
        },
    }
    if config.rope.get("rope_parameters") is not None:
        data["rope_parameters"] = config.rope["rope_parameters"]
    return data


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an older ``final`` (the old one is removed last)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_draft(draft, out_dir: str | Path, extra: dict[str, Any] | None = None, dtype=None) -> Path:
    """Write a servable draft folder atomically (temporary folder, then rename)."""
    import torch
    from safetensors.torch import save_file

    from eagle3kit.atomic import readable_by_all

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        dtype = dtype or getattr(torch, draft.config.torch_dtype)
        tensors = {}
        for key, value in draft.trainable_state_dict().items():
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.to(dtype)
            tensors[key] = value.contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        readable_by_all(tmp / WEIGHTS)  # safetensors writes 0600
        (tmp / CONFIG).write_text(json.dumps(servable_config(draft.config, extra), indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_draft(name: str | Path) -> Path:
    """The folder of a draft given as a local folder or a Hugging Face Hub id (downloaded
    once into the Hub cache: its config and weights only)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file():
            if (path / "draft" / CONFIG).is_file():
                return path / "draft"  # a checkpoint (step_N, latest, best) holds its servable draft in draft/
            runs = [str(path / n) for n in ("best", "latest") if (path / n / "draft" / CONFIG).is_file()]
            if runs:
                raise UserError(f"{name} is a training run's folder; give one of its checkpoints: {' or '.join(runs)}")
        return path
    for run in (path.parent, path.parent.parent):  # RUN/best or RUN/best/draft of a run that has no best
        if path.relative_to(run).parts[:1] == ("best",) and (run / "latest" / "draft" / CONFIG).is_file():
            raise UserError(f"{name}: {run} has no best checkpoint (a run keeps one only when it evaluates on "
                            f"--testpath); give its latest: {run / 'latest' / 'draft'}")
    text = str(name)
    if not is_hub_id(text):
        raise UserError(f"{name}: no such draft folder; give a folder with config.json and the weights "
                        "(for example checkpoints/best/draft) or a Hugging Face Hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.pt"],
                                      **hub.hub_kwargs(text)))  # the cache only, at once, when the Hub is unreachable
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, no access: all the user's to fix
        first, cause = first_line(error), hub_failure(error)
        download = f"(`hf download {text} --local-dir DIR`) and pass the folder"
        down = hub.hub_unreachable()
        if cause == "network" and down:
            why = (f"it is not in the local cache, and the Hugging Face Hub cannot be reached ({down}); download it "
                   f"where the Hub can be reached {download}")
        elif cause == "network":
            why = (f"the Hugging Face Hub could not be reached ({first}); check the connection (and that "
                   f"HF_HUB_OFFLINE is not set), or download it where the Hub can be reached {download}")
        elif cause == "auth":
            why = (f"the Hugging Face Hub refused access to it ({first}); log in with an account that may read it "
                   "(`hf auth login` or HF_TOKEN; a gated model's page asks you to accept its terms first)")
        elif cause == "missing":
            why = (f"the Hugging Face Hub has no such repository ({first}); check the name (a private one needs "
                   "`hf auth login` or HF_TOKEN)")
        else:
            why = f"fetching it from the Hugging Face Hub failed ({first}); download it {download}"
        raise UserError(f"{name}: not a local folder, and {why}") from None


def load_draft(path: str | Path, device=None, dtype=None):
    """Rebuild an :class:`~eagle3kit.train.draft.Eagle3Draft` from a draft folder or Hub id:
    one eagle3kit saved, or one trained elsewhere in the SGLang/EAGLE layout (safetensors or
    ``pytorch_model.bin``) or the speculators layout (``layers.0.*``). An embedding in the
    folder is ignored (the target's is used); a missing ``t2d`` is rebuilt from ``d2t``."""
    import torch

    from eagle3kit.export.folder import read_folder
    from eagle3kit.export.write import _normalised_tensors
    from eagle3kit.train.draft import DraftConfig, Eagle3Draft

    folder = read_folder(path)
    config = folder.config
    saved = config.get("eagle3kit", {}).get("draft_config") if isinstance(config.get("eagle3kit"), dict) else None
    try:
        draft = Eagle3Draft(DraftConfig.from_dict(saved or draft_config_from_servable(config)))
    except (KeyError, TypeError) as error:
        raise UserError(f"{folder.path / CONFIG}: not an EAGLE-3 draft config (missing {error})") from None
    c = draft.config
    tensors, _ = _normalised_tensors(folder, c.vocab_size)  # trainer's names, d2t int64, t2d rebuilt from d2t
    state = {k: v for k, v in tensors.items() if not k.startswith("embed_tokens.")}
    if "d2t" not in state and c.draft_vocab_size == c.vocab_size:  # a full-vocabulary draft: the identity
        state["d2t"] = torch.zeros(c.draft_vocab_size, dtype=torch.long)
        state.setdefault("t2d", torch.ones(c.vocab_size, dtype=torch.bool))
    expected = dict(draft.state_dict())
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [f"{k} {list(state[k].shape)} (config: {list(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:  # a whole model was refused by read_folder
        raise UserError(f"{folder.path}: the weights do not match the config (missing: {_few(missing)}, unexpected: "
                        f"{_few(unexpected)}, other shapes: {_few(wrong)}); `eagle3kit export --check {path}` names "
                        "each problem")
    draft.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    draft.trained_with = dict(config["eagle3kit"]) if isinstance(config.get("eagle3kit"), dict) else {}
    return draft.to(device=device or "cpu", dtype=dtype or torch.float32)


def _few(names: list[str], most: int = 6) -> str:
    """A list for a message: its first ``most`` names, and how many more."""
    return str(names[:most])[:-1] + (f", ... {len(names) - most} more]" if len(names) > most else "]")


def draft_config_from_servable(config: dict[str, Any]) -> dict[str, Any]:
    """A DraftConfig dict from a flat servable config (a draft trained elsewhere)."""
    if "transformer_layer_config" in config:  # speculators format
        layer = dict(config["transformer_layer_config"])
        layer.update({k: config[k] for k in ("draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids") if config.get(k) is not None})
        config = layer
    heads = config["num_attention_heads"]
    aux = config.get("eagle_aux_hidden_state_layer_ids")
    if not aux and isinstance(config.get("eagle_config"), dict) and config["eagle_config"].get("eagle_aux_hidden_state_layer_ids"):
        aux = [i + 1 for i in config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]]
    rope = {k: config[k] for k in ("rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor")
            if config.get(k) is not None}
    return {
        "hidden_size": config["hidden_size"],
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads", heads),
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "intermediate_size": config["intermediate_size"],
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "vocab_size": config["vocab_size"],
        "draft_vocab_size": config.get("draft_vocab_size") or config["vocab_size"],
        "max_position_embeddings": config.get("max_position_embeddings", 2048),
        "aux_layers": list(aux) if aux else [],
        "target_hidden_size": config.get("target_hidden_size") or config["hidden_size"],
        "target_num_layers": 0,
        "rope": rope,
        "hidden_act": config.get("hidden_act", "silu"),
    }
