"""The ``eagle3kit export --check DIR`` and ``eagle3kit export DIR --to FMT --out OUT`` commands: run the
check or the export and print the result (rich is imported only when they run).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from eagle3kit.errors import UserError, first_line
from eagle3kit.export.card import serve_hint, serving_tree
from eagle3kit.export.check import _check_folder, _engine_problems
from eagle3kit.export.folder import (ENGINE, MARKER, DraftFolder, _rope_of, _sizes, read_folder, read_target_config,
                                     recorded_target_name)
from eagle3kit.export.problem import Problem
from eagle3kit.export.write import export_draft
from eagle3kit.hub import hub_failure


def _loads_in(problems_by_fmt: dict[str, list[Problem]]) -> list[str]:
    return [ENGINE[f] for f, ps in problems_by_fmt.items() if not any(p.is_error for p in ps)]


def _summary(folder: DraftFolder, fmt: str | None, basepath: str | None) -> str:
    flat = folder.flat
    s = _sizes(flat) or {}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in folder.tensors.values() if t.is_floating_point()})
    ec = flat.get("eagle_config") if isinstance(flat.get("eagle_config"), dict) else {}
    top, nested = flat.get("eagle_aux_hidden_state_layer_ids"), ec.get("eagle_aux_hidden_state_layer_ids")
    aux = f"{top} (vLLM, HF hidden_states index)" if top else "defaults (not in config)"
    if nested:
        aux += f", SGLang eagle_config {nested}"
    theta, scaling, _ = _rope_of(flat)
    rope = f"rope_theta {theta:g}" + (f" {scaling.get('rope_type')}" if scaling else "")
    layout = "speculators" if folder.is_speculators else f"{', '.join(map(str, flat.get('architectures') or []))}"
    if fmt is None and not folder.is_speculators:
        target = None
        try:
            target = read_target_config(basepath) if basepath else None
        except UserError:
            pass
        engines = _loads_in({f: _engine_problems(folder, f, target) for f in ("sglang", "vllm")})
    else:
        engines = [ENGINE[fmt or "speculators"]]
    return (f"{folder.path} ({layout}, {', '.join(folder.files)}): hidden {s.get('H')}, target hidden "
            f"{s.get('target_H')}, heads {s.get('heads')}/{s.get('kv')} x {s.get('head_dim')}, intermediate "
            f"{s.get('I')}, vocab {s.get('vocab')}, draft vocab {s.get('draft_vocab')}, aux layers {aux}, "
            f"max positions {flat.get('max_position_embeddings')}, {rope}, {'/'.join(dtypes)}; loads in: "
            f"{', '.join(engines) or 'none as is'}")


def _problem_table(problems: list[Problem], title: str):
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("key / field", overflow="fold")
    table.add_column("problem and what to do", overflow="fold")
    for p in problems:
        colour = "red" if p.is_error else "yellow"
        table.add_row(f"[{colour}]{p.severity}[/{colour}]", p.key, p.message)
    return table


def check_command(draft_dir: str | Path, fmt: str | None = None, basepath: str | None = None) -> list[Problem]:
    """``eagle3kit export --check DIR``: print the problems (or an OK summary); UserError on any error."""
    from eagle3kit.ui import make_console

    console = make_console()
    folder = read_folder(draft_dir)
    if basepath is None:  # the target the draft records, when it is here to compare with
        recorded = recorded_target_name(folder)
        try:
            found = recorded and read_target_config(recorded) is not None
        except UserError:
            found = False
        if found:
            basepath = recorded
            console.print(f"compared with the target the draft records, {recorded} (--basepath to name another)",
                          highlight=False, soft_wrap=True)
    problems = _check_folder(folder, fmt, basepath)
    errors = [p for p in problems if p.is_error]
    what = f" for {ENGINE[fmt]}" if fmt else ""
    if problems:
        console.print(_problem_table(problems, f"eagle3kit export --check {draft_dir}{what}"))
    if errors:
        raise UserError(f"{draft_dir}: {len(errors)} error(s){what} (see the table above)")
    console.print(f"[green]OK[/green]: {_summary(folder, fmt, basepath)}"
                  + (f" ({len(problems)} warning(s) above)" if problems else ""), highlight=False, soft_wrap=True)
    return problems


def export_command(draft_dir: str | Path, fmt: str, out_dir: str | Path, basepath: str | None = None,
                   num_speculative_tokens: int | None = None, eval_report: str | Path | None = None,
                   push_to_hub: str | None = None, private: bool = False) -> Path:
    """``eagle3kit export DRAFT_DIR --to FMT --out OUT``: write, check, print how to serve it;
    with ``push_to_hub``, upload the folder to that Hub repository. ``basepath`` defaults to the
    target the draft records, ``num_speculative_tokens`` to the eval report's steps (else 5)."""
    from eagle3kit.ui import make_console

    console = make_console()
    report = _read_eval_report(eval_report) if eval_report else None
    out, warnings, notes = export_draft(draft_dir, fmt, out_dir, basepath=basepath,
                                        num_speculative_tokens=num_speculative_tokens, eval_report=report,
                                        served_as=push_to_hub)
    if warnings:
        console.print(_problem_table(warnings, f"{fmt} export: warnings"))
    for note in notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    console.print(f"[green]Wrote[/green] {out} ({ENGINE[fmt]} layout, checked). Serve with:", highlight=False)
    used = json.loads((out / MARKER).read_text(encoding="utf-8"))  # the target and steps the export settled on
    steps = used["num_speculative_tokens"]
    console.print(serve_hint(fmt, push_to_hub or str(out.resolve()), used["basepath"], steps,
                             serving_tree(report, steps)), highlight=False, soft_wrap=True)
    if push_to_hub:
        url = push_folder(out, push_to_hub, private, f"eagle3kit export --to {fmt}")
        console.print(f"[green]Pushed[/green] {out} to {url}", highlight=False)
    return out


def _read_eval_report(path: str | Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"--eval-report {path}: cannot read it ({error.strerror})") from None
    except ValueError as error:
        raise UserError(f"--eval-report {path}: not valid JSON ({error})") from None
    if not isinstance(report, dict) or "tau" not in report:
        raise UserError(f"--eval-report {path}: not an `eagle3kit eval --json` report (no tau)")
    tau = report["tau"]
    if not isinstance(tau, (int, float)) or tau != tau or tau < 1:
        raise UserError(f"--eval-report {path}: its tau is {tau!r}, not an acceptance length (at least 1); measure "
                        "the draft again with `eagle3kit eval`")
    return report


def push_folder(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created if missing); its URL."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except Exception as error:  # noqa: BLE001 - no login, no network, no rights: the user's to fix
        cause = hub_failure(error)
        if cause == "network":
            fix = ("The Hugging Face Hub could not be reached: check the connection (and that HF_HUB_OFFLINE is not "
                   "set) and run the export again")
        elif cause == "auth":
            fix = (f"Log in with an account that may write to {repo_id} (`hf auth login`, or HF_TOKEN set to a token "
                   "with write access) and run the export again")
        else:
            fix = "Run the export again"
        upload = f"hf upload {repo_id} {shlex.quote(str(folder))}"
        raise UserError(f"--push-to-hub {repo_id}: the upload failed ({first_line(error)}); the export is in "
                        f"{folder}. {fix}, or upload the folder yourself (`{upload}`)") from None
    return f"https://huggingface.co/{repo_id}"
