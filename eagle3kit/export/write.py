""":func:`export_draft`: write a draft in the SGLang, vLLM or speculators layout (keys renamed, d2t/t2d
converted, the format's ``config.json``), checked before it replaces the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from eagle3kit import __version__
from eagle3kit.checkpoint import CONFIG, WEIGHTS, servable_config
from eagle3kit.errors import UserError
from eagle3kit.export.card import CARD, draft_steps, measured_steps, model_card, serving_tree
from eagle3kit.export.check import _check_folder
from eagle3kit.export.folder import (ENGINE, FORMATS, LAYER_CONFIG_KEYS, MARKER, SPECULATORS_ARCHITECTURE, SPECULATORS_VERSION,
                                     DraftFolder, _canonical, _int, positions_from_target, read_folder, read_target_config,
                                     recorded_target_name)
from eagle3kit.hub import absolute_target
from eagle3kit.export.problem import Problem


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
                 num_speculative_tokens: int | None = None, eval_report: dict[str, Any] | None = None,
                 served_as: str | None = None) -> tuple[Path, list[Problem], list[str]]:
    """Write ``draft_dir`` in ``fmt``'s layout to ``out_dir`` (atomically), checked, with a
    model card (``README.md``; ``eval_report``: an ``eagle3kit eval --json`` report to quote,
    ``served_as``: the Hub id the card's serve command names, default the folder).

    ``basepath`` defaults to the target the draft records; a local folder is written as an
    absolute path. ``num_speculative_tokens`` defaults to the steps ``eval_report`` measured
    (else 5). The marker file records both as used.

    Returns ``(out_dir, the export's warnings, notes on what was taken by default, renamed or rebuilt)``.
    Raises :class:`UserError` when the export would not load correctly (it is then not
    written) or ``out_dir`` holds something else.
    """
    from safetensors.torch import save_file

    from eagle3kit.atomic import readable_by_all

    if fmt not in FORMATS:
        raise UserError(f"--to {fmt}: one of {', '.join(FORMATS)}")
    source = Path(draft_dir)
    out = Path(out_dir)
    folder = read_folder(source)
    _check_out_dir(out, source)
    servable, config = _servable(folder)
    recorded = None if basepath else recorded_target_name(folder)
    basepath = absolute_target(basepath or recorded) if basepath or recorded else None
    try:
        target = read_target_config(basepath) if basepath else None
    except UserError:
        if not recorded:
            raise
        target = None  # a folder on the machine it was trained on: named only, as a Hub id not cached is
    checked_against = basepath
    if fmt == "speculators" and not basepath:
        raise UserError("--to speculators needs --basepath TARGET: the speculators config names the verifier (the "
                        "model `vllm serve OUT` serves), and this draft does not record its target")
    tensors, notes = _normalised_tensors(folder, config.vocab_size)
    if recorded:
        note = f"--basepath not given: using the target the draft records, {basepath}"
        if target is None:  # not here: used as a name only (the check would warn about a --basepath not given)
            checked_against = None
            note += (" (not a folder here nor in the Hugging Face cache, so not compared with the draft; if it is "
                     "a local folder, give --basepath with its path)")
        notes.insert(0, note)
    steps = draft_steps(num_speculative_tokens, eval_report)
    measured = measured_steps(eval_report)
    if measured and measured != steps:
        notes.append(f"--num-speculative-tokens {steps}, but the eval report measured {measured} draft tokens per "
                     "pass: the acceptance the model card quotes is for those")
    tree = serving_tree(eval_report, steps)
    if tree and fmt != "sglang":
        notes.append(f"the eval report measured trees (top-{tree[0]}, {tree[1]} tokens per pass), which the model card "
                     f"quotes; {ENGINE[fmt]} drafts chains, which accept less: measure a chain (eval --topk 1) for "
                     "its card")
    if fmt == "speculators":
        verifier = basepath
        if served_as and Path(basepath).is_dir():  # `vllm serve REPO` elsewhere reads the verifier from the config
            from eagle3kit.export.card import base_model_of

            verifier = base_model_of(basepath) or basepath
            notes.append(f"--push-to-hub: the verifier is recorded as {verifier}, the Hub id {basepath}/config.json "
                         "records, so that `vllm serve` of the pushed repository finds it" if verifier != basepath else
                         f"--push-to-hub: the verifier is recorded as the local folder {basepath}, which `vllm serve` "
                         f"of the pushed repository finds only on this machine; give --basepath the target's Hub id "
                         "to record that instead")
        config_json = speculators_config(servable, verifier, _target_architectures(folder, target), steps)
        tensors = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in tensors.items()}
    else:
        config_json = servable
    marker = {"written_by": f"eagle3kit {__version__} export", "format": fmt, "source": str(source),
              "basepath": basepath, "num_speculative_tokens": steps, "notes": notes}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_unshared(tensors), str(tmp / WEIGHTS), metadata={"format": "pt"})
        readable_by_all(tmp / WEIGHTS)  # safetensors writes 0600
        (tmp / CONFIG).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        card = model_card(servable, fmt, served_as or str(out.resolve()), basepath, steps, eval_report)
        (tmp / CARD).write_text(card + "\n", encoding="utf-8")
        problems = _check_folder(read_folder(tmp), fmt, checked_against)
        if fmt == "speculators" and positions_from_target(folder.config):  # its config lost eagle3kit's record
            problems = [p for p in problems if p.is_error or p.key != "max_position_embeddings"]
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
