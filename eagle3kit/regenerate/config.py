"""The settings of a run (:class:`RegenConfig`) and the files beside its output."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RegenConfig:
    basepath: str
    input_path: str
    out_path: str
    server: str | None = None
    server_model: str | None = None
    api_key: str | None = None
    concurrency: int = 64
    retries: int = 3
    timeout: float = 600.0
    batch_size: int = 32
    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    limit: int | None = None
    system_prompt: str | None = None  # "" removes every system message
    reasoning: str = "drop"  # keep | drop
    chat_template_kwargs: dict | None = None  # template variables, e.g. {"enable_thinking": False}
    resume: bool = False
    overwrite: bool = False
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    # not on the command line
    device: str | None = None  # in-process backend; default cuda when available, else cpu
    backoff_base: float = 1.0  # seconds before the first retry; doubles per retry (0: no waiting)
    backoff_max: float = 60.0
    #: Abort when this many records in a row fail for transient reasons (server down). 0: max(32, 2 * concurrency).
    max_consecutive_failures: int = 0


def ignored_options(cfg: RegenConfig) -> str | None:
    """A warning naming the options given (set away from their defaults) that this run's
    backend does not use, or None."""
    default = RegenConfig("", "", "")
    if cfg.server:
        given = [name for name, on in (("--batch-size", cfg.batch_size != default.batch_size),
                                       ("--dtype", cfg.dtype != default.dtype)) if on]
        where, why = "without --server (in process)", ""
    else:
        given = [name for name, on in (
            ("--model", cfg.server_model), ("--api-key", cfg.api_key and cfg.api_key != os.environ.get("OPENAI_API_KEY")),
            ("--concurrency", cfg.concurrency != default.concurrency), ("--retries", cfg.retries != default.retries),
            ("--timeout", cfg.timeout != default.timeout)) if on]
        where, why = "with --server", "; in process, the model that answers is --basepath" if cfg.server_model else ""
    if not given:
        return None
    one = len(given) == 1
    return (f"{', '.join(given)} only appl{'ies' if one else 'y'} {where}, so {'it is' if one else 'they are'} "
            f"ignored{why}")


def _stem(out: Path) -> str:
    for suffix in (".jsonl", ".json"):
        if out.name.endswith(suffix) and len(out.name) > len(suffix):
            return out.name[: -len(suffix)]
    return out.name


def manifest_path(out: str | Path) -> Path:
    """``regen.jsonl`` -> ``regen.manifest.json``."""
    out = Path(out)
    return out.with_name(_stem(out) + ".manifest.json")


def work_path(out: str | Path) -> Path:
    """``regen.jsonl`` -> ``regen.partial.jsonl`` (the resumable work file)."""
    out = Path(out)
    return out.with_name(_stem(out) + ".partial.jsonl")
