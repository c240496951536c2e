"""The DeepSpeed configuration of a training run (``ds_config.json`` beside this file is
the default) and its learning-rate schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from eagle3kit.errors import UserError

if TYPE_CHECKING:
    from eagle3kit.train.loop import TrainConfig

DEFAULT_DS_CONFIG = Path(__file__).with_name("ds_config.json")


def load_ds_config(path: str | None, cfg: TrainConfig, bf16: bool, world: int = 1,
                   warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read the DeepSpeed config (the packaged default when none is given) and fill its
    ``"auto"`` values from the command line (``world``: the number of ranks)."""
    source = Path(path) if path else DEFAULT_DS_CONFIG
    try:
        ds = json.loads(source.read_text())
    except OSError as error:
        raise UserError(f"--deepspeed-config {source}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise UserError(f"--deepspeed-config {source}: not valid JSON ({error})") from None
    if not isinstance(ds, dict):
        raise UserError(f"--deepspeed-config {source}: holds a JSON {type(ds).__name__}, not an object of DeepSpeed "
                        "settings ({\"optimizer\": ..., \"zero_optimization\": ...})")
    ds.setdefault("train_micro_batch_size_per_gpu", 1)
    if ds["train_micro_batch_size_per_gpu"] != 1:
        raise UserError(f"--deepspeed-config {source}: train_micro_batch_size_per_gpu must be 1: a micro-batch is one "
                        "packed row; use --max-tokens to make it larger")
    ds["gradient_accumulation_steps"] = _accumulation(ds, source, world, warn or (lambda message: None))
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage > 2:
        raise UserError(f"--deepspeed-config {source}: ZeRO stage {stage} is not supported (the draft is small; use 0-2)")
    for key in ("bf16", "fp16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
            ds[key]["enabled"] = bf16 if key == "bf16" else False
    if _enabled(ds.get("fp16")):  # the reference trainer's config has it
        raise UserError(f"--deepspeed-config {source}: fp16 is not supported (the draft trains in bfloat16 on a GPU, "
                        "float32 on a CPU, as --dtype says); set \"fp16\": {\"enabled\": false}, or \"auto\"")
    opt = ds.get("optimizer", {}).get("params", {})
    if opt.get("lr") == "auto":
        opt["lr"] = cfg.lr
    if str(ds.get("optimizer", {}).get("type", "")).lower() in ("adam", "adamw"):
        # torch's AdamW (fused kernels on GPU) instead of DeepSpeed's, which is compiled on the
        # first run and needs a CUDA toolkit (nvcc) beside torch; `"torch_adam": false` keeps it
        opt.setdefault("torch_adam", True)
        if opt["torch_adam"] and torch.cuda.is_available():
            opt.setdefault("fused", True)
    if ds.get("gradient_clipping") == "auto":
        ds["gradient_clipping"] = 0.5
    return ds


def _accumulation(ds: dict[str, Any], source: Path, world: int, warn: Callable[[str], None]) -> int:
    """Micro-batches (packed rows) per optimizer step and rank: ``gradient_accumulation_steps``,
    else ``train_batch_size`` (rows per step over every rank) divided by the ranks; when both
    are numbers and disagree, the first, with a warning."""
    def number(key: str) -> int | None:
        value = ds.get(key, "auto")
        if value == "auto" or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--deepspeed-config {source}: {key} is {value!r}; give a whole number of at least 1, "
                            "or \"auto\"")
        return value

    accumulation, batch = number("gradient_accumulation_steps"), number("train_batch_size")
    if batch is not None:
        if batch % world:
            raise UserError(f"--deepspeed-config {source}: train_batch_size {batch} is not a multiple of the {world} "
                            "ranks (each trains one packed row per micro-batch)")
        if accumulation is not None and accumulation * world != batch:  # a config written for another cluster
            warn(f"--deepspeed-config {source}: train_batch_size {batch} is not gradient_accumulation_steps "
                 f"{accumulation} x {world} rank(s) x 1 row; training takes {accumulation * world} rows per step "
                 "(gradient_accumulation_steps); remove train_batch_size or make them agree")
            return accumulation
        accumulation = batch // world
    return accumulation or 1


def _enabled(section: Any) -> bool:
    """A DeepSpeed ``{"enabled": ...}`` section that is on (DeepSpeed reads ``"true"`` as on too)."""
    if not isinstance(section, dict):
        return False
    value = section.get("enabled", False)
    return value is True or (isinstance(value, str) and value.lower() == "true")


def ds_config_warnings(path: str | None, ds: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """What a user's DeepSpeed config overrides of the command line, said before training."""
    if not path:
        return []
    out = []
    lr = ds.get("optimizer", {}).get("params", {}).get("lr")
    if "scheduler" in ds:
        kind = ds["scheduler"].get("type", "?") if isinstance(ds["scheduler"], dict) else "?"
        out.append(f"--deepspeed-config {path}: its scheduler ({kind}) sets the learning rate, so --lr {cfg.lr:g}, "
                   f"--warmup-ratio {cfg.warmup_ratio:g} and eagle3kit's warm-up then cosine decay are not used; "
                   "remove \"scheduler\" to use them")
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr != cfg.lr:
        out.append(f"--deepspeed-config {path}: its optimizer's lr {lr:g} is the peak learning rate, not --lr "
                   f"{cfg.lr:g}; set \"lr\": \"auto\" to take --lr")
    return out


def lr_lambda(total_steps: int, warmup: int):
    """Linear warm-up to the peak, then cosine decay to zero."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f
