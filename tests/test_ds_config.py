"""The DeepSpeed set-up of ``eagle3kit train``: the config handed to the engine (the packaged
default with its ``"auto"`` values filled, torch's AdamW by default, the settings it cannot
train with refused)."""

from __future__ import annotations

import json

import pytest
import torch

from eagle3kit.errors import UserError
from eagle3kit.train.ds_config import DEFAULT_DS_CONFIG, ds_config_warnings, load_ds_config
from eagle3kit.train.loop import TrainConfig


def test_packaged_config_is_filled_from_the_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ds = load_ds_config(None, TrainConfig(lr=3e-4), bf16=False)
    packaged = json.loads(DEFAULT_DS_CONFIG.read_text())
    assert ds["optimizer"]["params"] == {**packaged["optimizer"]["params"], "lr": 3e-4, "torch_adam": True}
    assert ds["bf16"]["enabled"] is False and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # GPU: torch's fused AdamW, no JIT build
    ds = load_ds_config(None, TrainConfig(lr=3e-4), bf16=True)
    assert ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["fused"] is True


def write(tmp_path, config) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config) if not isinstance(config, str) else config)
    return str(path)


def test_a_users_config_keeps_its_choices(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    mine = {"gradient_accumulation_steps": 4, "train_batch_size": 999, "gradient_clipping": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": False}}}
    ds = load_ds_config(write(tmp_path, mine), TrainConfig(lr=3e-4), bf16=True)
    assert ds["optimizer"]["params"] == {"lr": 1e-5, "torch_adam": False}  # DeepSpeed's own Adam, as asked
    assert ds["gradient_accumulation_steps"] == 4 and "train_batch_size" not in ds and ds["gradient_clipping"] == 0.5
    other = {"optimizer": {"type": "Lamb", "params": {"lr": "auto"}}}
    assert load_ds_config(write(tmp_path, other), TrainConfig(lr=2e-4), bf16=True)["optimizer"]["params"] == {"lr": 2e-4}


def test_what_a_users_config_overrides_is_said(tmp_path):
    # the reference trainer's config: lr 0 and its own warm-up/decay scheduler, fp16 "true"
    reference = {"optimizer": {"type": "AdamW", "params": {"lr": 0}},
                 "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 12000, "warmup_max_lr": 1e-4}}}
    path = write(tmp_path, reference)
    cfg = TrainConfig(lr=3e-4)
    assert ds_config_warnings(path, load_ds_config(path, cfg, bf16=False), cfg) == [
        f"--deepspeed-config {path}: its scheduler (WarmupDecayLR) sets the learning rate, so --lr 0.0003, "
        "--warmup-ratio 0.015 and eagle3kit's warm-up then cosine decay are not used; remove \"scheduler\" to use them"]
    path = write(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}})
    assert ds_config_warnings(path, load_ds_config(path, cfg, bf16=False), cfg) == [
        f"--deepspeed-config {path}: its optimizer's lr 1e-05 is the peak learning rate, not --lr 0.0003; "
        "set \"lr\": \"auto\" to take --lr"]
    path = write(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})
    assert ds_config_warnings(path, load_ds_config(path, cfg, bf16=False), cfg) == []
    assert ds_config_warnings(None, load_ds_config(None, cfg, bf16=False), cfg) == []  # the packaged one
    with pytest.raises(UserError, match=r"fp16 is not supported \(the draft trains in bfloat16 on a GPU"):
        load_ds_config(write(tmp_path, {**reference, "fp16": {"enabled": "true"}}), cfg, bf16=False)


@pytest.mark.parametrize(("config", "message"), [
    ({"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu must be 1"),
    ({"zero_optimization": {"stage": 3}}, "ZeRO stage 3 is not supported"),
    ("{not json", "not valid JSON"),
    ([1, 2], "holds a JSON list, not an object of DeepSpeed settings"),
    ({"gradient_accumulation_steps": "four"}, "gradient_accumulation_steps is 'four'; give a whole number"),
])
def test_configs_it_cannot_train_with_are_refused(tmp_path, config, message):
    with pytest.raises(UserError, match=message):
        load_ds_config(write(tmp_path, config), TrainConfig(), bf16=False)
    with pytest.raises(UserError, match="cannot read it"):
        load_ds_config(str(tmp_path / "missing.json"), TrainConfig(), bf16=False)


def test_the_batch_size_sets_the_accumulation(tmp_path):
    def accumulation(config, world=1):
        return load_ds_config(write(tmp_path, config), TrainConfig(), bf16=False, world=world)[
            "gradient_accumulation_steps"]

    assert accumulation({"train_batch_size": 8}) == 8  # it was dropped: one row per step, silently
    assert accumulation({"train_batch_size": 8}, world=4) == 2
    assert accumulation({"train_batch_size": 8, "gradient_accumulation_steps": 4}, world=2) == 4
    assert accumulation({"gradient_accumulation_steps": "auto"}) == 1 and accumulation({}) == 1
    with pytest.raises(UserError, match="train_batch_size 6 is not a multiple of the 4 ranks"):
        accumulation({"train_batch_size": 6}, world=4)
    said = []
    ds = load_ds_config(write(tmp_path, {"train_batch_size": 8, "gradient_accumulation_steps": 2}), TrainConfig(),
                        bf16=False, warn=said.append)
    assert ds["gradient_accumulation_steps"] == 2 and said == [
        f"--deepspeed-config {tmp_path / 'ds.json'}: train_batch_size 8 is not gradient_accumulation_steps 2 x 1 "
        "rank(s) x 1 row; training takes 2 rows per step (gradient_accumulation_steps); remove train_batch_size or "
        "make them agree"]
