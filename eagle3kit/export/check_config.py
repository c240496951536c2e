"""Checks of a draft's ``config.json``: for each engine (architectures, sizes, positions, rope, the
feature layers, the speculators fields) and against the target's config.
"""

from __future__ import annotations

from typing import Any

from eagle3kit.export.folder import (ARCHITECTURE, ENGINE, SHORT_CONTEXT, SPECULATORS_ARCHITECTURE, VLLM_ARCHITECTURES,
                                     DraftFolder, _canonical, _int, _rope_of, positions_from_target)
from eagle3kit.export.problem import Problem, _error, _warning


def _has_rope(config: dict[str, Any]) -> bool:
    return any(config.get(k) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling"))


def _default_aux(layers: int) -> list[int]:
    return [2, layers // 2, layers - 3]


def _id_list(value: Any) -> list[int] | None:
    if isinstance(value, (list, tuple)) and all(_int(v) is not None for v in value):
        return list(value)
    return None


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
        elif ids and len(set(ids)) < 3:
            problems.append(_error(key, f"{ids}: SGLang and vLLM capture each layer once, so a repeated id gives fc "
                                        "fewer features than it takes (a shape error at the first request); the "
                                        "draft must be trained on three distinct layers"))
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
    if used and all(isinstance(i, int) for i in used) and list(used) != sorted(used):
        problems.append(_warning(top_key, f"hidden-state indices {list(used)} are not in increasing order: SGLang and "
                                          f"vLLM join the captured features in layer order ({sorted(used)}), so a "
                                          "draft trained on them in the listed order gets them permuted"))
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
        problems.append(_error("num_hidden_layers", f"{layers!r}: this draft has one decoder layer (with more, SGLang "
                                                    "and vLLM build further layers the weights do not hold, and a "
                                                    "missing key means 32 by transformers' default); set it to 1"))
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
    elif target is None and max_pos < SHORT_CONTEXT and not positions_from_target(config):
        problems.append(_warning("max_position_embeddings", f"{max_pos}: if the target serves longer contexts "
                                 "(Llama-3.1: 131072), the draft's positions run out past "
                                 f"{max_pos} tokens and acceptance collapses. Compare with the target: add "
                                 "--basepath TARGET (its folder, or a Hub id in the local cache); if it serves "
                                 "more, write its max_position_embeddings (and rope settings) into the draft's "
                                 "config.json"))
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
