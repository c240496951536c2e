"""Processes of a training run: one per GPU (the ``deepspeed`` launcher, or ``torchrun``),
or a single one without a launcher; nccl on GPU, gloo on CPU."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

from eagle3kit.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Start torch.distributed through DeepSpeed (nccl on GPU, gloo on CPU)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.distributed.is_initialized():
        # on CPU DeepSpeed loads (the first time: builds) its shared-memory op and prints
        # "... built successfully" on stdout, where the commands' output goes
        if not torch.cuda.is_available() and int(os.environ.get("LOCAL_RANK", "0")) == 0 and not _cpu_op_built():
            print("DeepSpeed builds its CPU communication op once (about 2.5 minutes on 2 cores; cached in "
                  f"{_extensions_dir()})", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, local, device


def _extensions_dir() -> Path:
    """Where torch keeps the extensions it builds (DeepSpeed's CPU ops among them)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")


def _cpu_op_built() -> bool:
    return any(_extensions_dir().glob("*/deepspeed_shm_comm*/*.so"))


def all_reduce_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        x = t.to(device)
        torch.distributed.all_reduce(x)
        return x.cpu()
    return t.cpu()


def gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without other ranks)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return [obj]
    every: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, obj, group=group)
    return every


_patient = None


def patient_group():
    """A gloo group of every rank whose collectives wait ``EAGLE3KIT_WAIT_HOURS`` (6): the
    ranks agree in it after work one rank does alone (tokenising a large data set, mixing
    and downloading the default sources), which can outlast the default group's timeout
    (DeepSpeed's 10 minutes). Made on first use, by every rank in the same order; None
    without other ranks."""
    global _patient
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return None
    if _patient is None:
        hours = float(os.environ.get("EAGLE3KIT_WAIT_HOURS", "6"))
        _patient = torch.distributed.new_group(backend="gloo", timeout=timedelta(hours=hours))
    return _patient


def _failures(error: Exception | None) -> list[str | None]:
    """Every rank's failure message (None: it succeeded), on every rank: a collective, so
    it is also a barrier."""
    return gather_objects(None if error is None else (str(error) or type(error).__name__), patient_group())


def _agree(error: Exception | None) -> None:
    """Raise on every rank if any rank failed: its own error where it failed, elsewhere a
    message naming the rank that failed and why."""
    failures = _failures(error)
    if error is not None:
        raise error
    for other, message in enumerate(failures):
        if message is not None:
            raise UserError(f"rank {other} stopped the run: {message}")


def rank0_first(rank: int, fn: Callable[[], Any], others: bool = True) -> Any:
    """``fn()`` on rank 0, then on the other ranks (which find its caches and downloads);
    with ``others=False`` on rank 0 only (the others get None).

    A failure anywhere stops every rank: after each turn the ranks share what failed, so a
    bad file on rank 0 stops the others with its message instead of leaving them waiting
    at the next collective."""
    result = None
    for turn in (0, 1) if others else (0,):
        error = None
        if (rank == 0) == (turn == 0):
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - raised by _agree, once every rank knows
                error = exc
        _agree(error)
    return result
