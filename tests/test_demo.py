"""The README's main job, ``eagle3kit demo``, as a user runs it: mix the bundled samples,
build a tiny target, train a draft, measure it, export it for the three engines."""

from __future__ import annotations

import json

from train_fixtures import run_cli

from eagle3kit.export import FORMATS, check_draft


def test_the_demo_runs_the_whole_path(tmp_path):
    out = tmp_path / "demo"
    result = run_cli(["demo", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["prompts"] == 20 and report["identical_to_greedy"] == 20  # lossless
    assert report["tau"] > 2.5 and report["tau_ci95"][0] > 2.0  # a trained draft, not a random one
    assert "acceptance length tau" in result.stdout
    for fmt in FORMATS:
        problems = check_draft(out / "export" / fmt, fmt, basepath=str(out / "target"))
        assert not [p for p in problems if p.is_error], (fmt, problems)
    assert (out / "checkpoints" / "best" / "draft" / "model.safetensors").is_file()
