"""Failures a user causes on any command: a clear line naming the thing, exit status 2,
never a traceback."""

from __future__ import annotations

import json

import errno

import click
import pytest
from click.testing import CliRunner

from eagle3kit.cli import _Group, cli
from eagle3kit.errors import UserError


@pytest.mark.parametrize("args", [
    ["train", "--lr", "nan"], ["train", "--lr", "inf"], ["train", "--ttt-decay", "nan"],
    ["train", "--warmup-ratio", "nan"], ["eval", "--basepath", "t", "--data", "d", "--temperature", "nan"],
    ["eval", "--basepath", "t", "--data", "d", "--temperature", "inf"],
    ["eval", "--basepath", "t", "--data", "d", "--top-p", "nan"],
    ["regenerate", "--basepath", "t", "--input", "i", "--out", "o", "--temperature", "nan"],
    ["regenerate", "--basepath", "t", "--input", "i", "--out", "o", "--top-p", "nan"],
])
def test_non_finite_numbers_are_refused(args):
    """nan and inf pass click's range checks (nan compares false with every bound)."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "is not a finite number" in result.output, result.output
    assert f"'{args[-2]}'" in result.output


def _group_raising(error: BaseException):
    @click.group(cls=_Group)
    def group():
        pass

    @group.command()
    def write():
        raise error

    return group


def test_a_write_the_disk_refuses_is_one_line_naming_the_file():
    for code, words in ((errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device"),
                        (errno.EACCES, "Permission denied")):
        result = CliRunner().invoke(_group_raising(OSError(code, words, "/ro/out/.eval.json.tmp-1")), ["write"])
        assert result.exit_code == 2
        assert f"Error: cannot write /ro/out/.eval.json.tmp-1: {words}. Choose another output folder" in result.output
    # other errors are not dressed up as write errors
    result = CliRunner().invoke(_group_raising(OSError(errno.ENOENT, "No such file", "x")), ["write"])
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)


def test_a_diverged_run_stops_before_it_saves_a_draft_of_nans(tmp_path):
    from eagle3kit.train.loop import TrainConfig, check_finite
    from eagle3kit.train.ttt import StepStats

    cfg = TrainConfig(lr=5.0)
    check_finite(StepStats([1.0, 2.0], [1, 1], [2, 2]), "the test loss at step 4", cfg, tmp_path)
    with pytest.raises(UserError, match=r"the test loss at step 4 is \[nan, 2.0\] .* diverged \(--lr 5\); lower --lr$"):
        check_finite(StepStats([float("nan"), 2.0], [0, 1], [2, 2]), "the test loss at step 4", cfg, tmp_path)
    (tmp_path / "step_2").mkdir()
    (tmp_path / "latest").symlink_to("step_2")
    with pytest.raises(UserError, match=r"lower --lr, or start again from .*step_2 with --resume"):
        check_finite(StepStats([float("inf")], [0], [1]), "the training loss at step 3", cfg, tmp_path)


def test_eval_checks_its_data_and_report_path_before_loading_any_model(tmp_path):
    base = ["eval", "--basepath", str(tmp_path / "no-model"), "--draft", str(tmp_path / "no-draft")]
    result = CliRunner().invoke(cli, base + ["--data", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "--data" in result.output and "nope.jsonl: no such file" in result.output
    data = tmp_path / "test.jsonl"
    data.write_text("")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, base + ["--data", str(data), "--json", str(tmp_path / "afile" / "r.json")])
    assert result.exit_code == 2 and "r.json: cannot make its folder" in result.output, result.output
    result = CliRunner().invoke(cli, base + ["--data", str(data), "--json", str(tmp_path / "new" / "r.json")])
    assert (tmp_path / "new").is_dir() and "cannot load the tokenizer of" in result.output  # folder made; the target next


def test_train_refuses_resume_with_init_draft(tmp_path):
    from train_fixtures import run_cli

    result = run_cli(["train", "--basepath", str(tmp_path), "--trainpath", str(tmp_path / "t.jsonl"),
                      "--savedir", str(tmp_path / "ck"), "--resume", "--init-draft", str(tmp_path)])
    assert result.returncode == 2, result.stderr[-2000:]
    message = " ".join(result.stderr.split())
    assert ("--resume continues a run with its own weights and optimizer (one started with --init-draft too: it "
            "records it), --init-draft starts a new run from a draft's weights: give one of them") in message
    assert not (tmp_path / "ck").exists()


def test_eval_names_options_it_would_ignore_or_misread():
    from eagle3kit.eval.run import EvalConfig, ignored_options, tree_size

    base = dict(basepath="t", data_path="d", draft_path="x")
    with pytest.raises(UserError, match=r"--num-draft-tokens 3 with --topk 1: a chain checks --steps \+ 1 = 7 tokens "
                                        r"per pass .* set --steps 2 instead"):
        tree_size(EvalConfig(**base, steps=6, num_draft_tokens=3))
    assert tree_size(EvalConfig(**base, steps=6, num_draft_tokens=7)) is None  # the chain, said twice
    assert tree_size(EvalConfig(**base, steps=6, topk=2, num_draft_tokens=3)) == 3
    assert ignored_options(EvalConfig(**base)) == []
    assert ignored_options(EvalConfig(**base, acceptance="rejection", top_k=5, top_p=0.9, engine="vllm")) == [
        "--acceptance, --top-k, --top-p only apply with --temperature > 0; at 0 decoding is greedy",
        "--engine vllm only applies with --server"]
    assert ignored_options(EvalConfig(**base, temperature=0.7, top_k=5, server="http://x", engine="vllm")) == [
        "with --server the server's own draft and drafting settings are measured; --draft is ignored"]
    served = dict(basepath="t", data_path="d", draft_path=None, server="http://x")
    assert ignored_options(EvalConfig(**served, temperature=0.7, top_k=5, engine="vllm", timeout=30)) == []
    assert ignored_options(EvalConfig(**served, steps=3, dtype="float16", no_baseline=True, target_tp=2)) == [
        "with --server the server's own draft and drafting settings are measured; --steps, --dtype, --no-baseline, "
        "--target-tp are ignored"]
    assert ignored_options(EvalConfig(**base, timeout=30, engine="sglang")) == [
        "--engine sglang and --timeout 30 only apply with --server"]


def test_train_names_what_it_cannot_use_before_loading_the_target(tmp_path, tiny_target, mixed_data):
    from train_fixtures import TRAIN_ARGS, run_cli

    train = str(mixed_data / "train.jsonl")
    base = ["train", "--basepath", str(tiny_target), "--trainpath", train, "--cache-dir", str(tmp_path / "cache")]
    (tmp_path / "empty").mkdir()
    result = run_cli(base + ["--savedir", str(tmp_path / "empty"), "--testpath", train, "--eval-every", "5", "--resume",
                             *TRAIN_ARGS])
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "--resume: " in message and "holds no complete checkpoint" in message
    assert "--testpath is --trainpath" in message and "measured on training data" in message
    assert "target:" not in message  # refused before the target's weights were read
    result = run_cli(base + ["--savedir", str(tmp_path / "ck"), "--eval-every", "5", "--dry-run", *TRAIN_ARGS,
                             "--max-len", "16"])
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, message[-2000:]
    assert "no conversation keeps an answer token within --max-len 16" in message and "raise --max-len" in message
    assert "built successfully" not in result.stdout + result.stderr  # DeepSpeed's build line is not the user's
    assert "--eval-every 5 without --testpath" in message
    questions = tmp_path / "questions.jsonl"  # a test split of prompts only: its figures would be NaN
    questions.write_text("".join(json.dumps({"id": f"q{i}", "conversations": [{"from": "human", "value": f"why {i}?"}]})
                                 + "\n" for i in range(3)))
    result = run_cli(base + ["--savedir", str(tmp_path / "ck"), "--testpath", str(questions), "--dry-run", *TRAIN_ARGS,
                             "--source", "sharegpt", "--run-name", "mine"])
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and message.endswith(
        f"Error: --testpath {questions}: no conversation has an assistant turn with text (3 read); give conversations "
        "with answers (\"from\": \"gpt\")")
    assert "--source sharegpt: the sources are mixed only without --trainpath, so they are ignored" in message
    assert "--run-name names a wandb run; with --report-to none it is ignored" in message
    result = run_cli(base + ["--savedir", str(tmp_path / "ck"), "--dry-run", *TRAIN_ARGS, "--aux-layers", "5,3,1"])
    assert result.returncode == 2 and " ".join(result.stderr.split()).endswith(
        "Error: --aux-layers: aux layers [5, 3, 1]: SGLang and vLLM capture the inputs of decoder layers 1..5 and join "
        "them in layer order, so give three increasing indices in that range")
    # flex attention has no backward pass on a CPU: said at once, not a traceback after the target loads
    result = run_cli(base + ["--savedir", str(tmp_path / "ck"), "--attention", "flex", "--dry-run", *TRAIN_ARGS])
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in message, message[-2000:]
    assert "Error: --attention flex needs a GPU (this run is on cpu)" in message


def test_export_refuses_options_that_would_be_ignored(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--check", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--check only validates DRAFT_DIR; --out is for an export" in " ".join(result.output.split())
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--check", "--num-speculative-tokens", "3"])
    assert result.exit_code == 2 and ("--check only validates DRAFT_DIR; --num-speculative-tokens is for an export"
                                      in " ".join(result.output.split()))
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--to", "vllm", "--out", str(tmp_path / "o"), "--private"])
    assert result.exit_code == 2 and "--private applies to the repository --push-to-hub" in result.output
    assert not (tmp_path / "o").exists()


def test_train_option_warnings():
    from eagle3kit.train.loop import TrainConfig, option_warnings

    assert option_warnings(TrainConfig(eval_every=5)) == []  # the default mix brings its test split
    assert option_warnings(TrainConfig(eval_every=5, trainpath="t.jsonl", testpath="v.jsonl")) == []
    assert option_warnings(TrainConfig(eval_every=5, trainpath="t.jsonl")) == [
        "--eval-every 5 without --testpath: nothing to evaluate on, so no test figures and no best checkpoint"]
    assert option_warnings(TrainConfig(trainpath="t.jsonl", testpath="./t.jsonl"))[0].startswith(
        "--testpath is --trainpath (./t.jsonl)")


def test_a_deepspeed_config_deepspeed_refuses_is_named(tmp_path, tiny_target, mixed_data):
    from train_fixtures import TRAIN_ARGS, run_cli

    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"optimizer": {"type": "Adamx", "params": {"lr": "auto"}}}))
    result = run_cli(["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
                      "--savedir", str(tmp_path / "ck"), "--cache-dir", str(tmp_path / "cache"), "--max-steps", "1",
                      "--deepspeed-config", str(config), *TRAIN_ARGS])
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in message, message[-3000:]
    assert f"Error: --deepspeed-config {config}: DeepSpeed refuses it (AssertionError: " in message
    assert "Adamx" in message and message.endswith("fix that setting, or leave the option out for the packaged config")
