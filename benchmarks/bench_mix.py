"""Benchmark ``eagle3kit mix`` against a plain single-process baseline.

Generates synthetic raw data in both built-in schemas into a temporary folder:

* UltraChat-shaped JSON lines ``{"prompt", "prompt_id", "messages": [{"role", "content"}]}``
* a ShareGPT-shaped JSON array ``[{"id", "conversations": [{"from", "value"}]}]``

with 2-8 messages of 50-400 words each (words of a fixed vocabulary, drawn with numpy),
about 1% exact duplicates and about 3% records that a clean-up rule drops or cuts.

Then times, each in a subprocess with a cold cache folder (so that its peak RSS can be
measured on its own):

(a) the baseline below: ``json.load`` everything, the same rules through
    ``eagle3kit.unified.clean_messages`` plus each source's role conversion, dedup,
    shuffle, split, write; it writes the same bytes as ``eagle3kit mix`` (checked);
(b) ``eagle3kit mix`` end to end (the installed console script).

    python benchmarks/bench_mix.py                      # 200k + 90k records
    python benchmarks/bench_mix.py --ultrachat 20000 --sharegpt 9000 --repeats 3
    python benchmarks/bench_mix.py --phases             # also time mix's phases in-process

Peak RSS is reported two ways: the largest single process (``getrusage``) and the
largest sum over the whole process tree (sampled from /proc every 0.1 s), since
``--num-proc`` workers run beside the main process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


# --------------------------------------------------------------------------- data
def generate(folder: Path, n_ultra: int, n_share: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``ultrachat.jsonl`` and ``sharegpt.json`` into ``folder``; return their paths."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    vocab = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 11, size=4000)]
    # one long text of random words; a message is a slice of it, cut at word boundaries
    corpus_words = rng.integers(0, len(vocab), size=2_000_000)
    pieces = [vocab[i] for i in corpus_words]
    starts = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(p) + 1 for p in pieces], out=starts[1:])
    corpus = " ".join(pieces) + " "

    def messages(n: int):
        counts = rng.integers(2, 9, size=n)  # messages per conversation
        total = int(counts.sum())
        lengths = rng.integers(50, 401, size=total)  # words per message
        firsts = rng.integers(0, len(pieces) - 401, size=total)
        texts = [corpus[starts[a] : starts[a + k] - 1] for a, k in zip(firsts.tolist(), lengths.tolist())]
        out, at = [], 0
        for c in counts.tolist():
            out.append(texts[at : at + c])
            at += c
        return out

    def roles(n: int, human: str, gpt: str):
        return [human if j % 2 == 0 else gpt for j in range(n)]

    def spoil(i: int, pairs: list[list[str]], kind: str) -> None:
        """Make ~3% of records break a rule (``pairs`` is [[role, text], ...])."""
        r = i % 97
        if r == 1:
            pairs.insert(1, ["tool", "lookup()"])  # unknown role: dropped
        elif r == 2:
            pairs.append([pairs[0][0], "thanks"])  # trailing human: cut
        elif r == 3:
            pairs[1][1] = "   "  # empty answer: cut, too short
        elif r == 4:
            pairs.insert(0, ["system", "You are a helpful assistant."])  # kept first
        elif r == 5:
            pairs.insert(0, [pairs[1][0], "Hello! How can I help?"])  # dropped before first human

    ultra_path, share_path = folder / "ultrachat.jsonl", folder / "sharegpt.json"
    with open(ultra_path, "w", encoding="utf-8") as f:
        done = 0
        while done < n_ultra:
            batch = messages(min(20_000, n_ultra - done))
            for texts in batch:
                i = done
                pairs = [[r, t] for r, t in zip(roles(len(texts), "user", "assistant"), texts)]
                spoil(i, pairs, "ultrachat")
                record = {"prompt": pairs[0][1], "prompt_id": f"{i:016x}", "messages": [{"role": r, "content": t} for r, t in pairs]}
                line = json.dumps(record, ensure_ascii=False)
                f.write(line + "\n")
                if i % 100 == 7:  # ~1% exact duplicates (of the record just written)
                    f.write(line + "\n")
                    done += 1
                done += 1
                if done >= n_ultra:
                    break
    with open(share_path, "w", encoding="utf-8") as f:
        f.write("[\n")
        done, first = 0, True
        share_roles = ("gpt", "chatgpt", "bard", "model")
        while done < n_share:
            batch = messages(min(20_000, n_share - done))
            for texts in batch:
                i = done
                pairs = [[r, t] for r, t in zip(roles(len(texts), "human", share_roles[i % 4]), texts)]
                spoil(i, pairs, "sharegpt")
                text = json.dumps({"id": f"sg{i}_0", "conversations": [{"from": r, "value": t} for r, t in pairs]}, ensure_ascii=False)
                copies = 2 if i % 100 == 11 else 1
                for _ in range(copies):
                    f.write(("" if first else ",\n") + text)
                    first = False
                    done += 1
                if done >= n_share:
                    break
        f.write("\n]\n")
    return ultra_path, share_path


# --------------------------------------------------------------------------- baseline
def baseline(ultra_path: str, share_path: str, out: str, test_ratio: float = 0.05, seed: int = 0) -> dict:
    """The plain way: load everything, clean, dedup, shuffle, split, write (one process)."""
    import hashlib

    import numpy as np

    from eagle3kit.unified import clean_messages, conversation_json, record_json

    with open(ultra_path, encoding="utf-8") as f:
        ultra = [json.loads(line) for line in f if line.strip()]
    with open(share_path, encoding="utf-8") as f:
        share = json.load(f)

    lines, seen, counts = [], set(), {}
    for name, records, convert in (
        ("ultrachat", ultra, lambda r: [{"from": m["role"], "value": m["content"]} for m in r["messages"]]),
        ("sharegpt", share, lambda r: r["conversations"]),
    ):
        for index, record in enumerate(records):
            conversation, status = clean_messages(convert(record))
            counts[(name, status)] = counts.get((name, status), 0) + 1
            if conversation is None:
                continue
            text = conversation_json(conversation)
            if text in seen:
                counts[(name, "duplicate")] = counts.get((name, "duplicate"), 0) + 1
                continue
            seen.add(text)
            lines.append(record_json(f"{name}_{index}", text))
    perm = np.random.default_rng(seed).permutation(len(lines))
    n_test = int(round(test_ratio * len(lines)))
    os.makedirs(out, exist_ok=True)
    sums = {}
    for file_name, order in (("train.jsonl", perm[n_test:]), ("test.jsonl", perm[:n_test])):
        data = "".join(lines[i] + "\n" for i in order.tolist()).encode("utf-8")
        with open(os.path.join(out, file_name), "wb") as f:
            f.write(data)
        sums[file_name] = hashlib.sha256(data).hexdigest()
    return {"conversations": len(lines), "sha256": sums, "counts": {f"{k[0]}.{k[1]}": v for k, v in sorted(counts.items())}}


# --------------------------------------------------------------------------- measuring
def _tree_rss_kb(root: int) -> tuple[int, int]:
    """Sums of VmRSS and of RssAnon (private memory, no mapped files) over ``root`` and
    all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                ppid, vm, anon = 0, 0, 0
                for line in f:
                    if line.startswith("PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        vm = int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon = int(line.split()[1])
            parents[int(entry)], rss[int(entry)] = ppid, (vm, anon)
        except (OSError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(pid, (0, 0))[0] for pid in tree), sum(rss.get(pid, (0, 0))[1] for pid in tree)


def measure(command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run ``command`` in a fresh wrapper process so getrusage(RUSAGE_CHILDREN) covers it alone."""
    wrapper = [sys.executable, str(HERE), "--measure-child", str(log), "--", *command]
    os.sync()  # the previous run's writes are flushed now, not throttling this run
    done = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{done.stderr}\n(see {log})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_child(log: str, command: list[str]) -> None:
    peak = [0, 0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                total, anon = _tree_rss_kb(proc.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], anon)
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": code, "wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": peak[0] / 1024,
                      "tree_anon_mb": peak[1] / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
    sys.exit(code)


# --------------------------------------------------------------------------- phases
def phases(ultra: Path, share: Path, work: Path, num_proc: int | None) -> list[tuple[str, float]]:
    """Run mix in-process with a UI that times each step (loading, converting, writing)."""
    import contextlib

    from eagle3kit.mix import run_mix
    from eagle3kit.plugins import load_registry
    from eagle3kit.sourcespec import SourceSpec
    from eagle3kit.ui import UI

    marks: list[tuple[str, float]] = []

    class TimingUI(UI):
        @contextlib.contextmanager
        def progress(self, description, total=None):
            t = time.perf_counter()
            with super().progress(description, total) as task:
                yield task
            marks.append((description, time.perf_counter() - t))

        @contextlib.contextmanager
        def datasets_progress(self, description):
            t = time.perf_counter()
            yield
            marks.append((description, time.perf_counter() - t))

    t0 = time.perf_counter()
    run_mix(load_registry(), [SourceSpec.parse(f"ultrachat:path={ultra}"), SourceSpec.parse(f"sharegpt:path={share}")],
            work / "phases-out", work / "phases-cache", num_proc=num_proc, ui=TimingUI())
    total = time.perf_counter() - t0
    return marks + [("other (counts, dedup, shuffle, manifest)", total - sum(s for _, s in marks)), ("total", total)]


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure-child"]:
        _measure_child(argv[1], argv[3:])
        return
    if argv[:1] == ["--baseline-run"]:
        result = baseline(*argv[1:4])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ultrachat", type=int, default=200_000, help="UltraChat-shaped records (JSONL)")
    parser.add_argument("--sharegpt", type=int, default=90_000, help="ShareGPT-shaped records (JSON array)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the median is reported")
    parser.add_argument("--num-proc", type=int, default=None, help="passed to eagle3kit mix (default: its own)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where data and outputs go, kept (default: a temp folder, removed); data of the same sizes is reused")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--phases", action="store_true", help="also run mix in-process and time its phases")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="eagle3kit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV, "HF_HOME": str(work / "hf-home")}
    script = Path(sys.executable).parent / "eagle3kit"
    try:
        t = time.perf_counter()
        stamp, wanted = work / "data.json", {"ultrachat": args.ultrachat, "sharegpt": args.sharegpt, "version": 1}
        ultra, share = work / "ultrachat.jsonl", work / "sharegpt.json"
        if stamp.exists() and json.loads(stamp.read_text()) == wanted and ultra.exists() and share.exists():
            verb = "reused"  # a --workdir of an earlier run with the same sizes
        else:
            ultra, share = generate(work, args.ultrachat, args.sharegpt)
            stamp.write_text(json.dumps(wanted))
            verb = "generated"
        size = (ultra.stat().st_size + share.stat().st_size) / 1e6
        n = args.ultrachat + args.sharegpt
        print(f"{verb} {n:,} records ({size:,.0f} MB) in {time.perf_counter() - t:.1f} s in {work}", flush=True)

        runs: dict[str, list[dict]] = {"baseline": [], "eagle3kit mix": []}
        outputs = {}
        for r in range(args.repeats):
            for old in (work / f"baseline-{r}", work / f"mix-{r}", work / f"cache-{r}"):
                shutil.rmtree(old, ignore_errors=True)  # a kept mix would be reused, not measured
            out = work / f"baseline-{r}"
            runs["baseline"].append(measure([sys.executable, str(HERE), "--baseline-run", str(ultra), str(share), str(out)],
                                            work / f"baseline-{r}.log", env))
            outputs["baseline"] = out
            cache, out = work / f"cache-{r}", work / f"mix-{r}"
            command = [str(script), "mix", "--source", f"ultrachat:path={ultra}", "--source", f"sharegpt:path={share}",
                       "--out", str(out), "--cache-dir", str(cache)]
            if args.num_proc:
                command += ["--num-proc", str(args.num_proc)]
            runs["eagle3kit mix"].append(measure(command, work / f"mix-{r}.log", env))
            outputs["eagle3kit mix"] = out
            shutil.rmtree(cache, ignore_errors=True)
            print(f"repeat {r + 1}/{args.repeats}: baseline {runs['baseline'][-1]['wall_s']:.1f} s, "
                  f"mix {runs['eagle3kit mix'][-1]['wall_s']:.1f} s", flush=True)

        same = all(
            (outputs["baseline"] / name).read_bytes() == (outputs["eagle3kit mix"] / name).read_bytes()
            for name in ("train.jsonl", "test.jsonl")
        )
        manifest = json.loads((outputs["eagle3kit mix"] / "manifest.json").read_text())
        print()
        print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d')}; records: {n:,} ({size:,.0f} MB raw); repeats: {args.repeats} (median); "
              f"load average at the end: {os.getloadavg()[0]:.1f}")
        print(f"mix wrote {manifest['split']['train']:,} train + {manifest['split']['test']:,} test conversations; "
              f"outputs identical to the baseline's: {'yes' if same else 'NO'}")
        header = (f"{'':<16}{'records/s':>12}{'wall s':>10}{'cpu s':>10}{'peak RSS MB':>13}{'tree RSS MB':>13}"
                  f"{'tree anon MB':>14}{'vs baseline':>13}")
        print(header)
        base_wall = statistics.median(m["wall_s"] for m in runs["baseline"])
        for name, measured in runs.items():
            wall = statistics.median(m["wall_s"] for m in measured)
            print(f"{name:<16}{n / wall:>12,.0f}{wall:>10.1f}{statistics.median(m['cpu_s'] for m in measured):>10.1f}"
                  f"{max(m['max_rss_mb'] for m in measured):>13,.0f}{max(m['tree_rss_mb'] for m in measured):>13,.0f}"
                  f"{max(m['tree_anon_mb'] for m in measured):>14,.0f}{base_wall / wall:>12.2f}x")
        print("peak RSS: largest single process (getrusage); tree RSS: largest sum over the process tree, "
              "sampled every 0.1 s; tree anon: the same for private memory only (RssAnon, no mapped files)")
        if args.phases:
            print("\nphases of eagle3kit mix (in-process, cold cache):")
            for name, seconds in phases(ultra, share, work, args.num_proc):
                print(f"  {name:<44}{seconds:>8.1f} s")
        if not same:
            sys.exit(1)
    finally:
        if args.keep or args.workdir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
