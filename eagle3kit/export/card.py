"""The model card (``README.md``) of an export folder, and how to serve it: what a person who
finds the folder (or its Hub page) needs: the target, how to serve it, the draft's shapes,
how it was trained and, given an ``eagle3kit eval --json`` report, what it is worth.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from eagle3kit import __version__
from eagle3kit.eval.report import sampling_filters
from eagle3kit.export.folder import ENGINE
from eagle3kit.hub import absolute_target

CARD = "README.md"
#: Draft tokens per pass of the serve command (and the speculators config) with no eval report to follow.
DEFAULT_STEPS = 5


def measured_steps(report: dict[str, Any] | None) -> int | None:
    """The draft tokens per pass an in-process ``eagle3kit eval --json`` report measured with
    (``--steps``); None without one, or for ``--server`` (the server's own settings)."""
    if not report or report.get("engine"):
        return None
    steps = (report.get("config") or {}).get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 else None


def draft_steps(num_speculative_tokens: int | None, report: dict[str, Any] | None) -> int:
    """The draft tokens per pass to serve with: as given, else as the eval report measured, else 5."""
    return num_speculative_tokens or measured_steps(report) or DEFAULT_STEPS


def base_model_of(name: str) -> str | None:
    """The Hub model id the card names as ``base_model``: ``name`` when it is one; for a local
    folder, the ``_name_or_path`` its config.json records when that is one; else None (the Hub
    rejects a card whose ``base_model`` is not a model id)."""
    from eagle3kit.hub import is_hub_id

    path = Path(name).expanduser()
    if not path.is_dir():
        return name if is_hub_id(name) else None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = config.get("_name_or_path") if isinstance(config, dict) else None
    return recorded if isinstance(recorded, str) and is_hub_id(recorded) else None


def serving_tree(report: dict[str, Any] | None, steps: int) -> tuple[int, int] | None:
    """``(topk, tokens per pass)`` of the tree an in-process eval report measured, when the
    export serves its number of steps (SGLang drafts the same tree); None for a chain."""
    if measured_steps(report) != steps:
        return None
    topk, size = (report.get("config") or {}).get("topk"), report.get("tree_size")
    if isinstance(topk, int) and topk > 1 and isinstance(size, int) and size > 1:
        return topk, size
    return None


def serve_hint(fmt: str, where: str, basepath: str | None, num_speculative_tokens: int,
               tree: tuple[int, int] | None = None) -> str:
    """The command that serves the export ``where`` (a folder or Hub id) with its target;
    ``tree``: SGLang's ``(--speculative-eagle-topk, --speculative-num-draft-tokens)`` (vLLM
    drafts chains)."""
    base = shlex.quote(basepath) if basepath else "TARGET"
    if fmt == "sglang":
        topk, size = tree or (1, num_speculative_tokens + 1)
        return (f"python -m sglang.launch_server --model-path {base} --speculative-algorithm EAGLE3 "
                f"--speculative-draft-model-path {shlex.quote(str(where))} --speculative-num-steps "
                f"{num_speculative_tokens} --speculative-eagle-topk {topk} --speculative-num-draft-tokens {size}")
    if fmt == "vllm":
        spec = json.dumps({"method": "eagle3", "model": str(where), "num_speculative_tokens": num_speculative_tokens})
        return f"vllm serve {base} --speculative-config {shlex.quote(spec)}"
    return f"vllm serve {shlex.quote(str(where))}"


def _drafting(report: dict[str, Any]) -> str:
    cfg = report.get("config", {})
    if report.get("engine"):
        return f"as a {report['engine']} server drafts"
    rule = report.get("acceptance_rule")
    rule = f", {rule} acceptance" if rule not in (None, "greedy") else ""
    if report.get("tree_size") and cfg.get("topk", 1) > 1:
        return f"trees of {report['tree_size']} tokens, top-{cfg.get('topk')}, {cfg.get('steps')} levels{rule}"
    return f"chains of {cfg.get('steps', '?')} draft tokens{rule}"


def _eval_section(report: dict[str, Any], steps: int) -> list[str]:
    cfg = report.get("config", {})
    low, high = report.get("tau_ci95", [float("nan")] * 2)
    lines = ["## Acceptance", "",
             f"Measured with `eagle3kit eval` (real speculative decoding, {_drafting(report)}, temperature "
             f"{cfg.get('temperature', '?')}{sampling_filters(cfg)}) on {report.get('prompts', '?')} prompts of "
             f"`{cfg.get('data_path', '?')}`, {report.get('device', '?')}, {report.get('dtype', '?')}:", "",
             "| acceptance length tau (95% CI) | speed-up over plain decoding | identical to greedy |",
             "| --- | --- | --- |"]
    speedup = f"{report['speedup']:.2f}x" if isinstance(report.get("speedup"), (int, float)) else "-"
    same = (f"{report['identical_to_greedy']}/{report.get('prompts')}" if "identical_to_greedy" in report else "-")
    lines += [f"| {report.get('tau', float('nan')):.2f} ({low:.2f}-{high:.2f}) | {speedup} | {same} |", ""]
    measured = measured_steps(report)
    if measured and measured != steps:
        lines += [f"These figures are for {measured} draft tokens per pass; the serve command above drafts "
                  f"{steps}.", ""]
    rates = report.get("acceptance_rate") or []
    if rates:
        lines += ["Acceptance at each draft position (given the previous ones): "
                  + ", ".join(f"{r:.2f}" for r in rates) + ".", ""]
    by_source = {k: v for k, v in (report.get("by_source") or {}).items() if v.get("tau") is not None}
    if by_source:
        lines += ["By source of the prompts: " + ", ".join(f"{name} {v['tau']:.2f} ({v['prompts']} prompts)"
                                                          for name, v in by_source.items()) + ".", ""]
    return lines


def model_card(servable: dict[str, Any], fmt: str, where: str, basepath: str | None, num_speculative_tokens: int,
               eval_report: dict[str, Any] | None = None) -> str:
    """The README.md of an export: ``servable`` is the SGLang/vLLM config of the draft."""
    meta = servable.get("eagle3kit", {})
    recorded = meta.get("target_model") or meta.get("draft_config", {}).get("target_model") or None
    name = basepath or recorded
    base_model = base_model_of(name) if name else None
    local = absolute_target(name) if name and Path(name).expanduser().is_dir() else None
    target = base_model or local or name or "the target model"
    about = f"`{target}`"
    if local:  # a base_model must be a Hub id: the folder is named here instead
        about = f"`{base_model}` (the local copy in `{local}`)" if base_model else f"the target model in `{local}`"
    front = ["---", f"base_model: {base_model}" if base_model else None,
             "tags:", "- eagle3", "- speculative-decoding", "- draft-model", f"- {fmt}", "- eagle3kit", "---"]
    rope = f"rope_theta {servable.get('rope_theta')}"
    if isinstance(servable.get("rope_scaling"), dict):
        rope += f", {servable['rope_scaling'].get('rope_type', servable['rope_scaling'].get('type'))} scaling"
    lines = [line for line in front if line is not None] + [
        "", f"# EAGLE-3 draft for {target}", "",
        f"A one-layer EAGLE-3 draft model for speculative decoding with {about}, in the {ENGINE[fmt]} "
        f"layout; exported by eagle3kit {__version__}.", "",
        "## Serve", "", "```bash",
        serve_hint(fmt, where, local or name, num_speculative_tokens, serving_tree(eval_report, num_speculative_tokens)),
        "```", "",
        "## Draft", "",
        "| hidden | heads (kv) | intermediate | vocabulary (draft) | feature layers (HF hidden_states) | max positions | rope |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {servable.get('hidden_size')} | {servable.get('num_attention_heads')} ({servable.get('num_key_value_heads')}) "
        f"| {servable.get('intermediate_size')} | {servable.get('vocab_size')} ({servable.get('draft_vocab_size')}) "
        f"| {servable.get('eagle_aux_hidden_state_layer_ids', 'engine default')} "
        f"| {servable.get('max_position_embeddings')} | {rope} |", "",
    ]
    trained = [f"{k.replace('_', ' ')}: `{meta[k]}`" for k in ("step", "ttt_length", "init_draft") if meta.get(k) is not None]
    if meta.get("chat_template_kwargs"):  # serve with the same (SGLang / vLLM: chat_template_kwargs per request)
        trained.append(f"chat template kwargs: `{json.dumps(meta['chat_template_kwargs'])}`, so send the same "
                       "`chat_template_kwargs` when serving")
    if trained:
        lines += ["## Training", "", f"Trained with eagle3kit ({', '.join(trained)}).", ""]
    if eval_report:
        lines += _eval_section(eval_report, num_speculative_tokens)
    return "\n".join(lines)
