"""Acceptance and speed-up of a draft trained for a few minutes on a small target, end to
end through the CLI: mix the bundled samples, train a small Llama on them, train a draft
(``eagle3kit train``), measure it (``eagle3kit eval``), time ``eagle3kit regenerate``
with the in-process backend, then measure the draft with tree drafting (top-8, 32 tokens; its speed-up against the
plain-decoding rate in ``eval.json``). Run on the accelerator machine; the log, the stage
times and the eval reports are written to --report-dir as they come.

    python benchmarks/small_target.py --out /tmp/small
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


_running: list[subprocess.Popen] = []


def _time_box(signum, frame) -> None:
    """The stage's time box (``timeout -s USR1``): the running command dumps its stack
    (eagle3kit's commands register USR1 for that), then ends, so it does not keep the GPU
    after this script is gone."""
    for proc in _running:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
    raise SystemExit(124)


def cli(args: list[str], log: Path, timeout: float) -> float:
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ eagle3kit {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "eagle3kit", *args], stdout=f, stderr=subprocess.STDOUT)
        _running.append(proc)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            _running.remove(proc)
        if rc:
            raise subprocess.CalledProcessError(rc, args)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-dir", type=Path, default=None,
                    help="where the log, times.json and the eval reports go as they are written (default: --out)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--target-steps", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--samples", type=int, default=80)
    ap.add_argument("--regen-limit", type=int, default=300)
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    import torch

    from eagle3kit.sources import SAMPLES
    from eagle3kit.tiny import build_tiny_target

    signal.signal(signal.SIGUSR1, _time_box)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    reports = args.report_dir or out  # everything a time-boxed run must keep is written here as it comes
    reports.mkdir(parents=True, exist_ok=True)
    log = reports / "small_target.log"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    times: dict[str, float] = {}

    def note(name: str, seconds: float) -> None:  # written after every stage: a time-boxed run keeps what it got
        times[name] = seconds
        (reports / "times.json").write_text(json.dumps(times, indent=2))
    note("mix", cli(["mix", "--source", f"ultrachat:path={SAMPLES / 'ultrachat_sample.jsonl'}", "--source",
                        f"sharegpt:path={SAMPLES / 'sharegpt_sample.json'}", "--out", str(out / "data"),
                        "--cache-dir", str(out / "cache")], log, 120))
    convs = [json.loads(x)["conversations"] for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    t = time.perf_counter()
    build_tiny_target(out / "target", convs, steps=args.target_steps, layers=args.layers, hidden=args.hidden,
                      batch_size=32, lr=1e-3, vocab_size=2048, device=device)
    note("target", time.perf_counter() - t)
    note("train", cli(["train", "--basepath", str(out / "target"), "--trainpath", str(out / "data" / "train.jsonl"),
                          "--testpath", str(out / "data" / "test.jsonl"), "--savedir", str(out / "ck"),
                          "--cache-dir", str(out / "cache"), "--num-epochs", str(args.epochs), "--max-len", "512",
                          "--max-tokens", "4096", "--draft-vocab-size", "1024", "--lr", "1e-3", "--eval-every", "100",
                          "--report-to", "none", "--attention", "eager", "--target-attention", "sdpa",
                          "--log-every", "20"], log, 900))
    note("eval", cli(["eval", "--basepath", str(out / "target"), "--draft", str(out / "ck" / "best" / "draft"),
                         "--data", str(out / "data" / "test.jsonl"), "--num-samples", str(args.samples),
                         "--max-new-tokens", "256", "--steps", "6", "--json", str(reports / "eval.json")], log, 600))
    if "regen" not in args.skip:
        note("regenerate", cli(["regenerate", "--basepath", str(out / "target"), "--input",
                                   str(out / "data" / "train.jsonl"), "--out", str(out / "regen.jsonl"), "--limit",
                                   str(args.regen_limit), "--max-new-tokens", "128", "--batch-size", "64"], log, 600))
    if "tree" not in args.skip:  # last: a time-boxed run keeps the chain and regeneration figures
        note("eval_tree", cli(["eval", "--basepath", str(out / "target"), "--draft", str(out / "ck" / "best"),
                                  "--data", str(out / "data" / "test.jsonl"), "--num-samples", str(args.samples),
                                  "--max-new-tokens", "256", "--steps", "5", "--topk", "8", "--num-draft-tokens", "32",
                                  "--no-baseline",  # the same prompts decoded plainly: eval.json has that rate
                                  "--json", str(reports / "eval_tree.json")], log, 600))
    if "sampled" not in args.skip:  # temperature 0.7: the textbook rule against the one servers verify with
        for rule in ("rejection", "target-only"):
            note(f"eval_{rule}", cli(["eval", "--basepath", str(out / "target"), "--draft", str(out / "ck" / "best"),
                                      "--data", str(out / "data" / "test.jsonl"), "--num-samples", str(args.samples),
                                      "--max-new-tokens", "256", "--steps", "6", "--temperature", "0.7",
                                      "--acceptance", rule, "--no-baseline", "--json", str(reports / f"eval_{rule}.json")],
                                     log, 600))
    print(json.dumps(times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
