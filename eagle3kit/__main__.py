"""``python -m eagle3kit``: the CLI (what ``deepspeed --module eagle3kit`` and
``torchrun -m eagle3kit`` start on every rank)."""

from eagle3kit.cli import main

main()
