"""Export a draft for SGLang, vLLM or the vLLM speculators format, and check a draft folder.

``eagle3kit export DRAFT_DIR --to sglang|vllm|speculators --out OUT`` and
``eagle3kit export --check DIR``.

What each engine loads (read from their published loaders; see :mod:`eagle3kit.checkpoint`
for the layout the trainer saves):

* **SGLang** ``LlamaForCausalLMEagle3``: a flat Llama config with
  ``architectures: ["LlamaForCausalLMEagle3"]``, ``num_hidden_layers: 1`` and a
  ``draft_vocab_size`` key. Weight names are looked up as given, then with ``model.`` in
  front; a name that matches neither is dropped *silently* (so ``layers.0.*`` keys leave
  the decoder layer random). ``q/k/v_proj`` and ``gate/up_proj`` are fused at load,
  ``d2t`` becomes ``hot_token_id = arange + d2t``, ``t2d`` is skipped, ``embed_tokens`` is
  replaced by the target's. The feature layers come from the nested
  ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang adds one); ``norm_before_residual``
  is not read (always norm after the residual).
* **vLLM** ``--speculative-config '{"method": "eagle3", "model": OUT, ...}'``: the same
  folder. ``d2t`` becomes ``draft_id_to_target_id``, ``t2d`` is skipped, every name
  without ``lm_head`` gets ``model.`` in front and ``midlayer.`` becomes ``layers.0.``;
  an unknown name raises ``KeyError`` (so ``model.``-prefixed keys and ``fc.bias`` break
  it), a missing one goes unnoticed. The feature layers come from the top-level
  ``eagle_aux_hidden_state_layer_ids`` (HF ``hidden_states`` indices, used as is).
* **speculators** (``vllm serve OUT``): a config with no top-level ``model_type``, a
  ``speculators_model_type``, a nested Llama ``transformer_layer_config`` and a
  ``speculators_config`` naming the verifier (the target vLLM serves) and a greedy
  proposal; weights named ``layers.0.*``. vLLM defaults ``norm_before_residual`` to true
  when the key is absent, so it is always written.

:func:`check_draft` names every problem it finds (as :class:`Problem`), for one engine or,
without a format, for whichever the folder's layout says; the exporters run it on their
own output and refuse to write a broken export.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from eagle3kit import __version__
from eagle3kit.checkpoint import CONFIG, LAYER_KEYS, REQUIRED_KEYS, WEIGHTS, legacy_rope, servable_config
from eagle3kit.errors import UserError

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


# --------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a draft: ``severity`` is ``"error"`` or ``"warning"``; ``key`` names
    the weight or config field; ``message`` says what is wrong and what to do."""

    severity: str
    key: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


def _error(key: str, message: str) -> Problem:
    return Problem("error", key, message)


def _warning(key: str, message: str) -> Problem:
    return Problem("warning", key, message)


