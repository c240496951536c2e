"""What a training run tells its user: metrics to wandb or tensorboard, and the final table."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from eagle3kit.errors import UserError
from eagle3kit.train.run_folder import BEST, LATEST, Progress
from eagle3kit.ui import UI

if TYPE_CHECKING:
    from eagle3kit.train.loop import TrainConfig


class Reporter:
    """wandb, tensorboard or nothing; rank 0 only."""

    def __init__(self, kind: str, cfg: TrainConfig, savedir: Path, ui: UI) -> None:
        self.kind, self.run, self.writer = kind, None, None
        if kind == "wandb":
            import wandb

            mode = os.environ.get("WANDB_MODE")
            if not mode and not os.environ.get("WANDB_API_KEY") and not _wandb_logged_in():
                mode = "offline"
                ui.log(f"wandb: no API key found, logging offline under {savedir / 'wandb'} "
                       f"(upload later with `wandb sync {savedir / 'wandb'}/offline-run-*`)")
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "eagle3kit"), name=cfg.run_name,
                                  config=asdict(cfg), mode=mode, dir=str(savedir))
        elif kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(savedir / "runs"))
            ui.log(f"tensorboard: logging under {savedir / 'runs'} (`tensorboard --logdir {savedir / 'runs'}`)")
        elif kind != "none":
            raise UserError(f"--report-to {kind}: choose wandb, tensorboard or none")

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
        if self.writer is not None:
            self.writer.close()


def _wandb_logged_in() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def final_table(ui: UI, progress: Progress, savedir: Path) -> None:
    from rich.table import Table

    if not progress.history:  # no --testpath: no figures, no best; the draft is the latest
        ui.log(f"draft: {savedir / LATEST / 'draft'} (no test split, so no best checkpoint: give --testpath for one)")
        return
    last = progress.history[-1]
    table = Table(title=f"draft after {progress.step} steps: test split")
    table.add_column("TTT step", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("top-1 accuracy", justify="right")
    for k, (loss, acc) in enumerate(zip(last["loss"], last["acc"])):
        table.add_row(str(k), f"{loss:.4f}", f"{acc:.4f}")
    table.caption = f"tau_sim {last['tau_sim']:.3f} (best {progress.best_tau:.3f} at {progress.best_tag})"
    ui.table(table)
    ui.log(f"draft: {savedir / LATEST / 'draft'}" + (f" (best: {savedir / BEST / 'draft'})" if progress.best_tag else ""))
