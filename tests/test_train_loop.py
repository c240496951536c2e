"""``eagle3kit train`` end to end on the tiny CPU target, through DeepSpeed (gloo):
learning, the saved draft, exact resume after a kill, and two ranks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import TRAIN_ARGS, run_cli

from eagle3kit.checkpoint import REQUIRED_KEYS, load_draft
from eagle3kit.errors import UserError
from eagle3kit.train.run_folder import DATA_ORDER, check_data_order, data_order, param_digest, schedule_change


def summary(savedir: Path, rank: int = 0) -> dict:
    return json.loads((savedir / "logs" / f"rank{rank}.json").read_text())


def test_training_learns_far_above_chance(trained_run):
    history = summary(trained_run)["history"]
    assert len(history) >= 5
    first, last = history[0], history[-1]
    assert first["step"] == 0 and first["acc"][0] < 0.3  # before training
    # the soft cross-entropy cannot go below the target's own entropy (about 1 here)
    assert last["loss"][0] < first["loss"][0] - 1.0
    assert last["acc"][0] > 0.6  # chance is 1/256 over the draft vocabulary
    assert last["tau_sim"] > first["tau_sim"] and last["tau_sim"] > 2.0
    assert all(h2["tau_sim"] >= h1["tau_sim"] - 0.5 for h1, h2 in zip(history, history[1:]))  # a curve, not noise


def test_the_plan_is_printed_before_training(trained_run):
    """Data, packing and steps, consistent with each other: the rows hold every token."""
    import re

    log = " ".join((trained_run.parent / "train.log").read_text().split())
    tokens = int(re.search(r"data: [\d,]+ conversations, ([\d,]+) tokens", log).group(1).replace(",", ""))
    rows, width, full = re.search(r"packing: ([\d,]+) rows of ([\d,]+) tokens per epoch, ([\d.]+)% full", log).groups()
    rows, width = int(rows.replace(",", "")), int(width.replace(",", ""))
    assert width == 512 and rows >= -(-tokens // width)
    assert float(full) == round(100 * tokens / (rows * width), 1)
    steps = int(re.search(r"1 rank\(s\), ([\d,]+) optimizer steps per epoch", log).group(1).replace(",", ""))
    assert steps == rows  # one rank, no gradient accumulation: a row a step


def test_dry_run_prints_the_runs_plan_without_reading_weights_or_saving(trained_run, tiny_target, mixed_data, tmp_path):
    """``--dry-run`` reads the tokenizer and config only (the weights here are not even a
    file of weights) and prints the plan the real run printed, line for line."""
    import re
    import shutil

    target = tmp_path / "target"
    shutil.copytree(tiny_target, target)
    (target / "model.safetensors").write_bytes(b"not weights")
    result = run_cli(["train", "--basepath", str(target), "--trainpath", str(mixed_data / "train.jsonl"),
                      "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(tmp_path / "ck"),
                      "--cache-dir", str(tmp_path / "cache"), "--num-epochs", "1", "--eval-every", "20", *TRAIN_ARGS,
                      "--dry-run"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "ck").exists()

    def plan(text):
        text = " ".join(text.split())
        return re.search(r"data: .*? in all; attention \w+, target \w+, \w+", text).group(0)

    dry = plan(result.stderr)
    assert dry == plan((trained_run.parent / "train.log").read_text())
    assert "M trainable parameters (hidden 128, 4 heads, 2 kv heads x 32" in dry
    assert "dry run: nothing trained, nothing saved" in " ".join(result.stderr.split())


def test_saved_draft_is_servable_and_reloads_exactly(trained_run):
    s = summary(trained_run)
    latest = trained_run / "latest"
    assert latest.is_symlink() and os.readlink(latest) == f"step_{s['step']}"
    assert (trained_run / "best").is_symlink()
    draft_dir = latest / "draft"
    config = json.loads((draft_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["num_hidden_layers"] == 1
    assert config["draft_vocab_size"] <= 256 and config["max_position_embeddings"] == 4096
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5]
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 2, 4]
    tensors = load_file(str(draft_dir / "model.safetensors"))
    assert sorted(tensors) == sorted(REQUIRED_KEYS)
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
    assert int(tensors["t2d"].sum()) == config["draft_vocab_size"]
    reloaded = load_draft(draft_dir)
    assert param_digest(reloaded) == s["param_digest"]


def test_a_best_checkpoint_knows_it_is_the_best(trained_run):
    """The progress saved with a new best names that checkpoint, so a run resumed from it
    keeps it (``prune`` spares the best) and reports it."""
    best = os.readlink(trained_run / "best")
    states = next((trained_run / best).glob("*model_states.pt"))
    progress = torch.load(states, map_location="cpu", weights_only=False)["progress"]
    assert progress["best_tag"] == best and progress["best_tau"] == summary(trained_run)["best_tau_sim"]


def test_resume_says_when_the_learning_rate_schedule_changes(trained_run, tmp_path):
    tag = os.readlink(trained_run / "latest")
    saved = json.loads((trained_run / tag / DATA_ORDER).read_text())["schedule"]
    assert saved["total_steps"] == summary(trained_run)["step"] and saved["lr"] == 3e-3
    assert schedule_change(trained_run / tag, dict(saved)) is None
    longer = {**saved, "total_steps": saved["total_steps"] * 2}
    message = schedule_change(trained_run / tag, longer)
    assert f"was total steps {saved['total_steps']}, warmup steps {saved['warmup_steps']}, lr 0.003; " \
           f"now total steps {saved['total_steps'] * 2}," in message and "follows the new schedule" in message
    assert schedule_change(tmp_path, longer) is None  # a checkpoint from before the schedule was kept


def _train_args(tiny_target, mixed_data, savedir, cache):
    return ["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
            "--savedir", str(savedir), "--cache-dir", str(cache), "--max-steps", "12", "--save-every", "4",
            *TRAIN_ARGS]


def _train_signalled(args: list[str], env: dict, signals: dict[str, int]) -> tuple[int, list[str]]:
    """Run ``eagle3kit ARGS``; when it says it saved a checkpoint named in ``signals``, send it
    that signal (after a SIGKILL, stop reading). Its exit code and standard error lines."""
    proc = subprocess.Popen([sys.executable, "-m", "eagle3kit", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            sent = next((sig for tag, sig in signals.items() if "saved checkpoint" in line and tag in line), None)
            if sent is not None:
                proc.send_signal(sent)
                if sent == signal.SIGKILL:
                    break
    finally:
        proc.wait()
    return proc.returncode, lines


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, tiny_target, mixed_data):
    cache = tmp_path / "cache"
    whole = run_cli(_train_args(tiny_target, mixed_data, tmp_path / "whole", cache))
    assert whole.returncode == 0, whole.stderr[-3000:]
    said = " ".join((whole.stdout + whole.stderr).split())  # no --testpath: where the draft is, and why no best
    assert f"draft: {tmp_path / 'whole' / 'latest' / 'draft'} (no test split, so no best checkpoint" in said

    env = {**os.environ, "WANDB_MODE": "disabled"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    killed = tmp_path / "killed"  # a stuck run shows where it is on SIGUSR1, and goes on
    code, lines = _train_signalled(_train_args(tiny_target, mixed_data, killed, cache), env,
                                   {"step_4": signal.SIGUSR1, "step_8": signal.SIGKILL})
    after_usr1 = lines[next(i for i, line in enumerate(lines) if "saved checkpoint" in line and "step_4" in line):]
    assert code == -signal.SIGKILL
    dump = "".join(after_usr1)
    assert "most recent call first" in dump and "eagle3kit/train/loop.py" in dump
    assert os.readlink(killed / "latest") == "step_8"
    assert not (killed / "logs" / "rank0.json").exists()

    again = run_cli(_train_args(tiny_target, mixed_data, killed, cache) + ["--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = summary(tmp_path / "whole"), summary(killed)
    assert (b["step"], b["rows_digest"]) == (12, a["rows_digest"])
    assert b["param_digest"] == a["param_digest"]  # bit for bit

    # Ctrl-C: the run saves where it is and stops; --resume continues from there, bit for bit
    stopped = tmp_path / "stopped"
    code, told = _train_signalled(_train_args(tiny_target, mixed_data, stopped, cache), env, {"step_4": signal.SIGINT})
    said = " ".join("".join(told).split())
    assert code == 130, said[-3000:]
    step = int(said.split("stopped at step ")[1].split()[0])
    assert 4 <= step < 12 and os.readlink(stopped / "latest") == f"step_{step}"
    assert (f"stopped at step {step} of 12: {stopped / 'latest'} -> step_{step}; run the same command with --resume "
            "to continue") in said
    again = run_cli(_train_args(tiny_target, mixed_data, stopped, cache) + ["--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(stopped)["param_digest"] == a["param_digest"]
    assert (stopped / "train_config.json").is_file() and (stopped / f"train_config.resume_step_{step}.json").is_file()


def test_a_stop_request_is_noted_once_and_a_second_signal_stops_at_once():
    import torch

    from eagle3kit.train.stop import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest(announce=False) as stop:
        assert not stop.requested(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's preemption
        assert stop.signal == signal.SIGTERM and stop.requested(torch.device("cpu"))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
            for _ in range(1000):  # the handler runs between bytecodes, right after the kill
                pass
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored


def test_starting_again_in_a_used_savedir_needs_resume(tmp_path, tiny_target, mixed_data):
    (tmp_path / "ck").mkdir()
    os.symlink("step_4", tmp_path / "ck" / "latest")
    result = run_cli(_train_args(tiny_target, mixed_data, tmp_path / "ck", tmp_path / "cache"))
    assert result.returncode == 2
    assert "already holds a training run" in result.stderr and "--resume" in result.stderr


def test_resume_keeps_the_runs_feature_layers_and_names_a_damaged_checkpoint(trained_run, tiny_target, mixed_data,
                                                                             tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    args = ["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"), "--savedir",
            str(run), "--cache-dir", str(trained_run.parent / "cache"), *TRAIN_ARGS, "--resume"]
    tag = os.readlink(run / "latest")
    result = run_cli(args + ["--aux-layers", "2,3,4"])
    assert result.returncode == 2 and " ".join(result.stderr.split()).endswith(
        f"Error: --resume: {run / tag} was trained on hidden states [1, 3, 5], not --aux-layers 2,3,4; drop --aux-layers")
    steps = sorted((p.name for p in run.glob("step_*")), key=lambda name: int(name.split("_")[1]))
    os.remove(run / "latest")
    os.symlink("step_999", run / "latest")  # a checkpoint deleted by hand
    result = run_cli(args)
    assert result.returncode == 2 and " ".join(result.stderr.split()).endswith(
        f"Error: --resume: {run / 'latest'} points at step_999, which is not there; resume from an earlier one: "
        f"ln -sfn {steps[-1]} {run / 'latest'}")
    os.remove(run / "latest")
    os.symlink(steps[-1], run / "latest")
    (run / steps[-1] / "draft" / "config.json").write_text("{")  # torn
    result = run_cli(args)
    assert result.returncode == 2 and f"Error: --resume: the checkpoint {run / steps[-1]} is damaged" in \
        " ".join(result.stderr.split())
    os.remove(run / "latest")
    shutil.copytree(run / steps[0], run / "latest")  # what cp -rL makes of the link
    result = run_cli(args)
    assert result.returncode == 2 and " ".join(result.stderr.split()).endswith(
        f"Error: {run / 'latest'} is a folder, not a link to a checkpoint (copied with links followed?); make it one "
        f"again: rm -r {run / 'latest'} && ln -s step_N {run / 'latest'}")


def test_resume_refuses_settings_that_would_train_on_other_rows(trained_run, tiny_target, mixed_data):
    tag = os.readlink(trained_run / "latest")
    saved = json.loads((trained_run / tag / DATA_ORDER).read_text())
    assert (saved["world_size"], saved["max_tokens"], saved["seed"]) == (1, 512, 0)
    result = run_cli(["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
                      "--savedir", str(trained_run), "--cache-dir", str(trained_run.parent / "cache"), *TRAIN_ARGS,
                      "--max-tokens", "1024", "--seed", "3", "--resume"])
    assert result.returncode == 2, result.stderr[-2000:]
    message = " ".join(result.stderr.split())
    assert "--max-tokens 512 (now 1024), --seed 0 (now 3)" in message
    assert f"--init-draft {trained_run / tag}" in message
    assert os.readlink(trained_run / "latest") == tag  # the run folder is left as it was


def test_resume_names_another_number_of_ranks(tmp_path):
    order = data_order(2, 1, 512, 256, 0, "train.jsonl")
    (tmp_path / DATA_ORDER).write_text(json.dumps(order))
    check_data_order(tmp_path, order)
    with pytest.raises(UserError, match=r"ranks 2 \(now 1\)"):
        check_data_order(tmp_path, {**order, "world_size": 1})
    with pytest.raises(UserError, match=r"gradient_accumulation_steps \(DeepSpeed config\) 1 \(now 4\)"):
        check_data_order(tmp_path, {**order, "gradient_accumulation_steps": 4})
    check_data_order(tmp_path / "older", {**order, "world_size": 1})  # a checkpoint without the record: not checked
    with pytest.raises(UserError, match=r"--chat-template-kwargs \{\} \(now \{'enable_thinking': False\}\)"):
        check_data_order(tmp_path, data_order(2, 1, 512, 256, 0, "train.jsonl", {"enable_thinking": False}))


def test_resume_refuses_a_training_file_whose_content_changed(tmp_path):
    """Same name, other rows: the saved position would point into other micro-batches."""
    import hashlib

    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a"}\n')
    order = data_order(1, 1, 512, 256, 0, str(data))
    assert order["trainpath_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    (tmp_path / DATA_ORDER).write_text(json.dumps(order))
    with open(data, "a") as f:
        f.write('{"id": "b"}\n')
    now = data_order(1, 1, 512, 256, 0, str(data))
    with pytest.raises(UserError) as error:
        check_data_order(tmp_path, now)
    assert (f"the --trainpath file's sha256 {order['trainpath_sha256'][:12]}... "
            f"(now {now['trainpath_sha256'][:12]}...)") in str(error.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_two_ranks(savedir: Path, tiny_target, mixed_data, *extra: str) -> list[str]:
    """``eagle3kit train`` as two gloo processes (what a launcher starts); their stderr."""
    port = str(_free_port())
    args = ["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
            "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(savedir), "--cache-dir",
            str(savedir.parent / "cache"), "--max-steps", "6", "--eval-every", "3", *TRAIN_ARGS, *extra]
    procs = []
    for rank in range(2):
        env = {**os.environ, "WANDB_MODE": "disabled", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "DS_ACCELERATOR": "cpu"}
        procs.append(subprocess.Popen([sys.executable, "-m", "eagle3kit", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in outs]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_target, mixed_data) -> Path:
    savedir = tmp_path_factory.mktemp("two_ranks") / "ck"
    train_on_two_ranks(savedir, tiny_target, mixed_data)
    return savedir


def test_two_ranks_train_disjoint_shards_to_identical_weights(two_rank_run):
    r0, r1 = summary(two_rank_run, 0), summary(two_rank_run, 1)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["step"] == r1["step"] == 6
    assert r0["rows_digest"] != r1["rows_digest"] and r0["tokens"] > 0 and r1["tokens"] > 0
    assert r0["param_digest"] == r1["param_digest"]
    # the checkpoint (written by the first rank) holds each rank's own progress for a resume
    states = next((two_rank_run / os.readlink(two_rank_run / "latest")).glob("mp_rank_00_model_states.pt"))
    saved = torch.load(states, map_location="cpu", weights_only=False)["rank_progress"]
    assert saved == [{"tokens": r["tokens"], "rows_digest": r["rows_digest"]} for r in (r0, r1)]


def test_a_target_split_over_two_ranks_trains_the_same_draft(two_rank_run, tiny_target, mixed_data, tmp_path):
    """``--target-tp 2``: each rank holds half of the target (transformers' tensor
    parallelism over gloo here), the group runs it on each rank's micro-batch in turn, and
    the draft comes out as with a whole target on every rank: same rows, same test
    figures, weights equal to float rounding (the split sums in another order)."""
    from safetensors.torch import load_file

    err = " ".join(train_on_two_ranks(tmp_path / "ck", tiny_target, mixed_data, "--target-tp", "2")[0].split())
    assert "target split over 2 ranks" in err
    held = re.search(r"target: ([\d.]+)M parameters, ([\d.]+)M on this rank", err)
    assert held and 0.45 < float(held.group(2)) / float(held.group(1)) < 0.6  # half, and the unsplit norms
    split, whole = summary(tmp_path / "ck", 0), summary(two_rank_run, 0)
    assert split["rows_digest"] == whole["rows_digest"] and split["tokens"] == whole["tokens"]
    for a, b in zip(split["history"], whole["history"]):
        assert a["step"] == b["step"] and a["acc"] == pytest.approx(b["acc"], abs=2e-3)
    got = load_file(tmp_path / "ck" / "latest" / "draft" / "model.safetensors")
    want = load_file(two_rank_run / "latest" / "draft" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4, msg=name)


def test_the_plan_counts_the_rows_left_out_by_rounding_to_ranks_and_accumulation():
    from types import SimpleNamespace

    from eagle3kit.train.loop import TrainConfig, make_plan

    data = SimpleNamespace(train=SimpleNamespace(dataset={"length": [60] * 15}))  # 15 rows of one conversation
    plan = make_plan(TrainConfig(max_tokens=100, num_epochs=3), data, rank=0, world=2, accum=4)
    assert (len(plan.bins), plan.rows_used, plan.per_epoch, plan.total_steps) == (15, 8, 1, 3)


def test_a_step_that_saves_and_finds_a_best_writes_its_checkpoint_once(tmp_path, tiny_target, mixed_data):
    """The end-of-training evaluation runs before the --save-every save of the same step,
    so the new best is saved once (never rewritten under `latest`); a resume puts back a
    `best` link lost between a save and its move."""
    args = ["train", "--basepath", str(tiny_target), "--trainpath", str(mixed_data / "train.jsonl"),
            "--testpath", str(mixed_data / "test.jsonl"), "--savedir", str(tmp_path / "ck"),
            "--cache-dir", str(tmp_path / "cache"), "--max-steps", "4", "--save-every", "4", *TRAIN_ARGS]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"saved checkpoint \S*step_4", result.stderr)) == 1, result.stderr[-3000:]
    assert os.readlink(tmp_path / "ck" / "best") == os.readlink(tmp_path / "ck" / "latest") == "step_4"
    (tmp_path / "ck" / "best").unlink()
    again = run_cli(args + ["--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.readlink(tmp_path / "ck" / "best") == "step_4"


def test_the_deepspeed_launcher_command_of_the_readme(tmp_path, tiny_target, mixed_data):
    # `deepspeed --num_gpus N --module eagle3kit train ...` runs `python -m eagle3kit
    # --local_rank=K train ...`: the option comes before the command
    launcher = Path(sys.executable).parent / "deepspeed"
    args = [str(launcher), "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "eagle3kit",
            *_train_args(tiny_target, mixed_data, tmp_path / "ck", tmp_path / "cache"), "--dry-run"]
    done = subprocess.run(args, env={**os.environ, "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "No such option" not in done.stderr
    assert "2 rank(s), " in done.stdout + done.stderr and "dry run: nothing trained" in done.stdout + done.stderr


def test_pruning_keeps_the_best_and_as_many_others_as_keep_last_says(tmp_path):
    from eagle3kit.train.run_folder import prune

    def left(keep_last, best):
        for n in range(1, 6):
            (tmp_path / f"step_{n}").mkdir(exist_ok=True)
        prune(tmp_path, keep_last, best)
        return sorted(p.name for p in tmp_path.glob("step_*"))

    assert left(2, "step_2") == ["step_2", "step_4", "step_5"]  # the best, and two besides it
    assert left(2, "step_5") == ["step_3", "step_4", "step_5"]  # the newest is the best: two older ones besides
    assert left(1, None) == ["step_5"]
