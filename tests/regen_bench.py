"""Throughput of ``eagle3kit regenerate``'s in-process backend: conversations/s and tokens/s.

Not a test (pytest does not collect it): the script behind the figure in the note.

    python tests/regen_bench.py --basepath Qwen/Qwen2.5-0.5B-Instruct --records 512 --batch-size 128
    python tests/regen_bench.py            # no model given: a tiny target is built first (CPU, ~15 s)

Input: the shipped UltraChat and ShareGPT samples (cleaned to the unified format, repeated
to ``--records``). The HF backend uses cuda + bf16 when a GPU is there. Prints one JSON
line per batch size with the manifest's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "eagle3kit" / "sources" / "samples"
sys.path.insert(0, str(REPO))


def sample_conversations() -> list[list[dict]]:
    from eagle3kit.unified import clean_messages

    conversations = []
    with open(SAMPLES / "ultrachat_sample.jsonl", encoding="utf-8") as f:
        for line in f:
            raw = json.loads(line)
            c, _ = clean_messages([{"from": m["role"], "value": m["content"]} for m in raw["messages"]])
            if c:
                conversations.append(c)
    for raw in json.loads((SAMPLES / "sharegpt_sample.json").read_text(encoding="utf-8")):
        c, _ = clean_messages(raw["conversations"])
        if c:
            conversations.append(c)
    return conversations


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--basepath", default=None, help="Target model (default: build a tiny one).")
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    from eagle3kit.regenerate import RegenConfig, run_regenerate
    from eagle3kit.ui import SilentUI

    work = Path(args.workdir or tempfile.mkdtemp(prefix="regen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    conversations = sample_conversations()
    basepath = args.basepath
    if basepath is None:
        from eagle3kit.tiny import build_tiny_target

        t = time.time()
        basepath = str(build_tiny_target(work / "tiny", conversations[:300], steps=120, layers=4, hidden=128))
        print(json.dumps({"built_tiny_target_s": round(time.time() - t, 1)}), flush=True)
    src = work / "input.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(args.records):
            f.write(json.dumps({"id": f"b{i}", "conversations": conversations[i % len(conversations)]}) + "\n")
    for batch_size in args.batch_size:
        cfg = RegenConfig(basepath=basepath, input_path=str(src), out_path=str(work / f"regen-{batch_size}.jsonl"),
                          batch_size=batch_size, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
                          device=args.device, overwrite=True)
        m = run_regenerate(cfg, SilentUI())
        print(json.dumps({"model": m["model"], "device": m.get("device"), "dtype": m.get("dtype"),
                          "batch_size": batch_size, "records": m["read"], "answers": m["answers"],
                          "truncated_answers": m["truncated_answers"], "conversations_per_s": m["conversations_per_s"],
                          "tokens_per_s": m["tokens_per_s"], **{k: m["this_run"][k] for k in ("generated_tokens", "load_s", "generation_s")}}),
              flush=True)


if __name__ == "__main__":
    main()
