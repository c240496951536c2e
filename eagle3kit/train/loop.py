"""The training recipe: the draft under a DeepSpeed engine, the frozen target beside it,
evaluation, checkpoints and exact resume. ``eagle3kit train`` calls :func:`train`.

Each rank trains on its own shard of the packed micro-batches; DeepSpeed averages
gradients. The frozen target lives outside the engine, on every rank. The parts it
drives live beside it: :mod:`~eagle3kit.train.distributed` (processes),
:mod:`~eagle3kit.train.ds_config` (DeepSpeed configuration and schedule),
:mod:`~eagle3kit.train.run_folder` (checkpoints, pointers, resume state) and
:mod:`~eagle3kit.train.report` (wandb / tensorboard, the final table).
"""

from __future__ import annotations

import faulthandler
import hashlib
import importlib.util
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eagle3kit import __version__
from eagle3kit.atomic import atomic_write_text
from eagle3kit.checkpoint import load_draft, save_draft
from eagle3kit.errors import UserError, first_line
from eagle3kit.hub import absolute_target, hub_kwargs, unreachable_note
from eagle3kit.train.attention import TARGET_FLEX, PackedMask, default_backend
from eagle3kit.train.data import TokenizedData, load_tokenized
from eagle3kit.train.distributed import all_reduce_sum, gather_objects, init_distributed, rank0_first
from eagle3kit.train.draft import DraftConfig, Eagle3Draft, unservable_aux_layers
from eagle3kit.train.ds_config import ds_config_warnings, load_ds_config, lr_lambda
from eagle3kit.train.packing import MicroBatch, make_micro_batch, pack, shard_bins
from eagle3kit.train.report import Reporter, final_table
from eagle3kit.train.run_folder import (
    BEST,
    DATA_ORDER,
    LATEST,
    Progress,
    check_data_order,
    check_resumed_vocab,
    data_order,
    gather_rng,
    point,
    prune,
    resolve_pointer,
    resume_elsewhere,
    resumed_record,
    schedule_change,
    set_rng_state,
    write_rank_summary,
)
from eagle3kit.train.stop import StopRequest
from eagle3kit.train.target import (FrozenTarget, damaged_weights, draft_head_from_target, load_target_model,
                                    load_tokenizer, position_dependent_rope)
from eagle3kit.train.target_parallel import GroupTarget, tensor_parallel_mesh, turns
from eagle3kit.train.ttt import STATS_ROWS, StepStats, simulated_acceptance_length, ttt_loss
from eagle3kit.train.vocab import count_masked_tokens, load_or_build_draft_vocab
from eagle3kit.train.warmstart import continue_from
from eagle3kit.ui import UI, SilentUI

DEFAULT_BASEPATH = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class TrainConfig:
    """Every option of ``eagle3kit train`` (see ``eagle3kit train --help``)."""

    basepath: str = DEFAULT_BASEPATH
    trainpath: str | None = None
    testpath: str | None = None
    savedir: str = "./checkpoints"
    cache_dir: str = "./data_cache"
    deepspeed_config: str | None = None
    num_epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-4
    warmup_ratio: float = 0.015
    max_len: int = 2048
    max_tokens: int = 16384
    draft_vocab_size: int = 32000
    ttt_length: int = 7
    ttt_decay: float = 0.8
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    seed: int = 0
    report_to: str = "wandb"
    run_name: str | None = None
    resume: bool = False
    init_draft: str | None = None  # a draft folder or Hub id to start from (fresh optimizer)
    aux_layers: list[int] | None = None
    attention: str | None = None  # eager | flex; default by device
    target_attention: str | None = None  # the target's attn_implementation; default by device
    checkpoint_activations: bool = False
    num_proc: int | None = None
    dtype: str | None = None  # bfloat16 on GPU, float32 on CPU
    log_every: int = 10
    pad_to_max_tokens: bool | None = None  # fixed shapes for compiled attention; default on GPU
    target_tp: int = 1  # split the target over groups of this many ranks (tensor parallel)
    chat_template_kwargs: dict[str, Any] | None = None  # template variables, e.g. {"enable_thinking": False}
    dry_run: bool = False  # prepare the data, print the plan, stop before loading the target's weights
    sources: list[str] = field(default_factory=lambda: ["ultrachat", "sharegpt"])


