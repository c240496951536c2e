"""Checks of a draft's tensors: shapes against the config, dtypes, NaN/Inf, the d2t/t2d vocabulary
mapping, and the weight names each engine accepts.
"""

from __future__ import annotations

from typing import Any

from eagle3kit.checkpoint import LAYER_KEYS, REQUIRED_KEYS
from eagle3kit.export.folder import ENGINE, DraftFolder, _canonical, _sizes
from eagle3kit.export.problem import Problem, _error, _warning


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


def _shape(t) -> list[int]:
    return list(t.shape)


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
            problems.append(_warning("t2d", "missing: the engines skip it, and eagle3kit (export, eval, "
                                            "train --init-draft) rebuilds it from d2t"))
        else:
            problems.append(_error(name, "missing: every EAGLE-3 draft needs it (the engines would leave it "
                                         "uninitialised or fail); the folder is incomplete"))
    return problems
