"""Training throughput of eagle3kit's EAGLE-3 trainer against the target's forward pass.

Builds a target with random weights from a config (default: the Llama-3.1-8B shape; no
download), packs synthetic conversations of ``--seq-len`` tokens into rows of
``--max-tokens``, and times, in one process:

* ``ceiling``: the target's forward pass alone, as online training must run it on every
  token (HF forward with all hidden states, SDPA, batch of unpacked conversations);
* ``target``: eagle3kit's target step (packed row, fused features from 3 layers, logits
  restricted to the draft vocabulary);
* ``train``: a whole training step through the DeepSpeed engine (target + 7-step TTT
  forward and backward + optimizer), with its peak GPU memory;
* ``train, every position``: the same step with TTT steps 1..6 run on every position
  (``live_only=False``), the baseline for skipping positions no loss can reach (half of
  the synthetic row is prompt; ``--answer-share`` changes that). ``--no-baseline`` leaves
  it out.

The draft vocabulary holds the target's top-1 ids on the row (:func:`draft_vocabulary`),
as a trained target's nearly always are, so the unroll skips no more than a real run
would; the script prints the share of the row each TTT step runs on.

Prints one row per measurement (median of ``--steps`` after ``--warmup``) and the ratio
of training to the ceiling; ``--json`` writes them. Meant for a GPU; ``--config tiny``
runs anywhere (a smoke test of the script, not a figure).

    python benchmarks/bench_train.py --max-tokens 16384 --seq-len 2048 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
                rope_theta=500000.0, tie_word_embeddings=False,
                rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"})
TINY = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def set_attention(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def timed(fn, steps: int, warmup: int, label: str = "") -> list[float]:
    for i in range(warmup):  # each warm-up step is printed: the first holds the compilation, a stall shows here
        t = time.perf_counter()
        fn()
        sync()
        if label:
            print(f"#   {label}: warm-up step {i + 1} took {time.perf_counter() - t:.2f}s", flush=True)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def synthetic_row(n_conv: int, seq_len: int, vocab: int, device, seed: int = 0, answer_share: float = 0.5):
    """A packed row of ``n_conv`` conversations of turns of 512 tokens (``seq_len`` if
    shorter): a prompt, then an answer of ``answer_share`` of the turn (0.5: every other
    256-token span is an answer)."""
    from eagle3kit.train.attention import doc_ids_from_positions
    from eagle3kit.train.packing import MicroBatch

    g = torch.Generator().manual_seed(seed)
    t = n_conv * seq_len
    ids = torch.randint(0, vocab, (t,), generator=g)
    pos = torch.arange(seq_len).repeat(n_conv)
    turn = min(512, seq_len)
    mask = (pos % turn) >= round(turn * (1 - answer_share))
    return MicroBatch(ids, pos, doc_ids_from_positions(pos), mask, t).to(device)


def draft_vocabulary(model, mb, n_conv: int, size: int, chunk: int = 4096) -> torch.Tensor:
    """The draft vocabulary a real run would give this row: the target's top-1 ids on it,
    most frequent first, then the lowest other ids; sorted.

    A trained target's top-1 token is nearly always in its draft vocabulary, and the
    TTT unroll skips positions whose is not. With random weights, an arbitrary 32,000
    of 128,256 ids would hold about a quarter of the top-1 tokens, and the timed step
    would skip work a real run does."""
    vocab = model.config.vocab_size
    with torch.no_grad():  # conversations unpacked: each starts at position 0, as in the packed row
        h = model.model(input_ids=mb.input_ids.view(n_conv, -1)).last_hidden_state.flatten(0, 1)
        top = torch.cat([model.lm_head(h[s : s + chunk]).argmax(-1) for s in range(0, h.shape[0], chunk)])
    counts = torch.bincount(top.cpu(), minlength=vocab)
    seen = counts.nonzero().squeeze(1)
    seen = seen[counts[seen].argsort(descending=True, stable=True)][:size]
    rest = torch.ones(vocab, dtype=torch.bool)
    rest[seen] = False
    fill = rest.nonzero().squeeze(1)[: size - seen.numel()]
    return torch.cat([seen, fill]).sort().values


def profile_step(step, folder: Path, title: str) -> None:
    """Run ``step`` once under torch's profiler; write the ops by time and the trace."""
    import gzip

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        sync()
    folder.mkdir(parents=True, exist_ok=True)
    by = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages(group_by_input_shape=False).table(sort_by=by, row_limit=60, max_name_column_width=60)
    (folder / "profile.txt").write_text(f"# {title}, sorted by {by}\n{table}\n")
    raw = folder / "trace.json"
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(folder / "trace.json.gz", "wb") as dst:
        dst.write(src.read())
    raw.unlink()
    print(f"# profile of one {title} in {folder}", flush=True)