class DraftTrainer(torch.nn.Module):
    """The engine's module: the draft, whose forward is the TTT loss."""

    def __init__(self, draft: Eagle3Draft) -> None:
        super().__init__()
        self.draft = draft

    def forward(self, target_out, mb, mask, ttt_length: int, decay: float, checkpoint_steps: bool,
                live_only: bool = True):
        return ttt_loss(self.draft, target_out, mb.position_ids, mb.doc_ids, mb.loss_mask, mask,
                        ttt_length=ttt_length, decay=decay, checkpoint_steps=checkpoint_steps, live_only=live_only)


# ------------------------------------------------------------------ the recipe
@dataclass
class Prepared:
    train: TokenizedData
    test: TokenizedData | None
    tokenizer: Any
    draft_ids: np.ndarray
    coverage: float


def no_answer(data: TokenizedData, path: str, max_len: int, option: str) -> None:
    """UserError when no conversation of ``path`` keeps an answer token to learn from, saying why."""
    if len(data.dataset):
        return
    if data.no_assistant == data.without_answer:
        raise UserError(f"{option} {path}: no conversation has an assistant turn with text ({data.conversations:,} "
                        "read); give conversations with answers (\"from\": \"gpt\")")
    raise UserError(f"{option} {path}: no conversation keeps an answer token within --max-len {max_len} "
                    f"({data.without_answer:,} dropped: the prompt before the first answer is longer, or no assistant "
                    "turn); raise --max-len")


def prepare_data(cfg: TrainConfig, rank: int, ui: UI, draft_ids: np.ndarray | None = None) -> Prepared:
    """Tokenise (rank 0 first, the others then read its cache) and choose the draft vocabulary
    (or, given ``draft_ids``, a starting draft's, measuring how much of the answers it covers)."""
    tokenizer = load_tokenizer(cfg.basepath, template_kwargs=cfg.chat_template_kwargs)

    def prepare() -> Prepared:
        train = load_tokenized(cfg.trainpath, tokenizer, cfg.max_len, cfg.cache_dir, cfg.num_proc)
        no_answer(train, cfg.trainpath, cfg.max_len, "--trainpath")
        test = load_tokenized(cfg.testpath, tokenizer, cfg.max_len, cfg.cache_dir, cfg.num_proc) if cfg.testpath else None
        if test is not None:  # its figures would be NaN, and pick a meaningless best
            no_answer(test, cfg.testpath, cfg.max_len, "--testpath")
        if draft_ids is not None:
            counts = count_masked_tokens(train.dataset, len(tokenizer))
            seen = draft_ids[draft_ids < len(counts)]  # a model's vocabulary can be padded past the tokenizer's
            coverage = float(counts[seen].sum() / max(int(counts.sum()), 1))
            return Prepared(train, test, tokenizer, draft_ids, coverage)
        vocab = load_or_build_draft_vocab(train, len(tokenizer), cfg.draft_vocab_size, tokenizer.all_special_ids,
                                          cfg.cache_dir, warn=ui.warn if rank == 0 else (lambda m: None))
        return Prepared(train, test, tokenizer, vocab.ids, vocab.coverage)

    return rank0_first(rank, prepare)


def _mix_default_sources(cfg: TrainConfig, ui: UI, rank: int) -> None:
    """Without --trainpath: run the mix of the default sources into the cache dir."""
    out = Path(cfg.cache_dir) / "mixed"

    def mix() -> None:
        from eagle3kit.mix import run_mix
        from eagle3kit.plugins import load_registry
        from eagle3kit.sourcespec import SourceSpec

        ui.log(f"no --trainpath: mixing {' + '.join(cfg.sources)} into {out}")
        run_mix(load_registry(), [SourceSpec.parse(s) for s in cfg.sources], out, Path(cfg.cache_dir), ui=ui)

    rank0_first(rank, mix, others=False)
    cfg.trainpath = str(out / "train.jsonl")
    if cfg.testpath is None:
        cfg.testpath = str(out / "test.jsonl")


def target_outputs(target: FrozenTarget | GroupTarget, mb: MicroBatch | None, mask: PackedMask | None):
    """The target's outputs for this rank's micro-batch (with a split target, every rank
    of the group takes part, ``mb`` None when this rank has none this turn)."""
    if isinstance(target, GroupTarget):
        return target.run(mb)
    return target.run(mb.input_ids, mb.position_ids, mb.doc_ids, mask, loss_mask=mb.loss_mask)


