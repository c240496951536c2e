"""Reading a draft folder (its config as written and as an engine sees it, its tensors) and the
target's config; the format constants and the small config helpers the checks and exporters share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eagle3kit.checkpoint import CONFIG, legacy_rope, resolve_draft
from eagle3kit.errors import UserError
from eagle3kit.hub import is_hub_id

FORMATS = ("sglang", "vllm", "speculators")
ENGINE = {"sglang": "SGLang", "vllm": "vLLM", "speculators": "vLLM (speculators)"}
ARCHITECTURE = "LlamaForCausalLMEagle3"
#: Architectures vLLM's eagle3 method maps to its Eagle3LlamaForCausalLM (plain Llama is renamed).
VLLM_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM", "LlamaForCausalLM")
SPECULATORS_ARCHITECTURE = "Eagle3Speculator"
#: The speculators format version written (vLLM does not read it; speculators' own examples use 0.1.x).
SPECULATORS_VERSION = "0.1.0"
#: Written into every export folder: says which command wrote it (and lets a re-export replace it).
MARKER = "eagle3kit_export.json"
#: Below this, a max_position_embeddings with no target to compare with is suspicious (EAGLE ships 2048).
SHORT_CONTEXT = 8192

#: Keys of a servable config that go into the speculators ``transformer_layer_config``.
LAYER_CONFIG_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "num_hidden_layers", "hidden_act", "rms_norm_eps", "vocab_size", "max_position_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "partial_rotary_factor", "tie_word_embeddings", "attention_bias",
    "mlp_bias", "torch_dtype",
)


@dataclass
class DraftFolder:
    """A draft folder as read from disk: the raw config, the tensors and where they came from."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Any]
    files: list[str] = field(default_factory=list)

    @property
    def is_speculators(self) -> bool:
        return is_speculators_config(self.config)

    @property
    def flat(self) -> dict[str, Any]:
        return flat_config(self.config)


