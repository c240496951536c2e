"""The TTT loss head alone: eagle3kit's chunked soft cross-entropy, forward and backward.

Times, interleaved in one process (median of ``--steps`` after one warm-up each):

* ``saved gradient``: the forward pass keeps the logits' gradient (the default in training);
* ``recompute``: backward recomputes each chunk's logits and softmax (the baseline);
* ``autograd``: plain ``log_softmax`` over all logits at once, in fp32 (what a
  straightforward trainer does; shown for scale).

Default shapes are one TTT step of the Llama-3.1-8B-shaped draft (hidden 4,096, draft
vocabulary 32,000); ``--rows`` is the number of counted positions.

    python benchmarks/bench_loss.py --rows 512 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from eagle3kit.train.ttt import SoftCrossEntropy

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = (torch.randn(args.rows, args.hidden, generator=g) * 0.5).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * args.hidden**-0.5).to(device, dtype).requires_grad_()
    labels = torch.softmax(torch.randn(args.rows, args.vocab, generator=g) * 3, -1).to(device, dtype)

    def ours(save_grad: bool):
        def run():
            total, _ = SoftCrossEntropy.apply(hidden, weight, labels, args.chunk, save_grad)
            total.backward()
        return run

    def autograd():
        total = -(labels.float() * torch.log_softmax((hidden @ weight.t()).float(), -1)).sum()
        total.backward()

    variants = {"saved gradient": ours(True), "recompute": ours(False), "autograd": autograd}
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, float] = {}
    grads = {}
    for name, fn in variants.items():  # warm-up, and the gradients to compare
        hidden.grad = weight.grad = None
        fn()
        grads[name] = (hidden.grad.float().clone(), weight.grad.float().clone())
    for _ in range(args.steps):
        for name, fn in variants.items():
            hidden.grad = weight.grad = None
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["recompute"])
    rows = []
    for name in variants:
        med = statistics.median(times[name])
        dh = (grads[name][0] - grads["autograd"][0]).abs().max().item()
        row = {"variant": name, "median_s": round(med, 4), "speedup_vs_recompute": round(base / med, 3),
               "max_grad_diff_vs_autograd": dh, "peak_gib": round(peaks.get(name, float("nan")), 2),
               "rows": args.rows, "hidden": args.hidden, "vocab": args.vocab, "dtype": str(dtype).replace("torch.", ""),
               "device": torch.cuda.get_device_name() if cuda else "cpu"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