def evaluate(engine, target: FrozenTarget | GroupTarget, data: TokenizedData, cfg: TrainConfig, rank: int, world: int,
             device: torch.device, backend: str, pad_to: int | None) -> StepStats:
    """Per-step loss and accuracy of the draft on the test split (all ranks, summed)."""
    bins = pack(np.asarray(data.dataset["length"]), cfg.max_tokens, seed=cfg.seed)
    mine = bins[rank::world]
    count = turns(len(mine), device, target.group) if isinstance(target, GroupTarget) else len(mine)
    total = torch.zeros(STATS_ROWS, cfg.ttt_length, dtype=torch.float64)
    engine.module.eval()
    with torch.no_grad():
        for i in range(count):
            mb = make_micro_batch(data.dataset, mine[i], pad_to=pad_to).to(device) if i < len(mine) else None
            mask = PackedMask.build(mb.doc_ids, backend) if mb is not None else None
            out = target_outputs(target, mb, mask)
            if mb is None:
                continue
            _, stats = engine.module(out, mb, mask, cfg.ttt_length, cfg.ttt_decay, False)
            total += stats.cpu()
    engine.module.train()
    return StepStats.from_tensor(all_reduce_sum(total, device))


@dataclass
class Plan:
    """How the training data is cut into steps, on this rank."""

    lengths: np.ndarray  # tokens of each training conversation
    bins: list[np.ndarray]  # the rows of an epoch (before sharding), each a list of conversations
    fill: float  # share of the rows' --max-tokens that holds tokens
    per_epoch: int  # optimizer steps per epoch
    total_steps: int
    rows_used: int = 0  # rows of an epoch trained on: the same count on every rank, whole accumulation steps


def make_plan(cfg: TrainConfig, data: Prepared, rank: int, world: int, accum: int) -> Plan:
    lengths = np.asarray(data.train.dataset["length"])
    bins = pack(lengths, cfg.max_tokens, seed=cfg.seed * 1000)
    fill = float(lengths.sum()) / max(len(bins) * cfg.max_tokens, 1)  # the rest of each row is padding (flex) or empty
    shard = len(shard_bins(bins, rank, world, accum))
    per_epoch = shard // accum
    if per_epoch == 0:
        raise UserError(f"the training data fills {len(bins)} micro-batches of --max-tokens "
                        f"{cfg.max_tokens}: too few for {world} rank(s) x {accum} accumulation steps; "
                        "lower --max-tokens or add data")
    total_steps = per_epoch * cfg.num_epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return Plan(lengths, bins, fill, per_epoch, total_steps, shard * world)


def log_plan(ui: UI, cfg: TrainConfig, data: Prepared, plan: Plan, draft_config: DraftConfig, world: int,
             kernels: str, pad: bool) -> None:
    """What a run will do, printed before it starts (and all that ``--dry-run`` prints)."""
    t = data.train
    ui.log(f"data: {t.conversations:,} conversations, {t.tokens:,} tokens ({t.masked_tokens:,} in answers); "
           f"truncated at a turn: {t.truncated:,}, cut inside the first answer: {t.cut_mid_turn:,}, "
           f"without an answer: {t.without_answer:,}")
    if t.failed:
        ui.warn(f"{t.failed:,} conversation(s) left out: the chat template fails on them, e.g. "
                + "; ".join(t.failed_examples))
    if cfg.init_draft:
        ui.log(f"starting from the draft {cfg.init_draft} (its weights and vocabulary; a fresh optimizer)")
    ui.log(f"draft vocabulary: {len(data.draft_ids):,} tokens covering {data.coverage:.1%} of answer tokens; "
           f"features from hidden states {draft_config.aux_layers} of {draft_config.target_num_layers} layers")
    with torch.device("meta"):  # sizes only: no memory
        params = sum(p.numel() for p in Eagle3Draft(draft_config).parameters() if p.requires_grad)
    c = draft_config
    ui.log(f"draft: {params / 1e6:,.1f}M trainable parameters (hidden {c.hidden_size}, {c.num_attention_heads} heads, "
           f"{c.num_key_value_heads} kv heads x {c.head_dim}, intermediate {c.intermediate_size}, "
           f"max_position_embeddings {c.max_position_embeddings})")
    left = len(plan.bins) - plan.rows_used
    ui.log(f"packing: {len(plan.bins):,} rows of {cfg.max_tokens:,} tokens per epoch, {plan.fill:.1%} full"
           f"{' (the rest is padding: flex needs one shape)' if pad else ''}"
           + (f"; {left} row(s) left out of each epoch (whole accumulation steps on every rank; other rows each "
              "epoch)" if left else ""))
    ui.log(f"{world} rank(s), {plan.per_epoch:,} optimizer steps per epoch, {plan.total_steps:,} in all; {kernels}")


