"""The README's main job, ``eagle3kit demo``, as a user runs it: mix the bundled samples,
build a tiny target, train a draft, measure it, export it for the three engines."""

from __future__ import annotations

import json

import pytest

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


def test_the_demo_refuses_a_folder_it_did_not_write(tmp_path):
    """It replaces its checkpoints and reuses its target: never in someone else's folder."""
    from eagle3kit.demo import claim_folder
    from eagle3kit.errors import UserError

    mine = tmp_path / "mine"
    (mine / "checkpoints" / "step_9").mkdir(parents=True)
    (mine / "checkpoints" / "step_9" / "weights.bin").write_text("precious")
    result = run_cli(["demo", "--out", str(mine)])
    assert result.returncode != 0 and "holds files the demo did not write" in result.stderr
    assert "Traceback" not in result.stderr
    assert (mine / "checkpoints" / "step_9" / "weights.bin").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a file; give a folder"):
        claim_folder(tmp_path / "file")
    for ok in (tmp_path / "new" / "deep", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        claim_folder(ok)
        claim_folder(ok)  # its own folder again
        assert (ok / ".eagle3kit-demo").is_file()
