""":func:`check_draft`: every problem of a draft folder, for one engine or for SGLang and vLLM together."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from eagle3kit.errors import UserError
from eagle3kit.export.check_config import _config_problems, _target_problems
from eagle3kit.export.check_weights import _key_problems, _numeric_problems
from eagle3kit.export.folder import ENGINE, FORMATS, DraftFolder, _sizes, read_folder, read_target_config
from eagle3kit.export.problem import Problem, _error, _warning


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