def option_warnings(cfg: TrainConfig) -> list[str]:
    """Options that would not do what they seem to, each as a warning."""
    out = []
    if cfg.testpath and cfg.trainpath and Path(cfg.testpath).resolve() == Path(cfg.trainpath).resolve():
        out.append(f"--testpath is --trainpath ({cfg.testpath}): the test figures (tau_sim, the best checkpoint) are "
                   "measured on training data; give the test split a mix wrote")
    if cfg.eval_every and cfg.trainpath and not cfg.testpath:  # without --trainpath the mix gives a test split
        out.append(f"--eval-every {cfg.eval_every} without --testpath: nothing to evaluate on, so no test figures "
                   "and no best checkpoint")
    default = TrainConfig()
    if cfg.trainpath and cfg.sources != default.sources:
        out.append(f"--source {' --source '.join(cfg.sources)}: the sources are mixed only without --trainpath, so "
                   "they are ignored")
    if cfg.run_name and cfg.report_to != "wandb":
        out.append(f"--run-name names a wandb run; with --report-to {cfg.report_to} it is ignored")
    if cfg.init_draft and cfg.draft_vocab_size != default.draft_vocab_size:
        out.append(f"--draft-vocab-size {cfg.draft_vocab_size}: with --init-draft the vocabulary is the draft's own, so "
                   "it is ignored")
    return out


def check_finite(stats: StepStats, what: str, cfg: TrainConfig, savedir: Path) -> None:
    """Stop a diverged run (every rank sees the same reduced sums) before it logs, or saves
    as the best, a draft of NaNs."""
    if all(math.isfinite(v) for v in stats.loss_sum):
        return
    last = resolve_pointer(savedir, LATEST)
    raise UserError(f"{what} is {[round(v, 4) for v in stats.loss_sum]} summed per TTT step: training diverged "
                    f"(--lr {cfg.lr:g}); lower --lr" + (f", or start again from {savedir / last} with --resume" if last
                                                        else ""))


def draft_config_for(target_config, draft_vocab_size: int, cfg: TrainConfig) -> DraftConfig:
    """A new draft's configuration for the target (its sizes and positions, ``--aux-layers``)."""
    try:
        config = DraftConfig.from_target(target_config, draft_vocab_size, cfg.aux_layers,
                                         target_model=absolute_target(cfg.basepath))
    except ValueError as error:
        raise UserError(f"{error}; choose them with --aux-layers A,B,C") from None
    problem = unservable_aux_layers(config.aux_layers, config.target_num_layers) if cfg.aux_layers else None
    if problem:
        raise UserError(f"--aux-layers: {problem}")
    return config


def kernels_text(backend: str, target_attention: str, dtype: torch.dtype, target_tp: int) -> str:
    """The kernels of a run, as the plan prints them."""
    text = f"attention {backend}, target {target_attention}, {str(dtype).replace('torch.', '')}"
    return text + (f", target split over {target_tp} ranks" if target_tp > 1 else "")


