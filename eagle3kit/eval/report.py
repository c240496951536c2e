"""What ``eagle3kit eval`` reports: tau with a bootstrap interval over prompts, acceptance
per draft position, the table and the JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Sequence

from eagle3kit.ui import UI

if TYPE_CHECKING:
    from eagle3kit.eval.decode import Decoded
    from eagle3kit.eval.run import EvalConfig


def bootstrap_interval(produced: Sequence[int], passes: Sequence[int], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% interval of sum(produced)/sum(passes), resampling the prompts that made a
    verification pass (one that ended at its first token says nothing of the draft, and a
    resample of only such prompts would have no ratio at all)."""
    import numpy as np

    produced, passes = np.asarray(produced, float), np.asarray(passes, float)
    produced, passes = produced[passes > 0], passes[passes > 0]
    if not len(passes):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(produced), size=(rounds, len(produced)))
    ratios = produced[idx].sum(1) / passes[idx].sum(1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def summarize(results: list[Decoded], steps: int) -> dict[str, Any]:
    """tau, its interval, and acceptance per draft position."""
    produced = [sum(r.produced) for r in results]
    passes = [r.passes for r in results]
    total_passes = sum(passes)
    tau = sum(produced) / total_passes if total_passes else float("nan")
    low, high = bootstrap_interval(produced, passes) if total_passes else (float("nan"), float("nan"))
    all_accepted = [a for r in results for a in r.accepted]
    reached = [sum(1 for a in all_accepted if a >= i) for i in range(steps + 1)]
    conditional = [reached[i + 1] / reached[i] if reached[i] else float("nan") for i in range(steps)]
    unconditional = [reached[i + 1] / len(all_accepted) if all_accepted else float("nan") for i in range(steps)]
    return {"tau": tau, "tau_ci95": [low, high], "passes": total_passes, "tokens": sum(len(r.tokens) for r in results),
            "acceptance_rate": conditional, "acceptance_reached": unconditional}


def source_of(record_id: str) -> str | None:
    """The source a mixed record came from: ``eagle3kit mix`` names records ``SOURCE_ROW``
    (``None`` for ids of another form)."""
    source, sep, row = str(record_id).rpartition("_")
    return source if sep and source and row.isdigit() else None


def breakdown(origins: Sequence[tuple[str, int]], produced: Sequence[int], passes: Sequence[int]) -> dict[str, Any]:
    """Per-prompt figures (record id, human turn, tokens produced, verification passes, tau)
    and, when the prompts come from two or more sources, tau per source with its interval:
    where the draft needs more (or other) training data."""
    rows = [{"id": rid, "turn": turn, "produced": p, "passes": n, "tau": p / n if n else None}
            for (rid, turn), p, n in zip(origins, produced, passes)]
    groups: dict[str, list[int]] = {}
    for i, (rid, _) in enumerate(origins):
        source = source_of(rid)
        if source is None:
            return {"per_prompt": rows}
        groups.setdefault(source, []).append(i)
    out: dict[str, Any] = {"per_prompt": rows}
    if len(groups) >= 2:
        out["by_source"] = {}
        for source, idx in sorted(groups.items()):
            p, n = [produced[i] for i in idx], [passes[i] for i in idx]
            out["by_source"][source] = {"prompts": len(idx), "tau": sum(p) / sum(n) if sum(n) else None,
                                        "tau_ci95": list(bootstrap_interval(p, n)) if sum(n) else None}
    return out


def finish(ui: UI, report: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Add the configuration to ``report``, print it, write it to ``--json``; return it."""
    report["config"] = asdict(cfg)
    print_report(ui, report, cfg)
    if cfg.json_path:
        from eagle3kit.atomic import atomic_write_text

        atomic_write_text(cfg.json_path, json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    return report


def _json_safe(value: Any) -> Any:
    """``value`` with NaN (a draft position no pass reached) as null: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def active_filters(cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampling filters a run used (``top_k``, ``top_p``), those that are on and only
    when it samples (temperature > 0)."""
    if not cfg.get("temperature"):
        return {}
    return {key: cfg[key] for key, off in (("top_k", 0), ("top_p", 1.0)) if cfg.get(key, off) != off}


def sampling_filters(cfg: dict[str, Any]) -> str:
    """", top-k K, top-p P" for :func:`active_filters` ("" when there are none)."""
    return "".join(f", {key.replace('_', '-')} {value}" for key, value in active_filters(cfg).items())


def print_report(ui: UI, report: dict[str, Any], cfg: EvalConfig) -> None:
    from rich.table import Table

    low, high = report["tau_ci95"]
    if report.get("engine"):
        how = f"as the {report['engine']} server at {report['server']} drafts"
    elif report.get("tree_size") and cfg.topk > 1:
        how = f"trees of {report['tree_size']} tokens (top-{cfg.topk}, {cfg.steps} levels)"
    else:
        how = f"{cfg.steps} draft tokens per pass"
    rule = f" ({report['acceptance_rule']} acceptance)" if report.get("acceptance_rule") not in (None, "greedy") else ""
    table = Table(title=f"eagle3kit eval: {report['prompts']} prompts, {how}, temperature {cfg.temperature}"
                        f"{sampling_filters(asdict(cfg))}{rule}")
    table.add_column("draft position", justify="right")
    table.add_column("acceptance rate (given the previous)", justify="right")
    table.add_column("reached", justify="right")
    for i, (c, u) in enumerate(zip(report["acceptance_rate"], report["acceptance_reached"]), 1):
        table.add_row(str(i), f"{c:.3f}" if c == c else "-", f"{u:.3f}" if u == u else "-")
    caption = f"acceptance length tau {report['tau']:.3f} (95% CI {low:.3f}-{high:.3f})"
    if "speedup" in report:
        caption += (f"; speed-up {report['speedup']:.2f}x ({report['spec_tokens_per_s']:.1f} vs "
                    f"{report['baseline_tokens_per_s']:.1f} tokens/s)")
    if "identical_to_greedy" in report:
        caption += f"; identical to greedy: {report['identical_to_greedy']}/{report['prompts']}"
    if report.get("acceptance_rule") == "rejection":
        caption += ("; SGLang and vLLM verify sampled drafts by the target-only rule, which accepts less: "
                    "--acceptance target-only measures that")
    table.caption = caption
    ui.table(table)
    if report.get("by_source"):
        sources = Table(title="acceptance length by source (from the record ids)")
        for name in ("source", "prompts", "tau", "95% CI"):
            sources.add_column(name, justify="left" if name == "source" else "right")
        for name, s in report["by_source"].items():
            ci = s["tau_ci95"]
            sources.add_row(name, str(s["prompts"]), f"{s['tau']:.3f}" if s["tau"] is not None else "-",
                            f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-")
        ui.table(sources)
