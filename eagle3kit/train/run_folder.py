"""The run folder (``--savedir``): checkpoints ``step_N/`` (DeepSpeed state and the
servable ``draft/``), the ``latest`` and ``best`` pointers, the progress and RNG states
that make a resume exact, and each rank's summary in ``logs/``."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eagle3kit.atomic import atomic_write_text
from eagle3kit.checkpoint import WEIGHTS
from eagle3kit.errors import UserError
from eagle3kit.train.distributed import gather_objects

LATEST, BEST = "latest", "best"
#: in each checkpoint: the settings that fix which rows each rank trains on, in which order
DATA_ORDER = "data_order.json"
_OPTION = {"world_size": "ranks", "gradient_accumulation_steps": "gradient_accumulation_steps (DeepSpeed config)",
           "max_tokens": "--max-tokens", "max_len": "--max-len", "seed": "--seed", "trainpath": "--trainpath",
           "chat_template_kwargs": "--chat-template-kwargs", "trainpath_sha256": "the --trainpath file's sha256"}


def data_order(world: int, accumulation: int, max_tokens: int, max_len: int, seed: int, trainpath: str,
               chat_template_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a resumed run must share with the run it continues to train on the same rows
    in the same order (the position saved in :class:`Progress` counts micro-batches of this
    rank's shard)."""
    from eagle3kit.train.data import file_digest

    return {"world_size": world, "gradient_accumulation_steps": accumulation, "max_tokens": max_tokens,
            "max_len": max_len, "seed": seed, "trainpath": str(Path(trainpath).resolve()),
            "trainpath_sha256": file_digest(trainpath) if Path(trainpath).is_file() else None,
            "chat_template_kwargs": dict(chat_template_kwargs or {})}


