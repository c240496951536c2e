"""Ranks of a training run stop together: a failure on one rank (a bad file, a full disk)
reaches every other rank as a message naming it, instead of leaving them waiting at the
next collective. Two real gloo processes."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

SCENARIOS = ("rank 0 fails", "rank 1 fails", "both succeed", "rank 0 only", "rank 0 only fails")


def _worker(rank: int, init_file: str, results) -> None:
    import torch

    from eagle3kit.errors import UserError
    from eagle3kit.train.distributed import rank0_first

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=60))
    for scenario in SCENARIOS:
        ran = []

        def fn():
            ran.append(rank)
            if (scenario.startswith("rank 0") and scenario.endswith("fails") and rank == 0) or \
                    (scenario == "rank 1 fails" and rank == 1):
                raise UserError(f"{scenario}: cannot read train.jsonl")
            return rank * 10

        try:
            outcome = ("ok", rank0_first(rank, fn, others="only" not in scenario))
        except UserError as error:
            outcome = ("error", str(error))
        results.put((scenario, rank, outcome, ran))
    torch.distributed.destroy_process_group()


def _on_two_ranks(worker, tmp_path, results_per_rank: int) -> list:
    """Run ``worker(rank, init_file, queue)`` in two spawned processes; return what they put."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, str(tmp_path / "init"), results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(2 * results_per_rank)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_every_rank_stops_with_the_failing_rank_s_message(tmp_path):
    got = {(scenario, rank): (outcome, ran)
           for scenario, rank, outcome, ran in _on_two_ranks(_worker, tmp_path, len(SCENARIOS))}
    # rank 0 fails in its turn: rank 1 never runs its own and stops with rank 0's message
    assert got["rank 0 fails", 0] == (("error", "rank 0 fails: cannot read train.jsonl"), [0])
    assert got["rank 0 fails", 1] == (("error", "rank 0 stopped the run: rank 0 fails: cannot read train.jsonl"), [])
    # rank 1 fails after rank 0 succeeded: rank 0 does not go on alone
    assert got["rank 1 fails", 0] == (("error", "rank 1 stopped the run: rank 1 fails: cannot read train.jsonl"), [0])
    assert got["rank 1 fails", 1] == (("error", "rank 1 fails: cannot read train.jsonl"), [1])
    assert got["both succeed", 0] == (("ok", 0), [0]) and got["both succeed", 1] == (("ok", 10), [1])
    assert got["rank 0 only", 0] == (("ok", 0), [0]) and got["rank 0 only", 1] == (("ok", None), [])
    assert got["rank 0 only fails", 1] == (("error", "rank 0 stopped the run: rank 0 only fails: cannot read "
                                                     "train.jsonl"), [])


def _slow_rank0(rank: int, init_file: str, results) -> None:
    import time

    import torch

    from eagle3kit.train.distributed import rank0_first

    # a default timeout far shorter than rank 0's work (tokenising a large data set alone)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=2))
    try:
        results.put((rank, "ok", rank0_first(rank, lambda: time.sleep(6) or rank if rank == 0 else rank)))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put((rank, "error", f"{type(error).__name__}: {error}"))
    torch.distributed.destroy_process_group()


def test_the_other_ranks_wait_for_rank_0_past_the_default_timeout(tmp_path):
    got = {rank: (status, value) for rank, status, value in _on_two_ranks(_slow_rank0, tmp_path, 1)}
    assert got == {0: ("ok", 0), 1: ("ok", 1)}


def test_the_cpu_op_build_is_announced_only_when_not_cached(tmp_path, monkeypatch):
    from eagle3kit.train import distributed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert distributed._extensions_dir() == tmp_path and not distributed._cpu_op_built()
    built = tmp_path / "py311_cpu" / "deepspeed_shm_comm"
    built.mkdir(parents=True)
    (built / "shm.o").write_bytes(b"")  # a build that stopped half-way is not a build
    assert not distributed._cpu_op_built()
    (built / "deepspeed_shm_comm.so").write_bytes(b"")
    assert distributed._cpu_op_built()
