"""The ``eagle3kit`` command line.

Start-up imports only click and eagle3kit's light modules: every command imports what
it needs (datasets, torch, transformers, deepspeed) inside its body, so ``--help`` and
``sources`` answer at once.
"""

from __future__ import annotations

import errno
import math
import sys
from pathlib import Path

import click

from eagle3kit import __version__
from eagle3kit.errors import UserError, was_interrupted

DEFAULT_SOURCES = ("ultrachat", "sharegpt")
DEFAULT_CACHE_DIR = "./data_cache"


class _Group(click.Group):
    """Prints a UserError as one clear line instead of a traceback (exit status 2)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.secho(f"Error: {error}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            _interrupted()
        except OSError as error:  # the disk's answer to a write: a read-only folder, no space, no permission
            if error.errno not in _WRITE_ERRORS:
                if was_interrupted(error):
                    _interrupted()
                raise
            where = f" {error.filename}" if error.filename else ""
            click.secho(f"Error: cannot write{where}: {error.strerror}. Choose another output folder (or free "
                        "space) and run again; files are written under temporary names and renamed when complete, "
                        "so nothing partial was left under a real name.", fg="red", err=True)
            sys.exit(2)
        except Exception as error:
            if was_interrupted(error):  # a worker pool's own error over the Ctrl-C
                _interrupted()
            raise


def _interrupted() -> None:
    click.secho("Interrupted. Nothing half-written is used: outputs are renamed into place when complete, and a "
                "training run's latest points only at a complete checkpoint.", fg="yellow", err=True)
    sys.exit(130)


_WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf, which pass every bound check (nan
    compares false with all of them)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="eagle3kit")
# The DeepSpeed launcher puts --local_rank=N right after the module or script, before the
# command (`deepspeed --module eagle3kit train ...`); LOCAL_RANK in the environment says the same.
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)
def cli(local_rank):
    """Train EAGLE-3 draft models for speculative decoding.

    \b
    Typical flow:
      eagle3kit mix --source ultrachat --source sharegpt --out data/
      eagle3kit train --basepath meta-llama/Llama-3.1-8B-Instruct --trainpath data/train.jsonl \\
                      --testpath data/test.jsonl --savedir checkpoints/
      eagle3kit eval --basepath ... --draft checkpoints/best/draft --data data/test.jsonl
      eagle3kit export checkpoints/best/draft --to sglang --out my-draft/
    """


def _registry():
    from eagle3kit.plugins import load_registry

    return load_registry()


@cli.command()
def sources():
    """List every registered source with its plugin, version, repositories and options."""
    from rich.table import Table

    from rich.markup import escape

    from eagle3kit.sourcespec import COMMON_OPTIONS
    from eagle3kit.ui import make_console

    registry = _registry()
    table = Table(title="eagle3kit sources", show_lines=True)
    for col in ("source", "plugin", "repositories (fallback order)", "own options", "description"):
        table.add_column(col, overflow="fold")  # ids and paths whole, however narrow the column
    for name, source in sorted(registry.sources.items()):
        info = registry.plugins[source.plugin]
        table.add_row(*(escape(cell) for cell in (
            name,
            f"{source.plugin}\n{info.distribution} {info.version}",
            "\n".join(r.describe() for r in source.repos) or "(local files only)",
            "\n".join(f"{o.name}: {o.help}" for o in source.options) or "-",
            source.description,
        )))
    console = make_console()
    console.print(table)
    console.print("Every source also accepts (--source NAME:key=value,...):", highlight=False)
    for o in COMMON_OPTIONS:
        console.print(f"  {o.name}: {o.help}", markup=False, highlight=False, soft_wrap=True)
    for name, error in registry.failed:
        console.print(f"[red]plugin {escape(name)} failed to load:[/red] {escape(error)}", highlight=False,
                      soft_wrap=True)
    for name, info in sorted(registry.blocked.items()):
        console.print(f"[yellow]plugin {escape(name)} ({escape(info.distribution)} {escape(info.version)}) is blocked "
                      "by EAGLE3KIT_BLOCK_PLUGINS:[/yellow] its sources are not listed", highlight=False, soft_wrap=True)


@cli.command()
def plugins():
    """List the plugins with their distributions and versions: loaded, failed and blocked."""
    registry = _registry()
    for name, info in sorted(registry.plugins.items()):
        owned = sorted(s for s, src in registry.sources.items() if src.plugin == name)
        click.echo(f"{name}\t{info.distribution} {info.version}\tsources: {', '.join(owned) or '-'}")
    for name, error in registry.failed:
        click.echo(f"{name}\tFAILED: {error}")
    for name, info in sorted(registry.blocked.items()):
        click.echo(f"{name}\t{info.distribution} {info.version}\tBLOCKED by EAGLE3KIT_BLOCK_PLUGINS")


@cli.command()
@click.option("--source", "sources_", multiple=True, metavar="NAME[:key=value,...]",
              help="A registered source, with options: path=FILE_OR_DIR (local copy), repo=ID[@REV] (another Hub "
                   "dataset in its format; split=, files=), limit=N, weight=W (see `eagle3kit sources`). "
                   f"Repeat for several. Default: {' + '.join(DEFAULT_SOURCES)}.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for train.jsonl, test.jsonl and manifest.json. Default: <cache-dir>/mixed.")
@click.option("--cache-dir", "--cache_dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_CACHE_DIR, show_default=True, help="Downloads and converted data are cached here.")
@click.option("--test-ratio", type=Finite(0, 1, max_open=True), default=0.05, show_default=True,
              help="Share of the mix held out as test.jsonl (round(ratio x N) conversations).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle (and of weight= sampling).")
@click.option("--num-proc", type=click.IntRange(min=1), default=None,
              help="Worker processes for the conversion (at most one per 1,000 records). Default: one per CPU, "
                   "at most 16, from 20,000 records; one below.")
@click.option("--no-dedup", is_flag=True, help="Keep exact duplicate conversations.")
@click.option("--skip-invalid", is_flag=True, help="Drop malformed raw records (counted) instead of stopping.")
def mix(sources_, out, cache_dir, test_ratio, seed, num_proc, no_dedup, skip_invalid):
    """Mix sources into one cleaned, deduplicated, shuffled train/test split (unified JSONL)."""
    from eagle3kit.mix import run_mix, summary_table
    from eagle3kit.sourcespec import SourceSpec
    from eagle3kit.ui import RichUI

    specs = [SourceSpec.parse(s) for s in (sources_ or DEFAULT_SOURCES)]
    out = out or Path(cache_dir) / "mixed"
    ui = RichUI()
    manifest = run_mix(_registry(), specs, out, cache_dir, test_ratio=test_ratio, seed=seed, num_proc=num_proc,
                       dedup=not no_dedup, skip_invalid=skip_invalid, ui=ui)
    ui.table(summary_table(manifest))
    click.echo(f"train: {out / 'train.jsonl'} ({manifest['split']['train']:,} conversations)")
    click.echo(f"test:  {out / 'test.jsonl'} ({manifest['split']['test']:,} conversations)")


def _template_kwargs(ctx, param, value):
    if value is None:
        return None
    from eagle3kit.train.template import parse_template_kwargs

    try:
        return parse_template_kwargs(value) or None
    except UserError as error:
        raise click.BadParameter(str(error).split(": ", 1)[-1]) from None


def template_kwargs_option(what: str):
    """``--chat-template-kwargs JSON`` for a command that renders conversations."""
    return click.option("--chat-template-kwargs", "chat_template_kwargs", callback=_template_kwargs, default=None,
                        metavar="JSON", help="Variables for the chat template, as SGLang and vLLM take them, e.g. "
                        f"'{{\"enable_thinking\": false}}' for Qwen 3 without reasoning; {what}.")


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise click.BadParameter("give three comma-separated hidden-state indices, e.g. 2,16,29") from None
    if len(items) != 3:
        raise click.BadParameter("give exactly three hidden-state indices, e.g. 2,16,29")
    return items


@cli.command()
@click.option("--basepath", default="meta-llama/Llama-3.1-8B-Instruct", show_default=True,
              help="The target model: a Hugging Face id or a local folder.")
@click.option("--trainpath", type=click.Path(dir_okay=False), default=None,
              help="Unified JSONL to train on. Default: mix the default sources into <cache-dir>/mixed first.")
@click.option("--testpath", type=click.Path(dir_okay=False), default=None, help="Unified JSONL to evaluate on.")
@click.option("--savedir", type=click.Path(file_okay=False), default="./checkpoints", show_default=True,
              help="Checkpoints: step_N/ (DeepSpeed state + draft/), latest and best.")
@click.option("--cache-dir", "--cache_dir", "cache_dir", type=click.Path(file_okay=False), default=DEFAULT_CACHE_DIR,
              show_default=True, help="Tokenised data and the draft vocabulary are cached here.")
@click.option("--deepspeed-config", "--deepspeed_config", "deepspeed_config", type=click.Path(dir_okay=False),
              default=None, help="DeepSpeed JSON config. Default: the packaged bf16 ZeRO-2 AdamW config.")
@click.option("--num-epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--lr", type=Finite(min=0, min_open=True), default=1e-4, show_default=True,
              help="Peak learning rate (linear warm-up, then cosine decay).")
@click.option("--warmup-ratio", type=Finite(0, 1), default=0.015, show_default=True)
@click.option("--max-len", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Longest conversation in tokens; longer ones are truncated at a turn boundary (counted).")
@click.option("--max-tokens", type=click.IntRange(min=16), default=16384, show_default=True,
              help="Tokens per micro-batch: conversations are packed into rows of this length.")
@click.option("--draft-vocab-size", type=click.IntRange(min=1), default=32000, show_default=True)
@click.option("--ttt-length", type=click.IntRange(min=1), default=7, show_default=True,
              help="Training-time-test steps unrolled per position.")
@click.option("--ttt-decay", type=Finite(0, 1), default=0.8, show_default=True,
              help="Weight of step k's loss is decay**k.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="Evaluate on the test split every N optimizer steps (and at every epoch end).")
@click.option("--save-every", type=click.IntRange(min=1), default=None, help="Save a checkpoint every N optimizer steps.")
@click.option("--keep-last", type=click.IntRange(min=1), default=2, show_default=True,
              help="Checkpoints kept besides the best one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report-to", type=click.Choice(["wandb", "tensorboard", "none"]), default="wandb", show_default=True,
              help="Metrics logger. wandb without an API key logs offline; WANDB_MODE is honoured.")
@click.option("--run-name", default=None)
@click.option("--resume", is_flag=True, help="Continue the run in --savedir exactly where its latest checkpoint stopped.")
@click.option("--init-draft", default=None, metavar="DRAFT",
              help="Start from this draft (a folder or Hugging Face Hub id, eagle3kit's, SGLang/EAGLE or speculators "
                   "layout): its weights, sizes and vocabulary (--draft-vocab-size is ignored), a fresh optimizer.")
@click.option("--aux-layers", callback=_int_list, default=None,
              help="HF hidden-state indices of the three fused features. Default: 2, N//2, N-3 (1, N//2, N-1 for "
                   "targets under 7 layers, where those repeat).")
@click.option("--attention", type=click.Choice(["eager", "flex"]), default=None,
              help="Draft attention kernel. Default: flex on GPU, eager on CPU.")
@click.option("--target-attention", type=click.Choice(["flex", "flex_attention", "sdpa", "eager"]), default=None,
              help="The target's attention: flex (eagle3kit's compiled block-sparse kernel, default on GPU), "
                   "or a transformers attn_implementation (sdpa is the default on CPU).")
@click.option("--checkpoint-activations", is_flag=True,
              help="Recompute each TTT step in the backward pass (non-reentrant): less memory, more compute.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default=None,
              help="Default: bfloat16 on GPU, float32 on CPU.")
@click.option("--num-proc", type=click.IntRange(min=1), default=None, help="Processes for tokenisation.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--source", "sources_", multiple=True, help="Sources to mix when no --trainpath is given.")
@click.option("--target-tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the target over groups of this many ranks (tensor parallel, for a target too large for one "
                   "GPU; needs accelerate). The draft still trains on every rank's own data.")
@template_kwargs_option("the loss mask, the cache and --resume follow them; render prompts the same way when serving")
@click.option("--dry-run", is_flag=True,
              help="Prepare the data (tokenise, draft vocabulary), print the plan (data, draft size, packing, steps) "
                   "and stop, reading only the target's config and tokenizer: nothing trained or saved.")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)
def train(**options):
    """Train an EAGLE-3 draft for a target model with DeepSpeed.

    \b
    One GPU:   eagle3kit train --basepath MODEL --trainpath train.jsonl --testpath test.jsonl
    8 GPUs:    deepspeed --num_gpus 8 --module eagle3kit train --basepath MODEL ...
    Nodes:     deepspeed --hostfile hosts --module eagle3kit train ...
    """
    from eagle3kit.train.loop import TrainConfig, train as run_train
    from eagle3kit.ui import RichUI

    options.pop("local_rank")
    sources = options.pop("sources_")
    cfg = TrainConfig(**options)
    if sources:
        cfg.sources = list(sources)
    run_train(cfg, RichUI())


@cli.command()
@click.option("--basepath", required=True, help="The target model (HF id or folder): its tokenizer and chat template, "
              "and with the in-process backend the model that answers.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), required=True, help="Unified JSONL to regenerate.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Unified JSONL written; a manifest goes beside it (<out>.manifest.json, e.g. regen.manifest.json).")
@click.option("--server", default=None, help="Base URL of an OpenAI-compatible server (vLLM, SGLang, TGI), e.g. "
              "http://localhost:8000/v1. Default: generate in this process with transformers.")
@click.option("--model", "server_model", default=None, help="Model name sent to the server. Default: --basepath.")
@click.option("--api-key", default=None, envvar="OPENAI_API_KEY", help="Bearer token for the server ($OPENAI_API_KEY).")
@click.option("--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests in flight at once (server backend).")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries per request, with exponential back-off (server backend).")
@click.option("--timeout", type=Finite(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds per request (server backend).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Prompts per generate() call (in-process backend).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--temperature", type=Finite(min=0), default=0.0, show_default=True)
@click.option("--top-p", type=Finite(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Regenerate only the first N records.")
@click.option("--system-prompt", default=None, help="System message for every conversation (replaces one it has).")
@click.option("--reasoning", type=click.Choice(["keep", "drop"]), default="drop", show_default=True,
              help="For reasoning models: keep or drop the <think>...</think> block of each answer.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run: records already done are skipped.")
@click.option("--overwrite", is_flag=True, help="Start again, replacing an existing --out.")
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True)
@template_kwargs_option("in process they shape each prompt; a --server gets them as chat_template_kwargs")
def regenerate(**options):
    """Replace every assistant answer with the target's own, turn by turn (the EAGLE-3 recipe)."""
    from eagle3kit.regenerate import RegenConfig, run_regenerate
    from eagle3kit.ui import RichUI

    run_regenerate(RegenConfig(**options), RichUI())