def check_data_order(checkpoint: Path, now: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` with settings that would train on other rows than
    the interrupted run (another number of ranks, packing, seed or data file): the saved
    position would point into a different sequence of micro-batches."""
    path = checkpoint / DATA_ORDER
    if not path.is_file():  # a checkpoint from before this record was kept
        return
    saved = json.loads(path.read_text())
    def show(key: str, value: Any) -> Any:
        return f"{value[:12]}..." if key.endswith("sha256") and isinstance(value, str) else value

    changed = [f"{_OPTION.get(key, key)} {show(key, saved[key])} (now {show(key, value)})" for key, value in now.items()
               if key in saved and saved[key] != value]
    if changed:
        raise UserError(f"--resume: {checkpoint} was trained with " + ", ".join(changed) + "; an exact resume needs "
                        "the same, so run it as it was started (see train_config.json beside it), or carry its weights "
                        f"on with a fresh optimizer and data order: --init-draft {checkpoint} --savedir NEW_DIR")


def schedule_change(checkpoint: Path, now: dict[str, Any]) -> str | None:
    """What a resumed run changes in the learning-rate schedule (``now``: total steps,
    warm-up steps, peak rate), as a sentence; None if nothing. Not refused: raising
    ``--max-steps`` or ``--num-epochs`` to train on is legitimate, but the rate from the
    resumed step on then follows the new schedule."""
    path = checkpoint / DATA_ORDER
    saved = json.loads(path.read_text()).get("schedule") if path.is_file() else None
    if not saved or saved == now:
        return None
    was = ", ".join(f"{k.replace('_', ' ')} {saved.get(k)}" for k in now)
    new = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in now.items())
    return (f"--resume: the learning-rate schedule of {checkpoint} was {was}; now {new} (from --max-steps, "
            "--num-epochs, --lr or --warmup-ratio): the rate from here on follows the new schedule")


def resumed_record(savedir: Path, tag: str) -> dict[str, Any]:
    """What the checkpoint ``savedir/tag`` records of its draft (``config.json``'s
    ``eagle3kit`` entry: ``draft_config``, ``init_draft``, ...). UserError naming what to do
    when the checkpoint is gone or damaged."""
    checkpoint = savedir / tag
    fix = resume_elsewhere(savedir, tag)
    if not checkpoint.is_dir():
        raise UserError(f"--resume: {savedir / LATEST} points at {tag}, which is not there{fix}")
    try:
        config = json.loads((checkpoint / "draft" / "config.json").read_text(encoding="utf-8"))
        record = config["eagle3kit"]
        record["draft_config"]["aux_layers"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"--resume: the checkpoint {checkpoint} is damaged ({checkpoint / 'draft' / 'config.json'}: "
                        f"{type(error).__name__}: {error}){fix}") from None
    return record


def step_folders(savedir: Path) -> list[Path]:
    """The checkpoint folders ``step_N`` of a run, oldest first."""
    steps = [p for p in savedir.glob("step_*") if p.is_dir() and p.name[len("step_"):].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[len("step_"):]))


def resume_elsewhere(savedir: Path, tag: str) -> str:
    """What to add to a message about the checkpoint ``tag`` that cannot be resumed: the
    command pointing ``latest`` at the newest other one, or that there is none."""
    earlier = [p.name for p in step_folders(savedir) if p.name != tag]
    if earlier:
        return f"; resume from an earlier one: ln -sfn {earlier[-1]} {savedir / LATEST}"
    return "; nothing earlier is left: start again without --resume in another --savedir"


def resolve_pointer(savedir: Path, name: str) -> str | None:
    """The tag (``step_N``) that ``savedir/name`` points at: a symlink, or a file holding it."""
    p = savedir / name
    if p.is_symlink():
        return os.readlink(p).rstrip("/").split("/")[-1]
    if p.is_file():
        return p.read_text().strip() or None
    return None


def point(savedir: Path, name: str, tag: str) -> None:
    """Make ``savedir/name`` a symlink to ``tag``, atomically."""
    tmp = savedir / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(tag, tmp)
    os.replace(tmp, savedir / name)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Progress:
    """Where training is: saved in every checkpoint, so a resume continues exactly."""

    epoch: int = 0
    micro: int = 0  # next micro-batch of this rank's shard in this epoch
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on by this rank
    best_tau: float = -1.0
    best_tag: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    rows_digest: str = ""  # running digest of the rows this rank trained on


def check_resumed_vocab(draft_dir: Path, draft_ids: torch.Tensor, savedir: Path) -> None:
    """Refuse to resume a checkpoint whose draft vocabulary is not the one this run chose."""
    from safetensors import safe_open

    path = draft_dir / WEIGHTS
    if not path.is_file():
        return
    try:
        with safe_open(str(path), "pt") as f:
            saved = f.get_tensor("d2t").long() if "d2t" in f.keys() else None
    except Exception as error:  # noqa: BLE001 - a damaged file: the user's to fix
        raise UserError(f"--resume: {path} cannot be read ({error}): the checkpoint {draft_dir.parent} is damaged"
                        f"{resume_elsewhere(savedir, draft_dir.parent.name)}") from None
    if saved is not None and not torch.equal(saved + torch.arange(len(saved)), draft_ids.long()):
        sizes = (f"{len(saved):,} tokens, this run's {len(draft_ids):,}" if len(saved) != len(draft_ids) else
                 f"other token ids, {len(saved):,} in both")
        raise UserError(f"--resume: the checkpoint {draft_dir.parent} has another draft vocabulary than this run would "
                        f"use ({sizes}); resume with the options it was started "
                        f"with (--draft-vocab-size, --init-draft, the same data: see {savedir / 'train_config.json'})")


def gather_rng(device: torch.device):
    """Every rank's RNG state (each rank restores its own on resume)."""
    return gather_objects(rng_state())


def prune(savedir: Path, keep_last: int, best: str | None) -> None:
    """Remove checkpoints but the ``best`` and the newest ``keep_last`` besides it."""
    others = [p for p in step_folders(savedir) if p.name != best]
    for p in others[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def param_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def write_rank_summary(savedir: Path, rank: int, world: int, progress: Progress, engine) -> dict[str, Any]:
    """``savedir/logs/rank{r}.json``: what this rank trained on and where it ended."""
    summary = {
        "rank": rank,
        "world_size": world,
        "step": progress.step,
        "epoch": progress.epoch,
        "tokens": progress.tokens,
        "rows_digest": progress.rows_digest,
        "param_digest": param_digest(engine.module.draft),
        "best_tau_sim": progress.best_tau,
        "best": progress.best_tag,
        "latest": resolve_pointer(savedir, LATEST),
        "history": progress.history,
    }
    (savedir / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(savedir / "logs" / f"rank{rank}.json", json.dumps(summary, indent=2) + "\n")
    return summary
