"""``eagle3kit regenerate``: replace every assistant answer with the target's own.

The EAGLE-3 recipe trains the draft on conversations whose assistant turns were written
by the target model itself: a draft trained on the original (human or other-model)
answers accepts far fewer tokens. Every system and human message is kept; assistant turn
``k`` is regenerated from a prompt that holds the *regenerated* answers of turns ``< k``,
rendered with the target's chat template.

Backends
    * in-process (default): Hugging Face ``generate``, greedy or sampled, batched and
      sorted by prompt length (left padding), bf16 on a GPU, float32 on a CPU. It works in
      rounds: round ``k`` generates answer ``k`` of every record that has one, so batches
      mix records.
    * ``--server URL``: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang,
      TGI). ``--concurrency`` records are in flight at once (a record's turns one after
      the other), with retries and exponential back-off on connection errors, time-outs,
      HTTP 429 and 5xx; any other HTTP error fails the record at once, with its reason.

Files, for ``--out regen.jsonl``
    * ``regen.partial.jsonl``, the work file: a header line (the settings), then one line
      per finished answer ``{"key", "src", "turn", "answer", "truncated", "tokens"}`` or
      failed turn ``{"key", "src", "turn", "failed"}``, appended and fsynced as results
      arrive. An interrupted run loses at most the requests in flight (the batch being
      generated, in-process). ``--resume`` reads it back (a torn last line is ignored with
      a warning, the first of duplicate answers wins, answers whose input record changed
      are dropped) and continues; failed records are retried.
    * ``regen.jsonl``: written in input order when the run completes (temporary name,
      fsync, rename), unified format ``{"id", "conversations", "truncated_turns"}``:
      ``truncated_turns`` lists the assistant turns (0-based, among assistant turns) that
      hit ``--max-new-tokens`` before the end-of-turn token. ``train`` reads it as is.
      Records without an assistant turn are skipped and failed records left out; both
      are counted.
    * ``regen.manifest.json``: read = regenerated + failed + skipped, the failures with
      their reasons, answers, truncated and empty answers, conversations/s and tokens/s
      of this run, the backend, the model and the settings.

``--resume`` after a completed run keeps the records of the existing output (checked
against the input) and regenerates only what is missing, the failed records for one.
Without ``--resume`` or ``--overwrite`` an existing output or work file is an error.

Use from a script::

    from eagle3kit.regenerate import RegenConfig, run_regenerate
    manifest = run_regenerate(RegenConfig(basepath="Qwen/Qwen2.5-0.5B-Instruct",
                                          input_path="train.jsonl", out_path="regen.jsonl",
                                          batch_size=128, max_new_tokens=512, overwrite=True))
    print(manifest["conversations_per_s"], manifest["tokens_per_s"])

Modules
    * ``config``: :class:`RegenConfig`, the output's sibling files (``manifest_path``,
      ``work_path``).
    * ``answers``: :class:`Answer`, :class:`Failure`, the ``<think>`` block
      (``strip_think``, ``keep_think``, ``shape_answer``).
    * ``records``: :class:`Item` (an input record and its progress), ``read_items``,
      ``apply_system_prompt``, ``source_digest``, ``prompt_messages``, ``regenerated_record``.
    * ``worklog``: the work file: ``read_work``, :class:`WorkLog`, the settings a resumed
      run must share.
    * ``recorder``: :class:`Event`, :class:`Recorder` (results -> records, work file, progress).
    * ``resume``: ``--resume``, from an earlier output and work file.
    * ``hf``: :class:`HFBackend`; ``server``: :class:`ServerBackend`, ``chat_completions_url``.
    * ``run``: :func:`run_regenerate`. torch and transformers are imported only when the
      in-process backend is made.
"""

from eagle3kit.regenerate.answers import THINK_CLOSE, THINK_OPEN, Answer, Failure, keep_think, shape_answer, strip_think
from eagle3kit.regenerate.config import RegenConfig, manifest_path, work_path
from eagle3kit.regenerate.hf import HFBackend
from eagle3kit.regenerate.recorder import REASON_CHARS, Event, Recorder
from eagle3kit.regenerate.records import (
    Item,
    apply_system_prompt,
    prompt_messages,
    read_items,
    regenerated_record,
    source_digest,
)
from eagle3kit.regenerate.run import SHOWN_FAILURES, run_regenerate
from eagle3kit.regenerate.server import ServerBackend, chat_completions_url
from eagle3kit.regenerate.worklog import ANSWER_SETTINGS, WORK_FORMAT, WorkLog, read_work

__all__ = [
    "ANSWER_SETTINGS", "REASON_CHARS", "SHOWN_FAILURES", "THINK_CLOSE", "THINK_OPEN", "WORK_FORMAT",
    "Answer", "Event", "Failure", "HFBackend", "Item", "Recorder", "RegenConfig", "ServerBackend", "WorkLog",
    "apply_system_prompt", "chat_completions_url", "keep_think", "manifest_path", "prompt_messages", "read_items",
    "read_work", "regenerated_record", "run_regenerate", "shape_answer", "source_digest", "strip_think", "work_path",
]
