"""``eagle3kit demo``: the whole path on the embedded default, on a CPU in a few minutes.

Mixes the sample raw files shipped in the package, builds a tiny target on the spot
(:mod:`eagle3kit.tiny`), trains a draft for it with the real trainer (DeepSpeed), saves it,
measures it by speculative decoding (``eagle3kit eval``) and exports it for SGLang, vLLM and
vLLM speculators (``eagle3kit export``, each checked the way its loader reads it).
Everything lands in ``--out``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eagle3kit.ui import UI


#: written into ``--out`` first: the folder is the demo's, so it may replace what it holds
MARKER = ".eagle3kit-demo"


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo's folder: new, empty, or one an earlier demo wrote (marked).
    The demo replaces its checkpoints and reuses its target, so any other folder is refused."""
    from eagle3kit.errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out}: a file; give a folder (a new one is made)")
    if out.is_dir() and not (out / MARKER).exists() and any(out.iterdir()):
        raise UserError(f"demo --out {out}: the folder holds files the demo did not write (it would replace its "
                        "checkpoints/ and reuse its target/); give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by eagle3kit demo, which may replace what this folder holds\n")


def run_demo(out: Path, ui: UI, target_steps: int = 120, epochs: int = 1) -> dict[str, Any]:
    from eagle3kit.eval import EvalConfig, run_eval
    from eagle3kit.export import FORMATS, export_draft
    from eagle3kit.mix import run_mix
    from eagle3kit.plugins import load_registry
    from eagle3kit.sources import SAMPLES
    from eagle3kit.sourcespec import SourceSpec
    from eagle3kit.tiny import build_tiny_target
    from eagle3kit.train.loop import TrainConfig, train

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tiny local models: loading bars would only clutter the demo's own
    out = Path(out)
    claim_folder(out)
    data, target, ckpt, cache = out / "data", out / "target", out / "checkpoints", out / "cache"
    ui.log(f"1/5 mixing the bundled samples into {data}")
    specs = [SourceSpec.parse(f"ultrachat:path={SAMPLES / 'ultrachat_sample.jsonl'}"),
             SourceSpec.parse(f"sharegpt:path={SAMPLES / 'sharegpt_sample.json'}")]
    run_mix(load_registry(), specs, data, cache, ui=ui)

    if not (target / "config.json").exists():
        ui.log(f"2/5 building a tiny target model in {target} (BPE tokenizer + 6-layer Llama, trained briefly)")
        conversations = [json.loads(line)["conversations"] for line in (data / "train.jsonl").read_text().splitlines()]
        with ui.progress("training the tiny target", total=target_steps) as task:
            build_tiny_target(target, conversations, steps=target_steps,
                              progress=lambda step, loss: task.update(advance=1, loss=f"{loss:.3f}"))
    else:
        ui.log(f"2/5 reusing the tiny target in {target}")

    ui.log(f"3/5 training a draft into {ckpt}")
    shutil.rmtree(ckpt, ignore_errors=True)
    train(TrainConfig(basepath=str(target), trainpath=str(data / "train.jsonl"), testpath=str(data / "test.jsonl"),
                      savedir=str(ckpt), cache_dir=str(cache), num_epochs=epochs, eval_every=25, lr=3e-3,
                      max_len=256, max_tokens=1024, draft_vocab_size=256, report_to="none", num_proc=1), ui)

    ui.log("4/5 measuring the draft by speculative decoding")
    report = run_eval(EvalConfig(basepath=str(target), draft_path=str(ckpt / "best" / "draft"),
                                 data_path=str(data / "test.jsonl"), num_samples=20, max_new_tokens=64, steps=5,
                                 json_path=str(out / "eval.json")), ui)
    best = ckpt / "best" / "draft"
    ui.log(f"5/5 exporting the draft for SGLang, vLLM and vLLM speculators into {out / 'export'}")
    report["exports"] = {}
    for fmt in FORMATS:
        folder, _, _ = export_draft(best, fmt, out / "export" / fmt, basepath=str(target))
        report["exports"][fmt] = str(folder)
    ui.log(f"done: draft in {best}, exports in {out / 'export'}, report in {out / 'eval.json'}")
    return report
