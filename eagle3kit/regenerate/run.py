""":func:`run_regenerate`: the run from the input to the output and its manifest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from eagle3kit import __version__
from eagle3kit.atomic import atomic_write_text, remove_quietly, replacing
from eagle3kit.errors import UserError
from eagle3kit.regenerate.config import RegenConfig, ignored_options, manifest_path, work_path
from eagle3kit.regenerate.hf import HFBackend
from eagle3kit.regenerate.recorder import Recorder
from eagle3kit.regenerate.records import Item, read_items, regenerated_record
from eagle3kit.regenerate.resume import _resume_state
from eagle3kit.regenerate.server import ServerBackend
from eagle3kit.regenerate.worklog import WORK_FORMAT, WorkLog, _settings
from eagle3kit.ui import UI

#: Failures printed at the end (all of them are in the manifest).
SHOWN_FAILURES = 5


def _write_output(out: Path, items: Sequence[Item]) -> None:
    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            if it.complete:
                f.write(json.dumps(regenerated_record(it), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rate(n: float, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def _make_backend(cfg: RegenConfig, ui: UI) -> "HFBackend | ServerBackend":
    return ServerBackend(cfg, ui) if cfg.server else HFBackend(cfg, ui)


def run_regenerate(cfg: RegenConfig, ui: UI | None = None) -> dict[str, Any]:
    """Regenerate ``cfg.input_path`` into ``cfg.out_path``; returns the manifest (also
    written beside the output)."""
    ui = ui or UI()
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues, --overwrite starts again")
    if cfg.reasoning not in ("keep", "drop"):
        raise UserError(f"--reasoning must be keep or drop, not {cfg.reasoning!r}")
    if cfg.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise UserError(f"--dtype must be auto, bfloat16, float16 or float32, not {cfg.dtype!r}")
    warning = ignored_options(cfg)
    if warning:
        ui.warn(warning)
    out = Path(cfg.out_path)
    work, manifest_file = work_path(out), manifest_path(out)
    if out.exists() and Path(cfg.input_path).exists() and out.resolve() == Path(cfg.input_path).resolve():
        raise UserError("--out is the --input file; write the regenerated data somewhere else")
    if not cfg.resume and not cfg.overwrite:
        existing = [str(p) for p in (out, work) if p.exists()]
        if existing:
            raise UserError(f"{' and '.join(existing)} already exist{'s' * (len(existing) == 1)}: pass --resume to "
                            "continue (records already done are skipped) or --overwrite to start again")
    items = read_items(cfg, ui)
    if not items:
        raise UserError(f"--input {cfg.input_path}: no conversation to regenerate"
                        f"{' (--limit 0)' if cfg.limit == 0 else ''}; give the train split a mix wrote")
    out.parent.mkdir(parents=True, exist_ok=True)

    header, keep = None, None
    if cfg.resume:
        header, keep = _resume_state(cfg, items, out, work, ui)
    settings = _settings(cfg)
    log = WorkLog(work, {"format": WORK_FORMAT, "settings": settings, "input": str(cfg.input_path),
                         "eagle3kit_version": __version__}, None if cfg.overwrite else keep, header is not None)

    skipped = [it for it in items if not it.turns]
    pending = [it for it in items if it.turns and not it.complete]
    remaining_answers = sum(len(it.turns) - len(it.answers) for it in pending)
    backend = None
    load_start = time.time()
    try:
        if pending:
            backend = _make_backend(cfg, ui)
    except BaseException:
        log.close()
        if log.created:
            remove_quietly(work)
        raise
    load_s = time.time() - load_start
    if cfg.overwrite:  # the old output goes once the new run is under way (not when the model fails to load)
        remove_quietly(out)
        remove_quietly(manifest_file)

    gen_start = time.time()
    recorder = Recorder(log, None, cfg.max_consecutive_failures or max(32, 2 * cfg.concurrency))
    try:
        if pending:
            before = len(items) - len(pending) - len(skipped)
            ui.log(f"{len(items)} records: {len(pending)} to regenerate ({remaining_answers} answers)"
                   + (f", {before} done before" if before else "")
                   + (f", {len(skipped)} without an assistant turn (skipped)" if skipped else "")
                   + f"; backend {backend.name}")
            with ui.progress("regenerating", total=remaining_answers) as task:
                recorder.task = task
                backend.run(pending, recorder)
    except KeyboardInterrupt:
        ui.warn(f"interrupted: the answers finished so far are kept in {work}; re-run with --resume to continue")
        raise
    finally:
        log.close()
    gen_s = time.time() - gen_start

    regenerated = [it for it in items if it.complete]
    failed = [it for it in items if it.turns and not it.complete]
    for it in failed:
        if it.failure is None:  # cannot happen when the backend finished
            it.failure = (len(it.answers), "not generated")
    answers = [a for it in regenerated for a in it.answers]
    _write_output(out, items)

    failures = [{"id": it.id, "turn": it.failure[0], "reason": it.failure[1]} for it in failed]
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    if isinstance(backend, ServerBackend):
        model = backend.model
    else:
        model = cfg.server_model or cfg.basepath if cfg.server else cfg.basepath
    manifest = {
        "eagle3kit_version": __version__,
        "command": "regenerate",
        "input": str(cfg.input_path),
        "output": str(out),
        "backend": backend.name if backend else ("server" if cfg.server else "transformers"),
        "model": model,
        **(backend.description if backend else {}),
        "settings": settings,
        "read": len(items),
        "regenerated": len(regenerated),
        "failed": len(failed),
        "skipped": len(skipped),
        "done_before": sum(it.done_before for it in items),
        "answers": len(answers),
        "truncated_answers": sum(a.truncated for a in answers),
        "empty_answers": sum(not a.text for a in answers),
        "conversations_per_s": _rate(recorder.conversations, gen_s) if recorder.answers else None,
        "tokens_per_s": _rate(recorder.tokens, gen_s) if recorder.answers and recorder.tokens is not None else None,
        "this_run": {"conversations": recorder.conversations, "answers": recorder.answers,
                     "generated_tokens": recorder.tokens, "truncated_answers": recorder.truncated,
                     "failed": recorder.failed, "load_s": round(load_s, 3), "generation_s": round(gen_s, 3)},
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "failures": failures,
    }
    assert manifest["read"] == manifest["regenerated"] + manifest["failed"] + manifest["skipped"]
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    remove_quietly(work)

    for f in failures[:SHOWN_FAILURES]:
        ui.warn(f"record {f['id']!r} failed at assistant turn {f['turn']}: {f['reason']}")
    if len(failures) > SHOWN_FAILURES:
        ui.warn(f"... and {len(failures) - SHOWN_FAILURES} more failures (all of them in {manifest_file})")
    ui.log(f"read {manifest['read']}: regenerated {manifest['regenerated']}"
           + (f" ({manifest['done_before']} of them before this run)" if manifest["done_before"] else "")
           + f", failed {manifest['failed']}, skipped {manifest['skipped']} (no assistant turn)")
    ui.log(f"answers {manifest['answers']}: {manifest['truncated_answers']} truncated at --max-new-tokens "
           f"{cfg.max_new_tokens}, {manifest['empty_answers']} empty")
    if recorder.answers:
        tps = manifest["tokens_per_s"]
        ui.log(f"this run: {recorder.conversations} conversations, {recorder.answers} answers in {gen_s:.1f} s: "
               f"{manifest['conversations_per_s']} conversations/s, "
               + (f"{tps} tokens/s" if tps is not None else "tokens/s unknown (the server reported no usage)"))
    plural = "s" * (len(failed) > 1)
    if failed and recorder.retryable:
        ui.log(f"re-run with --resume to retry the {len(failed)} failed record{plural}")
    elif failed:
        ui.log(f"{len(failed)} record{plural} failed for the reasons above, which a retry meets again: --resume "
               "retries failed records once their cause is fixed")
    ui.log(f"wrote {out} and {manifest_file}")
    if failed and not regenerated:
        raise UserError(f"no record was regenerated: all {len(failed)} failed (first: {failures[0]['reason']}); "
                        f"every reason is in {manifest_file}")
    return manifest
