"""Tokenising with the loss mask against tokenising alone.

Times, interleaved in one process (median of ``--rounds`` after one warm-up each), over
the bundled sample conversations (multi-turn ShareGPT and UltraChat records):

* ``mask``: :func:`eagle3kit.train.mask.tokenize_conversation` (render, locate each
  answer from the template's prefixes and a probe answer, tokenise with offsets, mask);
* ``render + tokenize``: one rendering of the whole conversation and one tokenisation, no
  mask (the least any trainer does; the baseline).

Reported per 1,000 conversations, with the ratio of the two, for a Llama-3-style and a
ChatML-style tokenizer trained on the samples (no download).

    python benchmarks/bench_mask.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def conversations(limit: int) -> list[list[dict]]:
    from eagle3kit.sources import SAMPLES

    out = []
    for line in (SAMPLES / "ultrachat_sample.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.append([{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                    for m in record["messages"] if m["role"] in ("user", "assistant")])
    for record in json.loads((SAMPLES / "sharegpt_sample.json").read_text()):
        conv = [{"from": m["from"], "value": m["value"]} for m in record["conversations"] if m["from"] in ("human", "gpt")]
        if conv and conv[0]["from"] == "human":
            out.append(conv)
    return out[:limit]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from eagle3kit.tiny import build_tokenizer, conversation_texts
    from eagle3kit.train.mask import tokenize_conversation
    from eagle3kit.train.template import render, to_messages

    convs = conversations(args.conversations)
    turns = sum(sum(m["from"] == "gpt" for m in c) for c in convs)
    rows = []
    for style in ("llama3", "chatml"):
        tok = build_tokenizer(conversation_texts(convs), style=style, vocab_size=2048)

        def with_mask():
            for c in convs:
                tokenize_conversation(tok, c, max_len=1 << 30)

        def plain():
            for c in convs:
                tok(render(tok, to_messages(c)), add_special_tokens=False)

        times: dict[str, list[float]] = {"mask": [], "render + tokenize": []}
        fns = {"mask": with_mask, "render + tokenize": plain}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.rounds):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        per_k = {name: 1000 * statistics.median(ts) / len(convs) for name, ts in times.items()}
        row = {"tokenizer": style, "conversations": len(convs), "answers": turns,
               "mask_s_per_1k": per_k["mask"], "baseline_s_per_1k": per_k["render + tokenize"],
               "ratio": per_k["mask"] / per_k["render + tokenize"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
