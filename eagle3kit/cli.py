"""The ``eagle3kit`` command line.

Start-up imports only click and eagle3kit's light modules: every command imports what
it needs (datasets, torch, transformers, deepspeed) inside its body, so ``--help`` and
``sources`` answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from eagle3kit import __version__
from eagle3kit.errors import UserError

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
            click.secho("Interrupted. Files are written under temporary names and renamed when complete, "
                        "so nothing partial was left under a real name.", fg="yellow", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="eagle3kit")
def cli():
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
    from rich.console import Console
    from rich.table import Table

    from eagle3kit.sourcespec import source_options

    registry = _registry()
    table = Table(title="eagle3kit sources", show_lines=True)
    for col in ("source", "plugin", "repositories (fallback order)", "options", "description"):
        table.add_column(col)
    for name, source in sorted(registry.sources.items()):
        info = registry.plugins[source.plugin]
        table.add_row(
            name,
            f"{source.plugin}\n{info.distribution} {info.version}",
            "\n".join(r.describe() for r in source.repos) or "(local files only)",
            "\n".join(f"{o.name}: {o.help}" for o in source_options(source)),
            source.description,
        )
    console = Console()
    console.print(table)
    for name, error in registry.failed:
        console.print(f"[red]plugin {name} failed to load:[/red] {error}", highlight=False)


@cli.command()
def plugins():
    """List the loaded plugins with their distributions and versions."""
    registry = _registry()
    for name, info in sorted(registry.plugins.items()):
        owned = sorted(s for s, src in registry.sources.items() if src.plugin == name)
        click.echo(f"{name}\t{info.distribution} {info.version}\tsources: {', '.join(owned) or '-'}")
    for name, error in registry.failed:
        click.echo(f"{name}\tFAILED: {error}")


@cli.command()
@click.option("--source", "sources_", multiple=True, metavar="NAME[:key=value,...]",
              help="A registered source, with options: path=FILE_OR_DIR (local copy), limit=N, weight=W. "
                   f"Repeat for several. Default: {' + '.join(DEFAULT_SOURCES)}.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for train.jsonl, test.jsonl and manifest.json. Default: <cache-dir>/mixed.")
@click.option("--cache-dir", "--cache_dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=DEFAULT_CACHE_DIR, show_default=True, help="Downloads and converted data are cached here.")
@click.option("--test-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="Share of the mix held out as test.jsonl (round(ratio x N) conversations).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle (and of weight= sampling).")
@click.option("--num-proc", type=click.IntRange(min=1), default=None,
              help="Worker processes for the conversion. Default: every CPU for large inputs, one for small.")
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


def main():
    cli(prog_name="eagle3kit")


if __name__ == "__main__":
    main()