def work_shares(out, mb, ttt_length: int) -> dict:
    """How much of the row the TTT unroll works on: the share of answer tokens whose
    preceding top-1 is in the draft vocabulary, and of positions live at each step."""
    from eagle3kit.train.ttt import live_positions, step_weights

    counted = [step_weights(mb.loss_mask, mb.doc_ids, out.in_vocab, k) for k in range(ttt_length)]
    answers = mb.loss_mask[1:]
    in_vocab = (out.in_vocab[:-1] & answers).sum() / answers.sum().clamp(min=1)
    return {"in_vocab": float(in_vocab), "live": [round(float(x.float().mean()), 3) for x in live_positions(counted)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["llama8b", "tiny"], default="llama8b")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[16384])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ttt-length", type=int, default=7)
    ap.add_argument("--draft-vocab-size", type=int, default=32000)
    ap.add_argument("--attention", choices=["flex", "eager"], default=None)
    ap.add_argument("--target-attention", default=None)
    ap.add_argument("--checkpoint-activations", action="store_true")
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="do not time the every-position baseline")
    ap.add_argument("--baseline-max-tokens", type=int, default=None,
                    help="time the every-position baseline only at --max-tokens up to this many")
    ap.add_argument("--answer-share", type=float, default=0.5,
                    help="share of each 512-token turn that is answer (loss-masked); the rest is prompt")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="after timing the first --max-tokens, profile one training step: DIR/profile.txt "
                         "(ops by device time) and DIR/trace.json.gz (a Chrome/Perfetto trace)")
    args = ap.parse_args(argv)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `timeout -s USR1` shows where a run hangs

    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle3kit.train.attention import PackedMask, default_backend
    from eagle3kit.train.draft import DraftConfig, Eagle3Draft
    from eagle3kit.train.distributed import init_distributed
    from eagle3kit.train.ds_config import load_ds_config
    from eagle3kit.train.loop import DraftTrainer, TrainConfig
    from eagle3kit.train.target import FrozenTarget

    rank, world, local, device = init_distributed()
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    backend = args.attention or default_backend(device)
    target_impl = args.target_attention or ("flex" if backend == "flex" else "sdpa")
    if target_impl == "flex":
        from eagle3kit.train.attention import register_target_flex

        target_impl = register_target_flex()
    spec = LLAMA_8B if args.config == "llama8b" else TINY
    vocab = spec["vocab_size"]
    draft_vocab = min(args.draft_vocab_size, vocab)
    rows = []

    def save() -> None:
        if args.json:  # after every row: a run stopped by its time box keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")

    def report(name: str, times: list[float], tokens: int, **extra):
        med = statistics.median(times)
        row = {"name": name, "median_s": med, "tokens": tokens, "tokens_per_s": tokens / med, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()
        return row

    t0 = time.perf_counter()
    config = LlamaConfig(**spec)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    print(f"# target built in {time.perf_counter() - t0:.1f}s on {torch.cuda.get_device_name() if cuda else 'cpu'}; "
          f"torch {torch.__version__}", flush=True)
    import transformers

    rows.append({"name": "settings", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "transformers": transformers.__version__, "deepspeed": deepspeed.__version__, "config": args.config,
                 "seq_len": args.seq_len, "max_tokens": args.max_tokens, "answer_share": args.answer_share,
                 "ttt_length": args.ttt_length, "draft_vocab": draft_vocab, "draft_attention": backend,
                 "target_attention": target_impl, "checkpoint_activations": args.checkpoint_activations,
                 "dtype": str(dtype), "memory": "peak_gib is torch.cuda.max_memory_allocated per timed step"})
    save()

    for max_tokens in args.max_tokens:
        n_conv = max(1, max_tokens // args.seq_len)
        tokens = n_conv * args.seq_len
        mb = synthetic_row(n_conv, args.seq_len, vocab, device, answer_share=args.answer_share)
        if not args.skip_ceiling:
            ids = mb.input_ids.view(n_conv, args.seq_len)
            with torch.no_grad():
                times = timed(lambda: model(input_ids=ids, output_hidden_states=True), args.steps, args.warmup)
            ceiling = report("ceiling: target forward (sdpa, unpacked, all hidden states)", times, tokens,
                             max_tokens=max_tokens)
        draft_ids = draft_vocabulary(model, mb, n_conv, draft_vocab)
        set_attention(model, target_impl)
        target = FrozenTarget(model, [2, spec["num_hidden_layers"] // 2, spec["num_hidden_layers"] - 3], draft_ids)

        def target_step():
            mask = PackedMask.build(mb.doc_ids, backend)
            return target.run(mb.input_ids, mb.position_ids, mb.doc_ids, mask, loss_mask=mb.loss_mask)

        print(f"# timing the target step at {max_tokens} tokens", flush=True)
        with torch.no_grad():
            times = timed(target_step, args.steps, args.warmup, label="target step")
        report(f"target step ({target_impl}, packed, restricted logits)", times, tokens, max_tokens=max_tokens)
        with torch.no_grad():
            shares = work_shares(target_step(), mb, args.ttt_length)
        print(f"# top-1 in the draft vocabulary at {shares['in_vocab']:.1%} of the answer tokens; share of the "
              f"row each TTT step runs on: {' '.join(f'{x:.2f}' for x in shares['live'])}", flush=True)

        draft_config = DraftConfig.from_target(config, draft_vocab)
        draft = Eagle3Draft(draft_config)
        draft.set_vocab(draft_ids)
        module = DraftTrainer(draft).to(device)
        cfg = TrainConfig(lr=1e-4)
        ds = load_ds_config(None, cfg, bf16=cuda)
        before_engine = torch.cuda.memory_allocated() / 2**30 if cuda else float("nan")  # the target, the row
        engine, *_ = deepspeed.initialize(model=module, model_parameters=[p for p in module.parameters()], config=ds)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def train_step(live_only: bool = True):
            mask = PackedMask.build(mb.doc_ids, backend)
            out = target.run(mb.input_ids, mb.position_ids, mb.doc_ids, mask, loss_mask=mb.loss_mask)
            loss, _ = engine(out, mb, mask, args.ttt_length, 0.8, args.checkpoint_activations, live_only)
            engine.backward(loss)
            engine.step()

        label = (f"draft attention {backend}, ttt {args.ttt_length}"
                 f"{', checkpointing' if args.checkpoint_activations else ''}")
        baseline = not args.no_baseline and (args.baseline_max_tokens is None or max_tokens <= args.baseline_max_tokens)
        variants = [True, False] if baseline else [True]
        timings: dict[bool, list[float]] = {v: [] for v in variants}
        peaks: dict[bool, float] = {}
        print(f"# timing the train step at {max_tokens} tokens", flush=True)
        for live_only in variants:  # warm-up of each, then interleaved timed rounds
            timed(lambda: train_step(live_only), 0, args.warmup,
                  label=f"train step{'' if live_only else ', every position'}")
        for _ in range(args.steps):
            for live_only in variants:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                timings[live_only] += timed(lambda: train_step(live_only), 1, 0)
                if cuda:
                    peaks[live_only] = max(peaks.get(live_only, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        peak = peaks.get(True, float("nan"))
        row = report(f"train step ({label})", timings[True], tokens, max_tokens=max_tokens, peak_gib=peak,
                     allocated_before_engine_gib=before_engine, live_share=shares["live"])
        if baseline:
            base = report(f"train step, every position ({label})", timings[False], tokens, max_tokens=max_tokens,
                          peak_gib=peaks.get(False, float("nan")))
            row["speedup_vs_every_position"] = base["median_s"] / row["median_s"]
            print(f"# skipping dead positions: {row['speedup_vs_every_position']:.2f}x the every-position step",
                  flush=True)
        if not args.skip_ceiling:
            row["ratio_to_ceiling"] = row["tokens_per_s"] / ceiling["tokens_per_s"]
            print(f"# max_tokens {max_tokens}: train {row['tokens_per_s']:,.0f} tok/s = "
                  f"{row['ratio_to_ceiling']:.2f} of the ceiling {ceiling['tokens_per_s']:,.0f}; peak {peak:.1f} GiB",
                  flush=True)
        save()  # with the ratios just added
        if args.profile and max_tokens == args.max_tokens[0]:  # after the figures: a failure here costs none
            try:
                profile_step(train_step, Path(args.profile), f"training step at {max_tokens} tokens ({label})")
            except Exception as error:  # noqa: BLE001 - the profile is extra; the run goes on
                print(f"# profile failed: {error!r}", flush=True)
        engine.destroy()  # DeepSpeed's hooks keep an engine alive past `del`: the next size's peak must not hold it
        del engine, module, draft, target
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        set_attention(model, "sdpa")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