# --------------------------------------------------------------------------------------------
# Reading a folder


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
    """Read ``config.json`` and the weights (``*.safetensors``, else ``pytorch_model*.bin``)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; give a draft folder (config.json + model.safetensors)")
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
        from safetensors.torch import load_file

        for f in files:
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
    return DraftFolder(path, config, tensors, [f.name for f in files])


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


# --------------------------------------------------------------------------------------------
# Small helpers


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


def _expected_shapes(s: dict[str, int]) -> dict[str, tuple[tuple[int, ...], str]]:
    H, q, kv = s["H"], s["heads"] * s["head_dim"], s["kv"] * s["head_dim"]
    shapes = {
        "fc.weight": ((H, 3 * s["target_H"]), "[hidden_size, 3 x target_hidden_size]"),
        "midlayer.self_attn.q_proj.weight": ((q, 2 * H), "[num_attention_heads x head_dim, 2 x hidden_size]"),
        "midlayer.self_attn.k_proj.weight": ((kv, 2 * H), "[num_key_value_heads x head_dim, 2 x hidden_size]"),
        "midlayer.self_attn.v_proj.weight": ((kv, 2 * H), "[num_key_value_heads x head_dim, 2 x hidden_size]"),
        "midlayer.self_attn.o_proj.weight": ((H, q), "[hidden_size, num_attention_heads x head_dim]"),
        "midlayer.mlp.gate_proj.weight": ((s["I"], H), "[intermediate_size, hidden_size]"),
        "midlayer.mlp.up_proj.weight": ((s["I"], H), "[intermediate_size, hidden_size]"),
        "midlayer.mlp.down_proj.weight": ((H, s["I"]), "[hidden_size, intermediate_size]"),
        "norm.weight": ((H,), "[hidden_size]"),
        "lm_head.weight": ((s["draft_vocab"], H), "[draft_vocab_size, hidden_size]"),
        "embed_tokens.weight": ((s["vocab"], H), "[vocab_size, hidden_size]"),
        "fc.bias": ((H,), "[hidden_size]"),
        "d2t": ((s["draft_vocab"],), "[draft_vocab_size]"),
        "t2d": ((s["vocab"],), "[vocab_size]"),
    }
    for norm in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        shapes[f"midlayer.{norm}.weight"] = ((H,), "[hidden_size]")
    return shapes


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


def _has_rope(config: dict[str, Any]) -> bool:
    return any(config.get(k) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling"))


def _default_aux(layers: int) -> list[int]:
    return [2, layers // 2, layers - 3]


def _id_list(value: Any) -> list[int] | None:
    if isinstance(value, (list, tuple)) and all(_int(v) is not None for v in value):
        return list(value)
    return None


def _shape(t) -> list[int]:
    return list(t.shape)


# --------------------------------------------------------------------------------------------
# Checks that do not depend on the engine


def _numeric_problems(folder: DraftFolder, sizes: dict[str, int] | None) -> list[Problem]:
    """Shapes, dtypes, NaN/Inf and the d2t/t2d vocabulary mapping."""
    import torch

    problems: list[Problem] = []
    tensors: dict[str, Any] = {}
    for key, value in folder.tensors.items():
        tensors.setdefault(_canonical(key)[0], value)
    float_dtypes: set[str] = set()
    for key, t in folder.tensors.items():
        name = _canonical(key)[0]
        if name in ("d2t", "t2d"):
            continue
        if not t.is_floating_point():
            problems.append(_error(key, f"dtype {t.dtype}: a weight must be floating point"))
            continue
        float_dtypes.add(str(t.dtype).removeprefix("torch."))
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kinds = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            problems.append(_error(key, f"{bad} of {t.numel()} values are {kinds} or infinite: the draft is broken "
                                        "(training diverged or the file is corrupt); use an earlier checkpoint"))
    if len(float_dtypes) > 1:
        problems.append(_warning("(weights)", f"mixed float dtypes {sorted(float_dtypes)}; the engines cast them to "
                                              "one dtype, so this is only a hint that the folder was assembled by hand"))
    if sizes is not None:
        for name, (shape, rule) in _expected_shapes(sizes).items():
            t = tensors.get(name)
            if t is not None and tuple(t.shape) != shape:
                problems.append(_error(_original_key(folder, name), f"shape {_shape(t)}, expected {list(shape)} = {rule} "
                                       "from config.json: the config and the weights disagree; fix the config "
                                       "(or the weights) so they describe the same draft"))
    d2t, t2d = tensors.get("d2t"), tensors.get("t2d")
    ids = None
    if d2t is not None and d2t.dim() == 1:
        if d2t.is_floating_point() or d2t.dtype == torch.bool:
            problems.append(_error("d2t", f"dtype {d2t.dtype}: d2t holds integer offsets (int64, target id = "
                                          "draft id + d2t[draft id])"))
        else:
            if d2t.dtype != torch.int64:
                problems.append(_warning("d2t", f"dtype {d2t.dtype}; the engines expect int64 (eagle3kit export "
                                                "converts it)"))
            ids = torch.arange(d2t.numel()) + d2t.to(torch.int64)
            vocab = sizes["vocab"] if sizes else None
            if ids.numel() and int(ids.min()) < 0:
                problems.append(_error("d2t", f"arange + d2t has negative target ids (min {int(ids.min())}): d2t must "
                                              "hold offsets target_id - draft_id of target ids in 0..vocab_size-1"))
                ids = None
            elif vocab is not None and ids.numel() and int(ids.max()) >= vocab:
                hint = (" (d2t looks like absolute target ids, not offsets: store target_id - draft_id)"
                        if int(d2t.max()) < vocab and bool((d2t[1:] > d2t[:-1]).all()) else "")
                problems.append(_error("d2t", f"arange + d2t reaches target id {int(ids.max())}, outside the vocabulary "
                                              f"(vocab_size {vocab}){hint}"))
                ids = None
            elif ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
                at = int(torch.nonzero(ids[1:] <= ids[:-1])[0])
                problems.append(_error("d2t", f"target ids arange + d2t are not strictly increasing (draft id {at} -> "
                                              f"{int(ids[at])}, draft id {at + 1} -> {int(ids[at + 1])}): the draft "
                                              "vocabulary must be distinct target ids in ascending order with d2t[i] = "
                                              "target_id[i] - i; rebuild d2t (and t2d) from the sorted ids"))
                ids = None
    if t2d is not None and t2d.dim() == 1:
        if t2d.dtype != torch.bool:
            if t2d.is_floating_point() or not bool(((t2d == 0) | (t2d == 1)).all()):
                problems.append(_error("t2d", f"dtype {t2d.dtype}: t2d is a boolean mask over the target vocabulary"))
                t2d = None
            else:
                problems.append(_warning("t2d", f"dtype {t2d.dtype}, expected bool (eagle3kit export converts it)"))
                t2d = t2d.to(torch.bool)
        if t2d is not None:
            draft_vocab = d2t.numel() if d2t is not None and d2t.dim() == 1 else (sizes or {}).get("draft_vocab")
            count = int(t2d.sum())
            if draft_vocab is not None and count != draft_vocab:
                problems.append(_error("t2d", f"marks {count} target ids, but the draft vocabulary has {draft_vocab}: "
                                              "t2d must be True exactly at the draft's target ids (arange + d2t)"))
            if ids is not None and ids.numel() and t2d.numel() > int(ids.max()):
                missing = (~t2d[ids]).nonzero().flatten()
                if missing.numel():
                    i = int(missing[0])
                    problems.append(_error("t2d", f"disagrees with d2t: t2d[{int(ids[i])}] is False although draft id "
                                                  f"{i} maps to target id {int(ids[i])} ({missing.numel()} such ids); "
                                                  "rebuild t2d from d2t"))
    return problems


def _original_key(folder: DraftFolder, name: str) -> str:
    for key in folder.tensors:
        if _canonical(key)[0] == name:
            return key
    return name


def _target_problems(flat: dict[str, Any], folder: DraftFolder, target: dict[str, Any], basepath: str) -> list[Problem]:
    """The draft's sizes, positions and rope against the target's config."""
    problems: list[Problem] = []
    name = f"the target ({basepath})"
    t_vocab, t_hidden = _int(target.get("vocab_size")), _int(target.get("hidden_size"))
    vocab = _int(flat.get("vocab_size"))
    if t_vocab is not None and vocab is not None and vocab != t_vocab:
        problems.append(_error("vocab_size", f"{vocab}, but {name} has vocab_size {t_vocab}: the draft was made for "
                                             "another tokenizer; train a draft for this target"))
    hidden = _int(flat.get("hidden_size"))
    target_h = _int(flat.get("target_hidden_size")) or hidden
    if t_hidden is not None and target_h is not None and target_h != t_hidden:
        field_name = "target_hidden_size" if flat.get("target_hidden_size") else "hidden_size"
        problems.append(_error(field_name, f"{target_h}, but {name} has hidden_size {t_hidden}: fc reads three "
                                           "target hidden states, so it cannot run on this target"))
    if t_hidden is not None and hidden is not None and hidden != t_hidden:
        has_embed = any(_canonical(k)[0] == "embed_tokens.weight" for k in folder.tensors)
        if not has_embed:
            problems.append(_error("embed_tokens.weight", f"missing: the draft's hidden_size {hidden} differs from "
                                                          f"{name}'s {t_hidden}, so the engines cannot share the "
                                                          "target's embedding and need the draft's own"))
    t_max, max_pos = _int(target.get("max_position_embeddings")), _int(flat.get("max_position_embeddings"))
    if t_max is not None and max_pos != t_max:
        if max_pos is not None and max_pos < t_max:
            problems.append(_error("max_position_embeddings", f"{max_pos}, but {name} serves {t_max} positions: past "
                                   f"{max_pos} tokens the draft's positions are out of range and acceptance collapses "
                                   "(EAGLE's reference config ships 2048); set max_position_embeddings to "
                                   f"{t_max} in config.json (with the target's rope settings)"))
        else:
            problems.append(_error("max_position_embeddings", f"{max_pos}, but {name} has {t_max}: set it to the "
                                                              f"target's {t_max}"))
    d_rope, t_rope = _rope_of(flat), _rope_of(target)
    if d_rope != t_rope:
        what = []
        if d_rope[0] != t_rope[0]:
            what.append(f"rope_theta {d_rope[0]:g} vs the target's {t_rope[0]:g}")
        if d_rope[1] != t_rope[1]:
            what.append(f"rope scaling {d_rope[1]} vs the target's {t_rope[1]}")
        if d_rope[2] != t_rope[2]:
            what.append(f"partial_rotary_factor {d_rope[2]} vs the target's {t_rope[2]}")
        problems.append(_error("rope_theta/rope_scaling", f"{'; '.join(what)}: the draft must use the target's rope "
                                                          "settings (rope_theta, rope_scaling / rope_parameters), or "
                                                          "its positions disagree with the target's; copy them from "
                                                          "the target's config.json"))
    return problems


# --------------------------------------------------------------------------------------------
# Engine-specific checks


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} key(s) ({shown})"


def _key_problems(folder: DraftFolder, fmt: str, flat: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    engine = ENGINE[fmt]
    seen: dict[str, str] = {}
    prefixed: list[str] = []
    layer0: list[str] = []
    midlayer: list[str] = []
    stray: list[str] = []
    allowed = set(REQUIRED_KEYS) | {"embed_tokens.weight"}
    for key in folder.tensors:
        name, has_prefix, was_layer0 = _canonical(key)
        if name in seen:
            problems.append(_error(key, f"duplicate of {seen[name]} (both load as {name}); keep one"))
            continue
        seen[name] = key
        if has_prefix:
            prefixed.append(key)
        if was_layer0:
            layer0.append(key)
        elif name.startswith("midlayer."):
            midlayer.append(key)
        if name == "fc.bias":
            if fmt == "sglang" and flat.get("bias") is True:
                continue
            if fmt == "sglang":
                problems.append(_error(key, 'SGLang builds fc without a bias unless config.json has "bias": true, and '
                                            "then drops this key silently; add \"bias\": true (vLLM cannot load an fc "
                                            "bias at all)"))
            else:
                problems.append(_error(key, "vLLM's fc has no bias: loading raises KeyError; this draft cannot run "
                                            "in vLLM (retrain with a bias-free fc)"))
            continue
        if name not in allowed:
            stray.append(key)
    for key in stray:
        name = _canonical(key)[0]
        if name.startswith(("layers.", "midlayers.")) or (name.startswith("midlayer.") and name not in LAYER_KEYS):
            why = "not a tensor of the one EAGLE-3 decoder layer"
        else:
            why = "not part of an EAGLE-3 draft"
        if fmt == "sglang":
            what = "SGLang skips unknown keys silently, so it would be ignored; remove it"
        else:
            what = "vLLM raises KeyError on it; remove it"
        problems.append(_error(key, f"stray key ({why}): {what}"))
    if prefixed:
        if fmt == "sglang":
            for key in prefixed:
                if _canonical(key)[0] == "lm_head.weight":
                    problems.append(_error(key, "SGLang looks up lm_head.weight without the model. prefix and drops "
                                                "this key silently; rename it to lm_head.weight"))
        else:
            problems.append(_error("model.*", f"{_some(prefixed)}: {engine} prepends model. itself (model.model.* -> "
                                              f"KeyError); strip the prefix (eagle3kit export --to {fmt} does)"))
    if layer0 and fmt == "sglang":
        problems.append(_error("layers.0.*", f"{_some(layer0)}: SGLang only knows midlayer.* and drops "
                                          "these silently, so the decoder layer would run with random weights; rename "
                                          "layers.0. to midlayer. (eagle3kit export --to sglang does)"))
    if midlayer and fmt == "speculators":
        problems.append(_warning("midlayer.*", f"{_some(midlayer)} in a speculators folder: vLLM renames them, but the "
                                              "speculators library expects layers.0.*; eagle3kit export --to "
                                              "speculators writes layers.0.*"))
    if "embed_tokens.weight" in seen and fmt == "sglang":
        problems.append(_warning(seen["embed_tokens.weight"], "SGLang replaces the draft's embedding with the "
                                                             "target's (unless their hidden sizes differ); it only "
                                                             "costs space"))
    sizes = _sizes(flat)
    for name in REQUIRED_KEYS:
        if name in seen:
            continue
        if name == "d2t":
            if sizes and sizes["draft_vocab"] < sizes["vocab"]:
                problems.append(_error("d2t", f"missing: with a draft vocabulary of {sizes['draft_vocab']} < "
                                              f"{sizes['vocab']}, the engines would map draft id i to target id i and "
                                              "propose wrong tokens; add d2t (target_id - draft_id per draft id)"))
            else:
                problems.append(_warning("d2t", "missing: fine only for a draft over the full target vocabulary"))
        elif name == "t2d":
            problems.append(_warning("t2d", "missing: the engines skip it, but eagle3kit (eval, load_draft) needs it; "
                                            "eagle3kit export rebuilds it from d2t"))
        else:
            problems.append(_error(name, "missing: every EAGLE-3 draft needs it (the engines would leave it "
                                         "uninitialised or fail); the folder is incomplete"))
    return problems


def _aux_problems(flat: dict[str, Any], fmt: str, target: dict[str, Any] | None) -> list[Problem]:
    problems: list[Problem] = []
    top_raw = flat.get("eagle_aux_hidden_state_layer_ids")
    eagle_config = flat.get("eagle_config") if isinstance(flat.get("eagle_config"), dict) else {}
    nested_raw = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    top_key, nested_key = "eagle_aux_hidden_state_layer_ids", "eagle_config.eagle_aux_hidden_state_layer_ids"
    top, nested = _id_list(top_raw), _id_list(nested_raw)
    if top_raw is not None and top is None:
        problems.append(_error(top_key, f"{top_raw!r}: must be a list of layer indices"))
    if nested_raw is not None and nested is None:
        problems.append(_error(nested_key, f"{nested_raw!r}: must be a list of layer indices"))
    if eagle_config.get("use_aux_hidden_state") is False:
        problems.append(_error("eagle_config.use_aux_hidden_state", "false: the engines then skip fc and feed one "
                                                                    "hidden state; an EAGLE-3 draft fuses three, set "
                                                                    "it to true"))
    for key, ids in ((top_key, top), (nested_key, nested)):
        if ids and len(ids) != 3:
            problems.append(_error(key, f"{ids}: fc fuses three target hidden states, so give three layer ids"))
    if top and nested and [i + 1 for i in nested] != top:
        hint = (" The same list is written in both places, so one of them is off by one." if top == nested else "")
        problems.append(_error(nested_key, f"{nested} vs the top-level {top_key} {top}: the top-level list (vLLM) is "
                                           "the HF hidden_states index and SGLang's nested list is one less (SGLang "
                                           f"adds 1), so nested + 1 must equal the top-level list.{hint} For a draft "
                                           f"trained on hidden_states {top}, write {[i - 1 for i in top]} in "
                                           "eagle_config"))
    layers = _int(target.get("num_hidden_layers")) if target else None
    default = _default_aux(layers) if layers else None
    defaults_text = (f"the target's defaults, hidden_states {default}" if default
                     else "the defaults (HF hidden_states 2, L//2, L-3 of an L-layer target)")
    no_ids = _warning(top_key, f"no aux-layer ids in the config: the engines capture {defaults_text}; right only if "
                               "the draft was trained on them (EAGLE's and SpecForge's defaults are)")
    if fmt == "sglang":
        if nested_raw is not None and nested == []:
            problems.append(_error(nested_key, "[]: SGLang then captures no hidden states; remove the key (defaults "
                                               "apply) or give the three ids (HF index - 1)"))
        elif not nested:
            if top:
                msg = (f"missing: SGLang reads only this nested list and ignores the top-level {top_key} {top}, so it "
                       f"captures {defaults_text}; add eagle_config.eagle_aux_hidden_state_layer_ids = "
                       f"{[i - 1 for i in top]}")
                if default is not None and top != default:
                    problems.append(_error(nested_key, msg))
                elif default is None:
                    problems.append(_warning(nested_key, msg + " (harmless if those are the defaults)"))
            else:
                problems.append(no_ids)
        used = [i + 1 for i in nested] if nested else default
    else:
        if not top:
            if nested:
                msg = (f"missing: vLLM reads only the top-level list and ignores eagle_config's {nested}, so it "
                       f"captures {defaults_text}; add \"{top_key}\": {[i + 1 for i in nested]}")
                if default is not None and [i + 1 for i in nested] != default:
                    problems.append(_error(top_key, msg))
                elif default is None:
                    problems.append(_warning(top_key, msg + " (harmless if those are the defaults)"))
            else:
                problems.append(no_ids)
        used = top or default
    if layers and used:
        for i in used:
            if not 0 < i < layers:
                problems.append(_error(top_key, f"hidden-state index {i} is never captured: the target has {layers} decoder "
                                       f"layers, so indices run 1..{layers - 1}"))
    return problems


def _config_problems(folder: DraftFolder, fmt: str, target: dict[str, Any] | None) -> list[Problem]:
    problems: list[Problem] = []
    config, flat = folder.config, folder.flat
    engine = ENGINE[fmt]
    if folder.is_speculators:
        if fmt == "sglang":
            problems.append(_error("speculators_config", "a speculators-format config (no model_type, a nested "
                                                         "transformer_layer_config): SGLang cannot read it; write an "
                                                         "SGLang copy with eagle3kit export DIR --to sglang"))
        problems += _speculators_problems(config, required_verifier=fmt == "speculators")
    else:
        if fmt == "speculators":
            problems.append(_error("speculators_config", "missing: not a speculators-format config, so `vllm serve "
                                                         "DIR` cannot read it; write one with eagle3kit export DIR "
                                                         "--to speculators --basepath TARGET"))
        if not config.get("model_type"):
            problems.append(_error("model_type", f"missing: {engine} reads config.json through transformers' "
                                                 "AutoConfig, which needs it; add \"model_type\": \"llama\""))
        archs = config.get("architectures")
        if fmt == "sglang" and archs != [ARCHITECTURE]:
            problems.append(_error("architectures", f"{archs}: SGLang picks the draft class by name and needs "
                                                    f"[\"{ARCHITECTURE}\"]; set it (eagle3kit export --to sglang "
                                                    "does)"))
        elif fmt != "sglang" and not (isinstance(archs, list) and len(archs) == 1
                                      and (archs[0] in VLLM_ARCHITECTURES or archs[0].startswith("Eagle3")
                                           or archs[0].endswith("Eagle3"))):
            problems.append(_warning("architectures", f"{archs}: vLLM's eagle3 method renames it to "
                                                      f"Eagle3<name>, which may not exist; use [\"{ARCHITECTURE}\"]"))
    layers = flat.get("num_hidden_layers")
    if layers != 1:
        problems.append(_error("num_hidden_layers", f"{layers!r}: an EAGLE-3 draft has one decoder layer (SGLang "
                                                    "refuses more, and a missing key means 32 by transformers' "
                                                    "default); set it to 1"))
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if _int(flat.get(key)) is None:
            problems.append(_error(key, f"{flat.get(key)!r}: missing or not an integer; the tensor shapes cannot "
                                        "be checked"))
    if "draft_vocab_size" not in flat:
        msg = "missing: give the draft vocabulary size (the rows of lm_head.weight)"
        if fmt == "sglang":
            problems.append(_error("draft_vocab_size", msg + "; SGLang reads config.draft_vocab_size and fails "
                                                              "without it"))
        else:
            problems.append(_warning("draft_vocab_size", msg + f"; {engine} otherwise assumes vocab_size"))
    elif flat["draft_vocab_size"] is None and fmt == "sglang":
        problems.append(_warning("draft_vocab_size", "null: SGLang then replaces the draft's lm_head with the "
                                                     "target's (full vocabulary); give the number"))
    if flat.get("tie_word_embeddings") is True:
        problems.append(_error("tie_word_embeddings", "true: the engines would use the embedding as lm_head; a draft "
                                                      "has its own lm_head over the draft vocabulary, set it false"))
    for key in ("attention_bias", "mlp_bias", "qkv_bias"):
        if flat.get(key) is True:
            problems.append(_error(key, "true: the engines would expect bias tensors an EAGLE-3 draft does not "
                                        "have; set it false"))
    norm_before = flat.get("norm_before_residual")
    if fmt == "sglang" and norm_before is True:
        problems.append(_error("norm_before_residual", "true: SGLang does not read it and always adds the residual "
                                                       "before hidden_norm, so this draft would run wrongly; serve it "
                                                       "with vLLM instead"))
    elif norm_before is True and isinstance(config.get("eagle3kit"), dict):
        problems.append(_error("norm_before_residual", "true, but eagle3kit trains with the residual before "
                                                       "hidden_norm; set it false"))
    max_pos = _int(flat.get("max_position_embeddings"))
    if max_pos is None:
        problems.append(_warning("max_position_embeddings", "missing: engines fall back to a default (2048 in "
                                                            "transformers, 8192 in vLLM); set it to the target's"))
    elif target is None and max_pos < SHORT_CONTEXT:
        problems.append(_warning("max_position_embeddings", f"{max_pos}: if the target serves longer contexts "
                                 "(Llama-3.1: 131072), the draft's positions run out past "
                                 f"{max_pos} tokens and acceptance collapses; set it to the target's value (check "
                                 "with --basepath TARGET_FOLDER)"))
    if flat.get("rope_parameters") is not None and (flat.get("rope_theta") is not None or flat.get("rope_scaling") is not None):
        legacy = _rope_of({"rope_theta": flat.get("rope_theta"), "rope_scaling": flat.get("rope_scaling")})
        new = _rope_of({"rope_parameters": flat["rope_parameters"], "rope_theta": flat.get("rope_theta")})
        if legacy[:2] != new[:2]:
            problems.append(_error("rope_parameters", f"{flat['rope_parameters']} disagrees with rope_theta "
                                   f"{flat.get('rope_theta')} / rope_scaling {flat.get('rope_scaling')}: engines on "
                                   "transformers 4 read the latter, transformers 5 the former; make them equal (the "
                                   "target's values)"))
    if not _has_rope(flat) and target is None:
        problems.append(_warning("rope_theta", "missing: the engines use rope_theta 10000 with no scaling; Llama-3 "
                                               "targets use 500000 with llama3 scaling. Copy the target's rope "
                                               "settings (check with --basepath TARGET_FOLDER)"))
    problems += _aux_problems(flat, fmt, target)
    return problems


def _speculators_problems(config: dict[str, Any], required_verifier: bool) -> list[Problem]:
    problems: list[Problem] = []
    kind = config.get("speculators_model_type")
    if kind != "eagle3":
        problems.append(_error("speculators_model_type", f"{kind!r}: must be \"eagle3\" for an EAGLE-3 draft"))
    if "model_type" in config:
        problems.append(_error("model_type", "present at the top level of a speculators config: vLLM then reads it "
                                             "as a plain model config instead of converting it; remove it (it "
                                             "belongs in transformer_layer_config)"))
    layer = config.get("transformer_layer_config")
    if not isinstance(layer, dict):
        problems.append(_error("transformer_layer_config", "missing or not an object: vLLM builds the draft's "
                                                           "Llama config from it"))
    elif layer.get("model_type") != "llama":
        problems.append(_warning("transformer_layer_config.model_type", f"{layer.get('model_type')!r}: expected "
                                                                        "\"llama\""))
    if config.get("architectures") != [SPECULATORS_ARCHITECTURE]:
        problems.append(_warning("architectures", f"{config.get('architectures')}: the speculators format writes "
                                                  f"[\"{SPECULATORS_ARCHITECTURE}\"] (vLLM ignores it)"))
    if "norm_before_residual" not in config:
        problems.append(_error("norm_before_residual", "missing: vLLM then assumes true for a speculators config; "
                                                       "write it explicitly (false for drafts trained by EAGLE, "
                                                       "SpecForge or eagle3kit)"))
    if not config.get("speculators_version"):
        problems.append(_warning("speculators_version", "missing: the speculators library records its version here"))
    spec = config.get("speculators_config")
    if not isinstance(spec, dict):
        problems.append(_error("speculators_config", "missing or not an object: it names the proposal method and "
                                                     "the verifier (target)"))
        return problems
    if spec.get("algorithm") != "eagle3":
        problems.append(_warning("speculators_config.algorithm", f"{spec.get('algorithm')!r}: expected \"eagle3\""))
    methods = spec.get("proposal_methods")
    first = methods[0] if isinstance(methods, list) and methods and isinstance(methods[0], dict) else None
    if first is None:
        problems.append(_error("speculators_config.proposal_methods", "missing or empty: vLLM reads the number of "
                                                                      "speculative tokens from the first one"))
    else:
        tokens = _int(first.get("speculative_tokens"))
        if tokens is None or tokens < 1:
            problems.append(_error("speculators_config.proposal_methods[0].speculative_tokens",
                                   f"{first.get('speculative_tokens')!r}: give the draft length (an integer >= 1)"))
        if first.get("proposal_type") != "greedy":
            problems.append(_warning("speculators_config.proposal_methods[0].proposal_type",
                                     f"{first.get('proposal_type')!r}: expected \"greedy\""))
        if spec.get("default_proposal_method") != first.get("proposal_type"):
            problems.append(_warning("speculators_config.default_proposal_method",
                                     f"{spec.get('default_proposal_method')!r}: expected the first proposal method's "
                                     f"type {first.get('proposal_type')!r}"))
    verifier = spec.get("verifier") if isinstance(spec.get("verifier"), dict) else {}
    if not verifier.get("name_or_path"):
        msg = ("missing: `vllm serve DIR` serves this model as the target; give the target's name (eagle3kit export "
               "--to speculators --basepath TARGET)")
        make = _error if required_verifier else _warning
        problems.append(make("speculators_config.verifier.name_or_path", msg))
    if not isinstance(verifier.get("architectures"), list) or not verifier.get("architectures"):
        problems.append(_warning("speculators_config.verifier.architectures", "missing: the target's architectures "
                                                                              "(e.g. [\"LlamaForCausalLM\"])"))
    return problems


# --------------------------------------------------------------------------------------------
# check_draft


def _engine_problems(folder: DraftFolder, fmt: str, target: dict[str, Any] | None) -> list[Problem]:
    return _config_problems(folder, fmt, target) + _key_problems(folder, fmt, folder.flat)


def _merge_engines(folder: DraftFolder, target: dict[str, Any] | None) -> list[Problem]:
    """Problems for both SGLang and vLLM: shared ones as they are; one engine's only as warnings that say so."""
    by_engine = {fmt: _engine_problems(folder, fmt, target) for fmt in ("sglang", "vllm")}
    vllm = {(p.severity, p.key): p for p in by_engine["vllm"]}
    out, shared = [], set()
    for p in by_engine["sglang"]:
        other = vllm.get((p.severity, p.key))
        if other is not None:
            shared.update({p, other})
            out.append(p if other.message == p.message else
                       Problem(p.severity, p.key, f"SGLang: {p.message} | vLLM: {other.message}"))
    for fmt, problems in by_engine.items():
        for p in problems:
            if p in shared:
                continue
            if p.is_error:
                out.append(_warning(p.key, f"{ENGINE[fmt]} cannot load it as is: {p.message}"))
            else:
                out.append(_warning(p.key, f"{ENGINE[fmt]}: {p.message}"))
    return out


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _check_folder(folder: DraftFolder, fmt: str | None, basepath: str | None) -> list[Problem]:
    problems: list[Problem] = []
    target = None
    if basepath:
        target = read_target_config(basepath)
        if target is None:
            problems.append(_warning("--basepath", f"{basepath}: no local folder and not in the Hugging Face cache, so "
                                                   "the draft's sizes, positions and rope were not compared with the "
                                                   "target's; give the target's local folder"))
    flat = folder.flat
    if fmt is None and folder.is_speculators:
        fmt = "speculators"
    if fmt is None:
        problems += _merge_engines(folder, target)
    else:
        problems += _engine_problems(folder, fmt, target)
    problems += _numeric_problems(folder, _sizes(flat))
    if target is not None:
        problems += _target_problems(flat, folder, target, basepath)
    problems = _dedupe(problems)
    return sorted(problems, key=lambda p: (not p.is_error,))