def is_speculators_config(config: dict[str, Any]) -> bool:
    return "speculators_config" in config or "speculators_model_type" in config or "transformer_layer_config" in config


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Llama-style config an engine ends up with (a speculators config the way vLLM converts it)."""
    if not is_speculators_config(config):
        return config
    layer = config.get("transformer_layer_config")
    flat = dict(layer) if isinstance(layer, dict) else {}
    for key in ("draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids"):
        if config.get(key) is not None:
            flat[key] = config[key]
    # vLLM's update_eagle3: config.get("norm_before_residual", True).
    flat["norm_before_residual"] = config.get("norm_before_residual", True)
    return flat


def read_folder(path: str | Path) -> DraftFolder:
    """Read ``config.json`` and the weights (``*.safetensors``, else ``pytorch_model*.bin``) of
    a draft folder, a checkpoint (its ``draft/``) or a Hub id (see :func:`resolve_draft`)."""
    path = resolve_draft(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"{path}: no {CONFIG}; give a draft folder (for example checkpoints/latest/draft)")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path / CONFIG}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path / CONFIG}: not a JSON object")
    files = sorted(path.glob("*.safetensors"))
    tensors: dict[str, Any] = {}
    if files:
        from safetensors import safe_open
        from safetensors.torch import load_file

        for f in files:
            try:
                with safe_open(str(f), "pt") as header:
                    names = list(header.keys())
            except Exception as error:  # noqa: BLE001 - a corrupt file is the user's to fix
                raise UserError(f"{f}: cannot read the safetensors file ({error})") from None
            _refuse_a_whole_model(path, config, names)  # from the names alone: a whole model's weights are not read
            try:
                tensors.update(load_file(str(f)))
            except Exception as error:  # noqa: BLE001 - a corrupt file is the user's to fix
                raise UserError(f"{f}: cannot read the safetensors file ({error})") from None
    else:
        files = sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
        if not files:
            raise UserError(f"{path}: no weights (*.safetensors or pytorch_model.bin)")
        import torch

        for f in files:
            try:
                state = torch.load(str(f), map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001
                raise UserError(f"{f}: cannot read the PyTorch weights ({error})") from None
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise UserError(f"{f}: not a state dict of tensors")
            tensors.update(state)
        _refuse_a_whole_model(path, config, list(tensors))
    return DraftFolder(path, config, tensors, [f.name for f in files])


def _refuse_a_whole_model(path: Path, config: dict[str, Any], names: list[str]) -> None:
    """UserError when the weights ``names`` hold several decoder layers and the config names
    no EAGLE architecture: the target (or another model) given where a draft belongs."""
    arch = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    layers = {n.removeprefix("model.").split(".")[1] for n in names if n.removeprefix("model.").startswith("layers.")}
    if len(layers) > 1 and not any("eagle" in a.lower() for a in arch):
        raise UserError(f"{path}: a whole model ({', '.join(arch) or 'no architecture'}, {len(layers)} decoder layers), "
                        "not an EAGLE-3 draft; give a draft folder, e.g. checkpoints/best/draft")


def positions_from_target(config: dict[str, Any]) -> bool:
    """Whether eagle3kit's trainer took this draft's ``max_position_embeddings`` from the target's
    config: :meth:`~eagle3kit.train.draft.DraftConfig.from_target` records the target's layer count
    (a draft read from elsewhere records 0), and the value is still the one it recorded."""
    meta = config.get("eagle3kit")
    saved = meta.get("draft_config") if isinstance(meta, dict) else None
    if not isinstance(saved, dict) or not _int(saved.get("target_num_layers")):
        return False
    return saved.get("max_position_embeddings") == flat_config(config).get("max_position_embeddings")


def read_target_config(basepath: str | None) -> dict[str, Any] | None:
    """The target's config: from a local folder, else from the Hugging Face cache (offline); None if
    neither has it. The text config of a multimodal target is merged over the top level."""
    if not basepath:
        return None
    path = Path(basepath).expanduser()
    if path.is_dir():
        file = path / CONFIG
        if not file.is_file():
            raise UserError(f"{basepath}: no {CONFIG}; give the target model's folder or its Hugging Face name")
    elif path.exists():
        raise UserError(f"--basepath {basepath}: a file, not a folder; give the target model's folder or its Hugging "
                        "Face name")
    elif not is_hub_id(str(basepath), legacy=True):  # ./x, /x, ~/x, a/b/c: a folder that is not there
        raise UserError(f"--basepath {basepath}: no such folder; give the target model's folder or its Hugging Face "
                        "name")
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(basepath), CONFIG)
        except Exception:  # noqa: BLE001 - not a repo id, no cache: nothing to compare with
            cached = None
        if not isinstance(cached, str):
            return None
        file = Path(cached)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{file}: not valid JSON ({error})") from None
    text = data.get("text_config")
    if isinstance(text, dict):
        data = {**data, **text, "architectures": data.get("architectures")}
    return data


def _canonical(key: str) -> tuple[str, bool, bool]:
    """``(name as the trainer saves it, had a model. prefix, was layers.0.*)``."""
    prefixed = key.startswith("model.")
    name = key[len("model."):] if prefixed else key
    layer0 = name.startswith("layers.0.")
    if layer0:
        name = "midlayer." + name[len("layers.0."):]
    return name, prefixed, layer0


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sizes(flat: dict[str, Any]) -> dict[str, int] | None:
    """The sizes that fix the tensor shapes, or None when the config lacks one."""
    H, heads, inter, vocab = (_int(flat.get(k)) for k in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"))
    if None in (H, heads, inter, vocab) or heads == 0:
        return None
    kv = _int(flat.get("num_key_value_heads")) or heads
    head_dim = _int(flat.get("head_dim")) or H // heads
    draft_vocab = _int(flat.get("draft_vocab_size")) or vocab
    target_h = _int(flat.get("target_hidden_size")) or H
    return {"H": H, "heads": heads, "kv": kv, "head_dim": head_dim, "I": inter, "vocab": vocab,
            "draft_vocab": draft_vocab, "target_H": target_h}


def _rope_of(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None, Any]:
    """``(rope_theta, rope_scaling normalised, partial_rotary_factor)`` comparable across spellings."""
    rope = legacy_rope({k: config.get(k) for k in ("rope_theta", "rope_scaling", "rope_parameters",
                                                    "partial_rotary_factor")})
    scaling = rope.get("rope_scaling")
    if isinstance(scaling, dict):
        scaling = {("rope_type" if k == "type" else k): (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                   for k, v in scaling.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") == "default":
            scaling = None
    theta = rope.get("rope_theta")
    return (float(theta) if theta is not None else 10000.0), scaling, rope.get("partial_rotary_factor")


def recorded_target_name(folder: DraftFolder) -> str | None:
    """The target a draft folder names: eagle3kit's record, or a speculators config's
    verifier; None when it names none (read leniently: the folder may be broken)."""
    meta = folder.config.get("eagle3kit")
    meta = meta if isinstance(meta, dict) else {}
    saved = meta.get("draft_config") if isinstance(meta.get("draft_config"), dict) else {}
    spec = folder.config.get("speculators_config")
    verifier = spec.get("verifier") if isinstance(spec, dict) else None
    for name in (saved.get("target_model"), meta.get("target_model"),
                 verifier.get("name_or_path") if isinstance(verifier, dict) else None):
        if isinstance(name, str) and name:
            return name
    return None