def dry_run(cfg: TrainConfig, data: Prepared, plan: Plan, start, world: int, kernels: str, pad: bool,
            ui: UI) -> dict[str, Any]:
    """``train --dry-run``: the plan from the target's config alone (no weights read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.basepath, **hub_kwargs(cfg.basepath))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the config of the target {cfg.basepath!r}: "
                        f"{first_line(error)}{unreachable_note(cfg.basepath)}") from None
    draft_config = start.config if start is not None else draft_config_for(config, len(data.draft_ids), cfg)
    log_plan(ui, cfg, data, plan, draft_config, world, kernels, pad)
    ui.log("dry run: nothing trained, nothing saved")
    return {"dry_run": True, "rows_per_epoch": len(plan.bins), "fill": plan.fill,
            "steps_per_epoch": plan.per_epoch, "total_steps": plan.total_steps}


def train(cfg: TrainConfig, ui: UI | None = None) -> dict[str, Any]:
    """Train a draft; returns a summary (final step, test metrics, where things were saved)."""
    ui = ui or UI()
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints where every thread of a stuck rank is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    rank, world, local, device = init_distributed()  # first: it names DeepSpeed's accelerator before the import
    import deepspeed
    quiet = ui if rank == 0 else SilentUI()
    savedir = Path(cfg.savedir)
    if cfg.max_len > cfg.max_tokens:
        raise UserError(f"--max-len {cfg.max_len} is larger than --max-tokens {cfg.max_tokens}: a conversation must fit "
                        "one packed row; raise --max-tokens or lower --max-len")
    if cfg.ttt_length < 1:
        raise UserError("--ttt-length must be at least 1")
    for warning in option_warnings(cfg):
        quiet.warn(warning)
    if cfg.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard, or choose "
                        "--report-to wandb or none")
    if cfg.resume and cfg.init_draft:
        raise UserError("--resume continues a run with its own weights and optimizer (one started with --init-draft "
                        "too: it records it), --init-draft starts a new run from a draft's weights: give one of them")
    tp_mesh = tensor_parallel_mesh(world, cfg.target_tp, device) if cfg.target_tp > 1 else None

    def make_savedir() -> None:
        for name in (LATEST, BEST):  # a copy that followed the links (cp -L, rsync -L) made them folders
            if (savedir / name).is_dir() and not (savedir / name).is_symlink():
                raise UserError(f"{savedir / name} is a folder, not a link to a checkpoint (copied with links followed?); "
                                f"make it one again: rm -r {savedir / name} && ln -s step_N {savedir / name}")
        if not cfg.resume and resolve_pointer(savedir, LATEST):
            raise UserError(f"{savedir} already holds a training run ({LATEST} -> {resolve_pointer(savedir, LATEST)}); "
                            "pass --resume to continue it, or choose another --savedir")
        savedir.mkdir(parents=True, exist_ok=True)
        probe = savedir / f".write-test-{os.getpid()}"
        try:  # before the target loads, not at the first save
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise UserError(f"--savedir {savedir}: cannot write in it ({error.strerror}); choose another") from None

    if not cfg.dry_run:
        rank0_first(rank, make_savedir, others=False)
    if cfg.trainpath is None:
        _mix_default_sources(cfg, quiet, rank)

    dtype = getattr(torch, cfg.dtype) if cfg.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    ds_config = load_ds_config(cfg.deepspeed_config, cfg, bf16=dtype == torch.bfloat16, world=world, warn=quiet.warn)
    for warning in ds_config_warnings(cfg.deepspeed_config, ds_config, cfg):
        quiet.warn(warning)
    accum = int(ds_config["gradient_accumulation_steps"])
    order = data_order(world, accum, cfg.max_tokens, cfg.max_len, cfg.seed, cfg.trainpath, cfg.chat_template_kwargs)
    resume_tag = resolve_pointer(savedir, LATEST) if cfg.resume else None
    if cfg.resume and resume_tag is None:  # said before the target is loaded
        raise UserError(f"--resume: {savedir} holds no complete checkpoint ({LATEST} is missing)")
    init_source = cfg.init_draft  # the draft a run started from, recorded in its checkpoints
    if resume_tag is not None:
        check_data_order(savedir / resume_tag, order)
        record = resumed_record(savedir, resume_tag)
        init_source = record.get("init_draft")
        trained_on = list(record["draft_config"]["aux_layers"])
        if cfg.aux_layers and list(cfg.aux_layers) != trained_on:
            raise UserError(f"--resume: {savedir / resume_tag} was trained on hidden states {trained_on}, not "
                            f"--aux-layers {','.join(map(str, cfg.aux_layers))}; drop --aux-layers")
        cfg = replace(cfg, aux_layers=trained_on)  # the run's own, whatever the default now
        was, now = record["draft_config"].get("target_model"), absolute_target(cfg.basepath)
        if was and was != now:
            quiet.warn(f"--resume: {savedir / resume_tag} was trained for the target {was}; this run loads {now} "
                       "(fine if it is the same model, moved)")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    backend = cfg.attention or default_backend(device)
    if backend == "flex" and device.type != "cuda":
        raise UserError(f"--attention flex needs a GPU (this run is on {device.type}): torch's flex attention has no "
                        "backward pass there; leave --attention out (eager off GPU)")
    pad = cfg.pad_to_max_tokens if cfg.pad_to_max_tokens is not None else backend == "flex"
    pad_to = cfg.max_tokens if pad else None

    start = None
    if cfg.init_draft:
        start = rank0_first(rank, lambda: load_draft(cfg.init_draft))
    elif init_source:  # a resumed run that started from a draft: its sizes and vocabulary are the checkpoint's
        start = rank0_first(rank, lambda: load_draft(savedir / resume_tag / "draft"))
    data = prepare_data(cfg, rank, quiet, start.draft_ids.numpy() if start is not None else None)
    plan = make_plan(cfg, data, rank, world, accum)
    target_impl = cfg.target_attention or ("flex" if backend == "flex" else "sdpa")
    if target_impl == "flex":
        target_impl = TARGET_FLEX  # our compiled kernel with the packed row's block mask
    if cfg.dry_run:
        return dry_run(cfg, data, plan, start, world, kernels_text(backend, target_impl, dtype, cfg.target_tp), pad,
                       quiet)
    model = load_target_model(cfg.basepath, device=device, dtype=dtype, attn_implementation=target_impl,
                              tp_mesh=tp_mesh)
    draft_ids = torch.from_numpy(data.draft_ids)
    if start is not None:  # its own sizes, weights and vocabulary; the target's positions
        draft = continue_from(start, model.config, cfg.aux_layers, absolute_target(cfg.basepath), init_source,
                              warn=quiet.warn if cfg.init_draft else SilentUI().warn)  # said when it started
        draft_config = draft.config
    else:
        draft_config = draft_config_for(model.config, len(draft_ids), cfg)
        draft = Eagle3Draft(draft_config)
        draft.set_vocab(draft_ids)
        head, norm_scale = draft_head_from_target(model, draft_ids)
        with torch.no_grad():  # start from the target's own output head, restricted to the draft vocabulary
            draft.lm_head.weight.copy_(head)
            if norm_scale is not None:
                draft.norm.weight.copy_(norm_scale)
    draft_config.torch_dtype = str(dtype).replace("torch.", "")
    target = FrozenTarget(model, draft_config.aux_layers, draft_ids)
    runner = GroupTarget(target, tp_mesh, backend) if tp_mesh is not None else target
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    quiet.log(f"target: {model.num_parameters() / 1e6:,.1f}M parameters, {local / 1e6:,.1f}M on this rank")
    rope = position_dependent_rope(model.config)
    if rope and cfg.max_len > rope[1]:
        quiet.warn(f"the target's rope ({rope[0]}) takes its frequencies from the longest position in a packed row: "
                   f"conversations sharing a row with one longer than {rope[1]:,} tokens get the long-context "
                   f"encoding; --max-len {cfg.max_len:,} allows such rows (--max-len {rope[1]:,} keeps every "
                   "conversation's features as it would have them alone)")
    kernels = kernels_text(backend, target.attn_implementation, dtype, cfg.target_tp)  # the attention as loaded
    module = DraftTrainer(draft).to(device)

    lengths, total_steps = plan.lengths, plan.total_steps
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    has_scheduler = "scheduler" in ds_config
    schedule = {"total_steps": total_steps, "warmup_steps": warmup, "lr": cfg.lr}
    change = schedule_change(savedir / resume_tag, schedule) if resume_tag is not None and not has_scheduler else None
    if change:
        quiet.warn(change)
    try:
        engine, _, _, _ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=ds_config,
            lr_scheduler=None if has_scheduler else (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, warmup))),
        )
    except (AssertionError, ValueError, KeyError, TypeError) as error:  # pydantic's ValidationError is a ValueError
        if not cfg.deepspeed_config:
            raise
        raise UserError(f"--deepspeed-config {cfg.deepspeed_config}: DeepSpeed refuses it ({type(error).__name__}: "
                        f"{first_line(error)[:300]}); fix that setting, or leave the option out for the packaged "
                        "config") from None

    progress = Progress()
    if cfg.resume:
        tag = resume_tag
        check_resumed_vocab(savedir / tag / "draft", draft_ids, savedir)
        try:
            _, client = engine.load_checkpoint(str(savedir), tag=tag, load_module_strict=True)
        except RuntimeError as error:  # shapes: another draft than this run builds; or a damaged file
            if damaged_weights(error):
                raise UserError(f"--resume: the checkpoint {savedir / tag} is damaged ({first_line(error)[:300]})"
                                f"{resume_elsewhere(savedir, tag)}") from None
            raise UserError(f"--resume: the checkpoint {savedir / tag} cannot be loaded into this run's draft "
                            f"({first_line(error)[:300]}); resume with the options it was started with "
                            f"(see {savedir / 'train_config.json'})") from None
        if client is None:
            raise UserError(f"--resume: cannot read the checkpoint {savedir / tag}")
        progress = Progress(**client["progress"])
        if isinstance(client.get("rank_progress"), list) and len(client["rank_progress"]) > rank:
            progress.tokens = client["rank_progress"][rank]["tokens"]  # this rank's, not the first rank's
            progress.rows_digest = client["rank_progress"][rank]["rows_digest"]
        set_rng_state(client["rng"][rank] if isinstance(client["rng"], list) else client["rng"])
        quiet.log(f"resumed from {savedir / tag}: epoch {progress.epoch}, step {progress.step}")

        def repoint_best() -> None:  # a run stopped between writing a best and moving `best`
            if progress.best_tag and (savedir / progress.best_tag).is_dir() \
                    and resolve_pointer(savedir, BEST) != progress.best_tag:
                point(savedir, BEST, progress.best_tag)

        rank0_first(rank, repoint_best, others=False)

    reporter = Reporter(cfg.report_to, cfg, savedir, quiet) if rank == 0 else None
    if rank == 0:
        name = "train_config.json" if not cfg.resume else f"train_config.resume_step_{progress.step}.json"
        atomic_write_text(savedir / name, json.dumps(asdict(cfg), indent=2, default=str) + "\n")  # the start's kept
        log_plan(quiet, cfg, data, plan, draft_config, world, kernels, pad)

    last_saved = progress.step if cfg.resume else -1
    last_eval = -1

    def save(tag_step: int, reason: str, best: bool = False) -> str:
        nonlocal last_saved
        last_saved = tag_step
        tag = f"step_{tag_step}"
        # only the first rank's file holds the client state: each rank's own progress goes in as a list
        client = {"progress": asdict(progress), "rng": gather_rng(device), "eagle3kit": __version__,
                  "rank_progress": gather_objects({"tokens": progress.tokens, "rows_digest": progress.rows_digest})}
        engine.save_checkpoint(str(savedir), tag=tag, client_state=client, save_latest=False)

        def servable() -> None:
            extra = {"step": tag_step, "ttt_length": cfg.ttt_length, "target_model": cfg.basepath,
                     "target_architectures": list(getattr(model.config, "architectures", None) or [])}
            if init_source:
                extra["init_draft"] = init_source
            if cfg.chat_template_kwargs:  # eval warns when its prompts are rendered otherwise
                extra["chat_template_kwargs"] = cfg.chat_template_kwargs
            save_draft(engine.module.draft, savedir / tag / "draft", extra=extra)
            atomic_write_text(savedir / tag / DATA_ORDER, json.dumps({**order, "schedule": schedule}, indent=2) + "\n")

        def publish() -> None:  # every rank's part is written: `latest` may point at it
            point(savedir, LATEST, tag)
            if best:  # before the pruning, which may remove the previous best
                point(savedir, BEST, tag)
            prune(savedir, cfg.keep_last, progress.best_tag)
            quiet.log(f"saved checkpoint {savedir / tag} ({reason})")

        rank0_first(rank, servable, others=False)  # a full disk on rank 0 stops every rank with its message
        rank0_first(rank, publish, others=False)
        return tag

    def run_eval() -> None:
        nonlocal last_eval
        if data.test is None or last_eval == progress.step:
            return
        last_eval = progress.step
        stats = evaluate(engine, runner, data.test, cfg, rank, world, device, backend, pad_to)
        check_finite(stats, f"the test loss at step {progress.step}", cfg, savedir)  # never a diverged best
        accs, losses = stats.accuracies(), stats.losses()
        tau = simulated_acceptance_length(stats.acceptances())  # an out-of-vocabulary target top-1 is a miss
        record = {"step": progress.step, "epoch": progress.epoch, "tau_sim": tau, "acc": accs, "loss": losses}
        progress.history.append(record)
        if reporter:
            reporter.log({"test/tau_sim": tau, **{f"test/acc_{k}": a for k, a in enumerate(accs)},
                          **{f"test/loss_{k}": v for k, v in enumerate(losses)}}, progress.step)
        quiet.log(f"test @ step {progress.step}: tau_sim {tau:.3f}  acc " + " ".join(f"{a:.3f}" for a in accs))
        if tau > progress.best_tau and progress.step > 0:
            # recorded before the save, which stores the progress: a run resumed from this
            # checkpoint must know it is the best (and not prune it)
            progress.best_tau, progress.best_tag = tau, f"step_{progress.step}"
            save(progress.step, f"best tau_sim {tau:.3f}", best=True)

    if cfg.eval_every and progress.step == 0:
        run_eval()  # the starting point of the learning curve
    window = torch.zeros(STATS_ROWS, cfg.ttt_length, dtype=torch.float64, device=device)
    window_tokens, window_start = 0, time.perf_counter()
    done = progress.step >= total_steps
    with StopRequest(announce=rank == 0) as stop, quiet.progress("training", total=total_steps) as bar:
        bar.update(advance=progress.step)
        while not done and progress.epoch < cfg.num_epochs:
            bins = shard_bins(pack(lengths, cfg.max_tokens, seed=cfg.seed * 1000 + progress.epoch), rank, world, accum)
            while progress.micro < len(bins):
                rows = bins[progress.micro]
                mb = make_micro_batch(data.train.dataset, rows, pad_to=pad_to).to(device)
                mask = PackedMask.build(mb.doc_ids, backend)
                out = target_outputs(runner, mb, mask)
                loss, stats = engine(out, mb, mask, cfg.ttt_length, cfg.ttt_decay, cfg.checkpoint_activations)
                engine.backward(loss)
                engine.step()
                progress.micro += 1
                progress.tokens += mb.tokens
                window += stats
                window_tokens += mb.tokens
                # a hash chain, so that a resumed run continues it exactly
                progress.rows_digest = hashlib.sha256(progress.rows_digest.encode() +
                                                      np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()
                if progress.micro % accum:
                    continue
                progress.step += 1
                if progress.step % cfg.log_every == 0 or progress.step == total_steps:
                    summed = all_reduce_sum(torch.cat([window.flatten().cpu(), torch.tensor([window_tokens], dtype=torch.float64)]), device)
                    s = StepStats.from_tensor(summed[:-1].view(STATS_ROWS, cfg.ttt_length))
                    check_finite(s, f"the training loss at step {progress.step}", cfg, savedir)
                    elapsed = time.perf_counter() - window_start
                    tps = float(summed[-1]) / max(elapsed, 1e-9)
                    accs, losses = s.accuracies(), s.losses()
                    lr = engine.get_lr()[0]
                    if reporter:
                        reporter.log({"train/tokens_per_s": tps, "train/lr": lr, "train/loss": sum(
                            cfg.ttt_decay**k * v for k, v in enumerate(losses) if v == v),
                            **{f"train/acc_{k}": a for k, a in enumerate(accs)},
                            **{f"train/loss_{k}": v for k, v in enumerate(losses)}}, progress.step)
                    bar.update(advance=0, **{"tok/s": f"{tps:,.0f}", "loss_0": f"{losses[0]:.3f}", "acc_0": f"{accs[0]:.3f}"})
                    window.zero_()
                    window_tokens, window_start = 0, time.perf_counter()
                bar.update(advance=1)
                if (cfg.eval_every and progress.step % cfg.eval_every == 0) or progress.micro >= len(bins) \
                        or progress.step >= total_steps:
                    run_eval()  # before a save at this step: a new best is saved once, never over `latest`
                if cfg.save_every and progress.step % cfg.save_every == 0 and last_saved != progress.step:
                    save(progress.step, "--save-every")
                if stop.requested(device):  # Ctrl-C or SIGTERM: keep what was trained, then stop
                    if last_saved != progress.step:
                        save(progress.step, "interrupted")
                    quiet.warn(f"stopped at step {progress.step} of {total_steps}: {savedir / LATEST} -> "
                               f"step_{progress.step}; run the same command with --resume to continue")
                    raise KeyboardInterrupt
                if progress.step >= total_steps:
                    done = True
                    break
            if progress.micro >= len(bins):
                progress.epoch += 1
                progress.micro = 0
                run_eval()  # at the end of every epoch
    run_eval()
    if last_saved != progress.step:
        save(progress.step, "end of training")
    summary = write_rank_summary(savedir, rank, world, progress, engine)
    if reporter:
        reporter.close()
    if rank == 0:
        final_table(quiet, progress, savedir)
    return summary