@cli.command(name="eval")
@click.option("--basepath", required=True, help="The target model (HF id or folder).")
@click.option("--draft", "draft_path", type=click.Path(file_okay=False), default=None,
              help="A draft folder (config.json + weights), e.g. checkpoints/best/draft, or a Hugging Face Hub id; "
                   "drafts trained elsewhere (SGLang/EAGLE or speculators layout) work too.")
@click.option("--server", default=None, metavar="URL",
              help="Instead of --draft: measure a running SGLang or vLLM server (its own draft and settings) on the "
                   "same prompts, one at a time, e.g. http://localhost:30000.")
@click.option("--engine", type=click.Choice(["auto", "sglang", "vllm"]), default="auto", show_default=True,
              help="With --server: which engine it is (auto: vLLM if /metrics has vllm: counters, else SGLang).")
@click.option("--timeout", type=Finite(min=0, min_open=True), default=600.0, show_default=True,
              help="With --server: seconds per request.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True, help="Unified JSONL (test split).")
@click.option("--num-samples", type=click.IntRange(min=1), default=80, show_default=True,
              help="Prompts to decode: every human turn of the data, with the conversation before it.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True, help="Draft tokens proposed per target pass.")
@click.option("--temperature", type=Finite(min=0), default=0.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --temperature > 0: sample from the K most likely tokens only (0: all).")
@click.option("--top-p", type=Finite(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="With --temperature > 0: nucleus sampling, the fewest most likely tokens that reach P (1: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON here.")
@click.option("--no-baseline", is_flag=True, help="Skip plain greedy decoding (no speed-up figure).")
@click.option("--topk", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tree drafting: each level expands the K best candidates, K children each (SGLang's "
                   "--speculative-eagle-topk). 1: a chain.")
@click.option("--num-draft-tokens", type=click.IntRange(min=2), default=None,
              help="Tree nodes the target checks per pass, root included (SGLang's --speculative-num-draft-tokens). "
                   "Default: steps + 1 for a chain, else 1 + topk x steps, at most 64.")
@click.option("--acceptance", type=click.Choice(["rejection", "target-only"]), default=None,
              help="The rule at temperature > 0. rejection: the draft samples its proposals, the textbook rule "
                   "(chains; the default for them). target-only: the draft's top tokens, each taken with the "
                   "target's probability, as SGLang and vLLM verify (trees; what a server will get).")
@template_kwargs_option("for the prompts (give what training used)")
@click.option("--target-tp", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the target over this many processes (tensor parallel; start them with torchrun "
                   "--nproc_per_node N -m eagle3kit eval ...; needs accelerate).")
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)
def eval_(**options):
    """Measure a draft by real speculative decoding: acceptance length, per-position acceptance, speed-up
    (or, with --server, what a running SGLang or vLLM server's draft gets on the same prompts)."""
    from eagle3kit.eval import EvalConfig, run_eval
    from eagle3kit.ui import RichUI

    options.pop("local_rank")
    run_eval(EvalConfig(**options), RichUI())


@cli.command()
@click.argument("draft_dir", type=click.Path(file_okay=False))
@click.option("--to", "fmt", type=click.Choice(["sglang", "vllm", "speculators"]), default=None,
              help="Target serving format.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Folder to write.")
@click.option("--basepath", default=None,
              help="The target model: its name is recorded as the speculators verifier; a local folder (or a cached "
                   "Hub id) is also compared with the draft (sizes, vocabulary, rope, max positions). Default: the "
                   "target the draft records.")
@click.option("--num-speculative-tokens", type=click.IntRange(min=1), default=None,
              help="Draft tokens per pass in the serve command and the speculators format. Default: the "
                   "--eval-report's --steps, else 5.")
@click.option("--check", "check_only", is_flag=True, help="Only validate DRAFT_DIR and name each problem.")
@click.option("--eval-report", type=click.Path(dir_okay=False), default=None,
              help="An `eagle3kit eval --json` report whose acceptance figures go into the model card (README.md).")
@click.option("--push-to-hub", "push_to_hub", default=None, metavar="REPO_ID",
              help="Upload the export to this Hugging Face Hub model repository (created if missing).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repository private.")
def export(draft_dir, fmt, out_dir, basepath, num_speculative_tokens, check_only, eval_report, push_to_hub, private):
    """Write a draft in the layout SGLang, vLLM or vLLM speculators loads (checked), or --check one."""
    from eagle3kit.export import check_command, export_command

    if private and not push_to_hub:
        raise click.UsageError("--private applies to the repository --push-to-hub REPO_ID creates; give both or neither")
    if check_only:
        writes = [name for name, given in (("--out", out_dir), ("--push-to-hub", push_to_hub),
                                           ("--eval-report", eval_report),
                                           ("--num-speculative-tokens", num_speculative_tokens)) if given]
        if writes:
            verb = "is" if len(writes) == 1 else "are"
            raise click.UsageError(f"--check only validates DRAFT_DIR; {', '.join(writes)} {verb} for an export: drop "
                                   "--check to export, or drop them to check")
        check_command(draft_dir, fmt=fmt, basepath=basepath)
    else:
        if fmt is None or out_dir is None:
            raise click.UsageError("give --to FORMAT and --out DIR, or --check")
        export_command(draft_dir, fmt, out_dir, basepath=basepath, num_speculative_tokens=num_speculative_tokens,
                       eval_report=eval_report, push_to_hub=push_to_hub, private=private)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("./eagle3kit-demo"),
              show_default=True, help="Folder for the data, the tiny target, the checkpoints and the report.")
def demo(out):
    """The whole path on the bundled samples, on a CPU in a few minutes: mix, build a tiny
    target, train a draft, measure its acceptance length, export it for the engines."""
    from eagle3kit.demo import run_demo
    from eagle3kit.ui import RichUI

    run_demo(out, RichUI())


def main():
    cli(prog_name="eagle3kit")


if __name__ == "__main__":
    main()