def check_draft(path: str | Path, fmt: str | None = None, basepath: str | None = None) -> list[Problem]:
    """Every problem of the draft folder ``path`` for ``fmt`` (``sglang``, ``vllm``, ``speculators``).

    Without ``fmt``, a speculators-format folder is checked as one; any other folder for both
    SGLang and vLLM, where a problem that stops only one engine is a warning naming it.
    ``basepath`` (the target's local folder, or a name in the Hugging Face cache) adds the
    comparison with the target's sizes, positions and rope settings. A folder that cannot
    be read at all gives one error.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    try:
        folder = read_folder(path)
    except UserError as error:
        return [_error(str(path), str(error))]
    try:
        return _check_folder(folder, fmt, basepath)
    except UserError as error:  # an unreadable target config
        return [_error("--basepath", str(error))]


def _loads_in(problems_by_fmt: dict[str, list[Problem]]) -> list[str]:
    return [ENGINE[f] for f, ps in problems_by_fmt.items() if not any(p.is_error for p in ps)]


def _summary(folder: DraftFolder, fmt: str | None, basepath: str | None) -> str:
    flat = folder.flat
    s = _sizes(flat) or {}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in folder.tensors.values() if t.is_floating_point()})
    ec = flat.get("eagle_config") if isinstance(flat.get("eagle_config"), dict) else {}
    top, nested = flat.get("eagle_aux_hidden_state_layer_ids"), ec.get("eagle_aux_hidden_state_layer_ids")
    aux = f"{top} (vLLM, HF hidden_states index)" if top else "defaults (not in config)"
    if nested:
        aux += f", SGLang eagle_config {nested}"
    theta, scaling, _ = _rope_of(flat)
    rope = f"rope_theta {theta:g}" + (f" {scaling.get('rope_type')}" if scaling else "")
    layout = "speculators" if folder.is_speculators else f"{', '.join(map(str, flat.get('architectures') or []))}"
    if fmt is None and not folder.is_speculators:
        target = None
        try:
            target = read_target_config(basepath) if basepath else None
        except UserError:
            pass
        engines = _loads_in({f: _engine_problems(folder, f, target) for f in ("sglang", "vllm")})
    else:
        engines = [ENGINE[fmt or "speculators"]]
    return (f"{folder.path} ({layout}, {', '.join(folder.files)}): hidden {s.get('H')}, target hidden "
            f"{s.get('target_H')}, heads {s.get('heads')}/{s.get('kv')} x {s.get('head_dim')}, intermediate "
            f"{s.get('I')}, vocab {s.get('vocab')}, draft vocab {s.get('draft_vocab')}, aux layers {aux}, "
            f"max positions {flat.get('max_position_embeddings')}, {rope}, {'/'.join(dtypes)}; loads in: "
            f"{', '.join(engines) or 'none as is'}")


def _problem_table(problems: list[Problem], title: str):
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("key / field", overflow="fold")
    table.add_column("problem and what to do", overflow="fold")
    for p in problems:
        colour = "red" if p.is_error else "yellow"
        table.add_row(f"[{colour}]{p.severity}[/{colour}]", p.key, p.message)
    return table


def check_command(draft_dir: str | Path, fmt: str | None = None, basepath: str | None = None) -> list[Problem]:
    """``eagle3kit export --check DIR``: print the problems (or an OK summary); UserError on any error."""
    from rich.console import Console

    console = Console()
    folder = read_folder(draft_dir)
    problems = _check_folder(folder, fmt, basepath)
    errors = [p for p in problems if p.is_error]
    what = f" for {ENGINE[fmt]}" if fmt else ""
    if problems:
        console.print(_problem_table(problems, f"eagle3kit export --check {draft_dir}{what}"))
    if errors:
        raise UserError(f"{draft_dir}: {len(errors)} error(s){what} (see the table above)")
    console.print(f"[green]OK[/green]: {_summary(folder, fmt, basepath)}"
                  + (f" ({len(problems)} warning(s) above)" if problems else ""), highlight=False, soft_wrap=True)
    return problems


# --------------------------------------------------------------------------------------------
# Exporters


def _normalised_tensors(folder: DraftFolder, vocab: int | None) -> tuple[dict[str, Any], list[str]]:
    """Tensors named as the trainer saves them (no ``model.``, ``midlayer.*``), d2t int64, t2d bool."""
    import torch

    notes: list[str] = []
    tensors: dict[str, Any] = {}
    renamed: list[str] = []
    for key, value in folder.tensors.items():
        name = _canonical(key)[0]
        if name in tensors:
            raise UserError(f"{folder.path}: {key} duplicates another key that also loads as {name}; keep one")
        if name != key:
            renamed.append(f"{key} -> {name}")
        tensors[name] = value
    if renamed:
        notes.append(f"renamed {len(renamed)} key(s): {', '.join(renamed[:2])}{', ...' if len(renamed) > 2 else ''}")
    d2t = tensors.get("d2t")
    if d2t is not None and not d2t.is_floating_point() and d2t.dtype not in (torch.int64, torch.bool):
        tensors["d2t"] = d2t.to(torch.int64)
        notes.append(f"d2t {d2t.dtype} -> int64")
    t2d = tensors.get("t2d")
    if t2d is not None and t2d.dtype != torch.bool and not t2d.is_floating_point() and bool(((t2d == 0) | (t2d == 1)).all()):
        tensors["t2d"] = t2d.to(torch.bool)
        notes.append(f"t2d {t2d.dtype} -> bool")
    d2t = tensors.get("d2t")
    if "t2d" not in tensors and d2t is not None and vocab and not d2t.is_floating_point() and d2t.dim() == 1:
        ids = torch.arange(d2t.numel()) + d2t.to(torch.int64)
        if ids.numel() and 0 <= int(ids.min()) and int(ids.max()) < vocab:
            t2d = torch.zeros(vocab, dtype=torch.bool)
            t2d[ids] = True
            tensors["t2d"] = t2d
            notes.append("t2d rebuilt from d2t")
    return tensors, notes


def _draft_config_dict(folder: DraftFolder) -> dict[str, Any]:
    from eagle3kit.checkpoint import draft_config_from_servable

    try:
        data = draft_config_from_servable(folder.config)
    except (KeyError, TypeError) as error:
        raise UserError(f"{folder.path / CONFIG}: cannot read the draft's sizes ({error} missing or invalid); "
                        "run eagle3kit export --check on it") from None
    flat = folder.flat
    if flat.get("partial_rotary_factor") is not None:
        data["rope"]["partial_rotary_factor"] = flat["partial_rotary_factor"]
    meta = folder.config.get("eagle3kit") if isinstance(folder.config.get("eagle3kit"), dict) else {}
    saved = meta.get("draft_config") if isinstance(meta.get("draft_config"), dict) else {}
    for key in ("target_num_layers", "target_model"):
        if saved.get(key) not in (None, ""):
            data[key] = saved[key]
    if not data.get("target_model") and meta.get("target_model"):
        data["target_model"] = meta["target_model"]
    lm_head = folder.tensors.get("lm_head.weight")
    if lm_head is None:
        lm_head = folder.tensors.get("model.lm_head.weight")
    if lm_head is not None and lm_head.is_floating_point():
        data["torch_dtype"] = str(lm_head.dtype).removeprefix("torch.")
    return data


def _source_extra(folder: DraftFolder) -> dict[str, Any]:
    meta = folder.config.get("eagle3kit")
    if not isinstance(meta, dict):
        return {}
    return {k: v for k, v in meta.items() if k not in ("version", "draft_config")}


def _servable(folder: DraftFolder) -> tuple[dict[str, Any], Any]:
    """The SGLang/vLLM config.json of ``folder`` (and its DraftConfig)."""
    from eagle3kit.train.draft import DraftConfig

    data = _draft_config_dict(folder)
    config = DraftConfig.from_dict(data)
    out = servable_config(config, _source_extra(folder))
    flat = folder.flat
    if not config.aux_layers:  # an empty list would make SGLang capture nothing: leave the defaults to the engines
        out.pop("eagle_aux_hidden_state_layer_ids", None)
        out["eagle_config"].pop("eagle_aux_hidden_state_layer_ids", None)
    if not config.rope:  # the source named no rope settings: do not invent them (the check warns)
        out.pop("rope_theta", None)
        out.pop("rope_scaling", None)
    if not _int(flat.get("max_position_embeddings")):
        out.pop("max_position_embeddings", None)
    out["norm_before_residual"] = bool(flat.get("norm_before_residual", False))
    if flat.get("bias") is not None:
        out["bias"] = flat["bias"]
    return out, config


def _target_architectures(folder: DraftFolder, target: dict[str, Any] | None) -> list[str]:
    if target is not None:
        archs = target.get("architectures")
        if isinstance(archs, list) and archs:
            return list(archs)
        if target.get("model_type") == "llama":
            return ["LlamaForCausalLM"]
    spec = folder.config.get("speculators_config")
    if isinstance(spec, dict) and isinstance(spec.get("verifier"), dict):
        archs = spec["verifier"].get("architectures")
        if isinstance(archs, list) and archs:
            return list(archs)
    meta = folder.config.get("eagle3kit") if isinstance(folder.config.get("eagle3kit"), dict) else {}
    archs = meta.get("target_architectures")
    if isinstance(archs, list) and archs:
        return list(archs)
    return ["LlamaForCausalLM"]


def speculators_config(servable: dict[str, Any], basepath: str, verifier_architectures: list[str],
                       num_speculative_tokens: int) -> dict[str, Any]:
    """The speculators-format ``config.json`` for a servable (SGLang/vLLM) config."""
    layer = {k: servable[k] for k in LAYER_CONFIG_KEYS if k in servable}
    layer["num_hidden_layers"] = 1
    layer["model_type"] = "llama"
    return {
        "architectures": [SPECULATORS_ARCHITECTURE],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        "transformer_layer_config": layer,
        "draft_vocab_size": servable["draft_vocab_size"],
        "norm_before_residual": bool(servable.get("norm_before_residual", False)),
        "target_hidden_size": servable.get("target_hidden_size"),
        "eagle_aux_hidden_state_layer_ids": servable.get("eagle_aux_hidden_state_layer_ids"),
        "embed_requires_grad": False,
        "torch_dtype": servable.get("torch_dtype"),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{
                "proposal_type": "greedy",
                "speculative_tokens": int(num_speculative_tokens),
                "verifier_accept_k": 1,
                "accept_tolerance": 0.0,
            }],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": basepath, "architectures": list(verifier_architectures)},
        },
    }


def _check_out_dir(out: Path, source: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file is in the way; give a folder")
    if out.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the draft folder itself; write the export to another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"--out {out} exists and was not written by eagle3kit export; choose a new folder or remove "
                        "it first")


def _unshared(tensors: dict[str, Any]) -> dict[str, Any]:
    """Contiguous CPU tensors, copied where two share memory (a tied pytorch_model.bin): safetensors refuses those."""
    out, storages = {}, set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in storages:
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def export_draft(draft_dir: str | Path, fmt: str, out_dir: str | Path, basepath: str | None = None,
                 num_speculative_tokens: int = 5) -> tuple[Path, list[Problem], list[str]]:
    """Write ``draft_dir`` in ``fmt``'s layout to ``out_dir`` (atomically), checked.

    Returns ``(out_dir, the export's warnings, notes on what was renamed or rebuilt)``.
    Raises :class:`UserError` when the export would not load correctly (it is then not
    written) or ``out_dir`` holds something else.
    """
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise UserError(f"--to {fmt}: one of {', '.join(FORMATS)}")
    source = Path(draft_dir)
    out = Path(out_dir)
    folder = read_folder(source)
    _check_out_dir(out, source)
    target = read_target_config(basepath) if basepath else None
    servable, config = _servable(folder)
    if fmt == "speculators" and not basepath:
        recorded = f" (this draft was trained for {config.target_model})" if config.target_model else ""
        raise UserError("--to speculators needs --basepath TARGET: the speculators config names the verifier (the "
                        f"model `vllm serve OUT` serves){recorded}")
    tensors, notes = _normalised_tensors(folder, config.vocab_size)
    if fmt == "speculators":
        config_json = speculators_config(servable, basepath, _target_architectures(folder, target), num_speculative_tokens)
        tensors = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in tensors.items()}
    else:
        config_json = servable
    marker = {"written_by": f"eagle3kit {__version__} export", "format": fmt, "source": str(source),
              "basepath": basepath, "notes": notes}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_unshared(tensors), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        problems = _check_folder(read_folder(tmp), fmt, basepath)
        errors = [p for p in problems if p.is_error]
        if errors:
            lines = "\n".join(f"  - {p.key}: {p.message}" for p in errors)
            raise UserError(f"the {fmt} export of {source} would not load correctly, so nothing was written "
                            f"({len(errors)} error(s)):\n{lines}")
        from eagle3kit.checkpoint import replace_dir

        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, [p for p in problems if not p.is_error], notes


def serve_hint(fmt: str, out: Path, basepath: str | None, num_speculative_tokens: int) -> str:
    base = basepath or "TARGET"
    if fmt == "sglang":
        return (f"python -m sglang.launch_server --model-path {base} --speculative-algorithm EAGLE3 "
                f"--speculative-draft-model-path {out} --speculative-num-steps {num_speculative_tokens} "
                f"--speculative-eagle-topk 1 --speculative-num-draft-tokens {num_speculative_tokens + 1}")
    if fmt == "vllm":
        spec = json.dumps({"method": "eagle3", "model": str(out), "num_speculative_tokens": num_speculative_tokens})
        return f"vllm serve {base} --speculative-config '{spec}'"
    return f"vllm serve {out}"


def export_command(draft_dir: str | Path, fmt: str, out_dir: str | Path, basepath: str | None = None,
                   num_speculative_tokens: int = 5) -> Path:
    """``eagle3kit export DRAFT_DIR --to FMT --out OUT``: write, check, print how to serve it."""
    from rich.console import Console

    console = Console()
    out, warnings, notes = export_draft(draft_dir, fmt, out_dir, basepath=basepath,
                                        num_speculative_tokens=num_speculative_tokens)
    if warnings:
        console.print(_problem_table(warnings, f"{fmt} export: warnings"))
    for note in notes:
        console.print(f"  {note}", highlight=False)
    console.print(f"[green]Wrote[/green] {out} ({ENGINE[fmt]} layout, checked). Serve with:", highlight=False)
    console.print(serve_hint(fmt, out, basepath, num_speculative_tokens), highlight=False, soft_wrap=True)
    return out
