"""Session fixtures for the trainer, evaluator and regenerator tests: the shipped samples
mixed into a unified split, and a tiny Llama target trained on them (built once, ~30 s on
a CPU, saved and loaded back through ``from_pretrained``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "eagle3kit" / "sources" / "samples"
#: Small shapes for CPU: conversations of at most 256 tokens, rows of 512.
TRAIN_ARGS = ["--max-len", "256", "--max-tokens", "512", "--draft-vocab-size", "256", "--report-to", "none",
              "--lr", "3e-3", "--log-every", "5", "--num-proc", "1"]


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory) -> Path:
    """The shipped samples mixed (train.jsonl, test.jsonl)."""
    from eagle3kit.mix import run_mix
    from eagle3kit.plugins import load_registry
    from eagle3kit.sourcespec import SourceSpec

    out = tmp_path_factory.mktemp("mixed")
    specs = [SourceSpec.parse(f"ultrachat:path={SAMPLES / 'ultrachat_sample.jsonl'}"),
             SourceSpec.parse(f"sharegpt:path={SAMPLES / 'sharegpt_sample.json'}")]
    run_mix(load_registry(blocked=[]), specs, out, out / "cache")
    return out


def read_conversations(path: Path) -> list:
    return [json.loads(line)["conversations"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory, mixed_data) -> Path:
    """A 6-layer, 128-wide Llama with a BPE tokenizer and a Llama-3-style chat template,
    trained briefly on the mixed samples so that its predictions are not noise."""
    from eagle3kit.tiny import build_tiny_target

    out = tmp_path_factory.mktemp("tiny_target")
    return build_tiny_target(out, read_conversations(mixed_data / "train.jsonl"), steps=120, seed=0)


def run_cli(args: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m eagle3kit ARGS`` in a fresh process (what users and launchers do)."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if env is None or key not in env:
            full_env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "eagle3kit", *args], env=full_env, capture_output=True, text=True,
                          **kwargs)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_target, mixed_data) -> Path:
    """A draft trained for one epoch on the samples, evaluated every 20 steps (savedir with
    latest/, best/, logs/)."""
    save = tmp_path_factory.mktemp("run")
    result = run_cli(["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
                      "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(save / "ck"),
                      "--cache-dir", str(save / "cache"), "--num-epochs", "1", "--eval-every", "20", *TRAIN_ARGS])
    assert result.returncode == 0, result.stderr[-4000:]
    (save / "train.log").write_text(result.stderr)
    return save / "ck"


def eval_report(target: Path, draft: Path, data: Path, out: Path, samples: int, new_tokens: int, steps: int):
    """``eagle3kit eval`` in process (click's runner); returns ``(result, report)``."""
    from click.testing import CliRunner

    from eagle3kit.cli import cli

    result = CliRunner().invoke(cli, ["eval", "--basepath", str(target), "--draft", str(draft), "--data", str(data),
                                      "--num-samples", str(samples), "--max-new-tokens", str(new_tokens),
                                      "--steps", str(steps), "--json", str(out)])
    assert result.exit_code == 0, result.output
    return result, json.loads(out.read_text())
