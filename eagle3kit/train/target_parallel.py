"""A target too large for one GPU, split over a tensor-parallel group (``--target-tp N``).

The ranks form groups of N neighbours (one node: the launcher numbers a node's ranks in a
row). Each group loads the target once, split with transformers' tensor-parallel plan
(``from_pretrained(tp_plan="auto")``: attention heads and MLP columns divided, outputs
gathered), so a rank holds 1/N of its weights. The draft is trained as before: every rank
has its own micro-batch and its own data shard, and DeepSpeed averages the draft's
gradients over all ranks. Only the target's forward pass is collective: the ranks of a
group run it on each member's micro-batch in turn (sent from that member), and each keeps
the outputs of its own. N passes at 1/N of the work each: the same target compute per
rank as without splitting, in 1/N of the memory.
"""

from __future__ import annotations

from typing import Any

import torch

from eagle3kit.errors import UserError
from eagle3kit.train.attention import PackedMask
from eagle3kit.train.packing import MicroBatch
from eagle3kit.train.ttt import TargetOutputs


def tensor_parallel_mesh(world: int, tp: int, device: torch.device):
    """The (data, tensor) device mesh of ``world`` ranks in groups of ``tp``: what
    transformers splits the target over (its ``"tp"`` dimension)."""
    from torch.distributed.device_mesh import init_device_mesh

    if tp < 1 or world % tp:
        raise UserError(f"--target-tp {tp}: the {world} rank(s) must split into groups of {tp}; "
                        "launch a multiple of it (deepspeed --num_gpus)")
    return init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp", "tp"))


def _tp(mesh):
    return mesh["tp"] if mesh.mesh_dim_names and len(mesh.mesh_dim_names) > 1 else mesh


def split_kwargs(mesh) -> dict[str, Any]:
    """``from_pretrained`` arguments that split a model over ``mesh``'s ``"tp"`` ranks.

    Newer transformers take a ``DistributedConfig`` and build their own mesh over every
    process; older ones take ``tp_plan`` and the mesh. :func:`check_split` verifies the
    split that resulted."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:  # transformers needs it to load a split model
        raise UserError("--target-tp needs the accelerate package: pip install accelerate")
    tp, world = _tp(mesh).size(), torch.distributed.get_world_size()
    try:
        from transformers import DistributedConfig
    except ImportError:
        DistributedConfig = None
    if DistributedConfig is not None and tp == world:
        try:
            return {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=tp)}
        except TypeError:  # an older DistributedConfig (expert parallelism only)
            pass
    return {"tp_plan": "auto", "device_mesh": mesh}


def check_split(model, mesh) -> None:
    """Refuse a model split otherwise than ``mesh``'s tensor-parallel groups say (a
    transformers version that ignores the mesh splits over every process)."""
    want = torch.distributed.get_process_group_ranks(_tp(mesh).get_group())
    for p in model.parameters():
        if hasattr(p, "device_mesh"):
            got = sorted(int(r) for r in p.device_mesh.mesh.flatten().tolist())
            if got != sorted(want):
                raise UserError(f"--target-tp {len(want)}: this transformers version split the target over ranks "
                                f"{got}, not over groups of {len(want)}; use --target-tp "
                                f"{torch.distributed.get_world_size()} (all processes) with it")
            return
    raise UserError("--target-tp: the target was loaded whole (its model has no tensor-parallel plan in this "
                    "transformers version); run without --target-tp")


class GroupTarget:
    """Runs a tensor-parallel target for every member of its group in turn.

    ``target`` is a :class:`~eagle3kit.train.target.FrozenTarget` over the split model;
    :meth:`run` is called by every rank of the group with its own micro-batch (``None``
    when it has none this turn: evaluation shards can be uneven) and returns the outputs
    of that micro-batch."""

    def __init__(self, target, mesh, backend: str) -> None:
        self.target = target
        self.group = _tp(mesh).get_group()
        self.members = torch.distributed.get_process_group_ranks(self.group)
        self.rank = torch.distributed.get_rank()
        self.backend = backend
        self.device = target.device

    def _send(self, t: torch.Tensor | None, src: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        x = t.to(self.device, dtype) if self.rank == src else torch.empty(n, dtype=dtype, device=self.device)
        torch.distributed.broadcast(x, src, group=self.group)
        return x

    def run(self, mb: MicroBatch | None, **kwargs: Any) -> TargetOutputs | None:
        mine = None
        for src in self.members:
            size = torch.tensor([mb.input_ids.numel() if (self.rank == src and mb is not None) else 0],
                                device=self.device)
            torch.distributed.broadcast(size, src, group=self.group)
            n = int(size)
            if n == 0:  # that member has no micro-batch this turn
                continue
            own = self.rank == src
            ids = self._send(mb.input_ids if own else None, src, n, torch.long)
            pos = self._send(mb.position_ids if own else None, src, n, torch.long)
            doc = self._send(mb.doc_ids if own else None, src, n, torch.long)
            mask = self._send(mb.loss_mask if own else None, src, n, torch.uint8).bool()
            out = self.target.run(ids, pos, doc, PackedMask.build(doc, self.backend), loss_mask=mask, **kwargs)
            if own:
                mine = out
        return mine


def turns(count: int, device: torch.device, group=None) -> int:
    """The most micro-batches any rank of ``group`` has: how many collective turns all
    of them take (a rank with fewer passes ``None`` for the rest)."""
    x = torch.tensor([count], device=device)
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX, group=group)
    return int(x)
