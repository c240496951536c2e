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
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

from eagle3kit import __version__
from eagle3kit.atomic import atomic_write_text, remove_quietly, replacing
from eagle3kit.errors import UserError
from eagle3kit.ui import UI

#: Version of the work-file layout (its header says which).
WORK_FORMAT = 1
#: Settings that change the answers: a resumed run must use the same ones.
ANSWER_SETTINGS = ("basepath", "max_new_tokens", "temperature", "top_p", "seed", "system_prompt", "reasoning")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
#: Failures printed at the end (all of them are in the manifest).
SHOWN_FAILURES = 5
#: Longest reason kept per failure.
REASON_CHARS = 500


@dataclass
class RegenConfig:
    basepath: str
    input_path: str
    out_path: str
    server: str | None = None
    server_model: str | None = None
    api_key: str | None = None
    concurrency: int = 64
    retries: int = 3
    timeout: float = 600.0
    batch_size: int = 32
    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    limit: int | None = None
    system_prompt: str | None = None  # "" removes every system message
    reasoning: str = "drop"  # keep | drop
    resume: bool = False
    overwrite: bool = False
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    # not on the command line
    device: str | None = None  # in-process backend; default cuda when available, else cpu
    backoff_base: float = 1.0  # seconds before the first retry; doubles per retry (0: no waiting)
    backoff_max: float = 60.0
    #: Abort when this many records in a row fail for transient reasons (server down). 0: max(32, 2 * concurrency).
    max_consecutive_failures: int = 0


# --------------------------------------------------------------------------- paths
def _stem(out: Path) -> str:
    for suffix in (".jsonl", ".json"):
        if out.name.endswith(suffix) and len(out.name) > len(suffix):
            return out.name[: -len(suffix)]
    return out.name


def manifest_path(out: str | Path) -> Path:
    """``regen.jsonl`` -> ``regen.manifest.json``."""
    out = Path(out)
    return out.with_name(_stem(out) + ".manifest.json")


def work_path(out: str | Path) -> Path:
    """``regen.jsonl`` -> ``regen.partial.jsonl`` (the resumable work file)."""
    out = Path(out)
    return out.with_name(_stem(out) + ".partial.jsonl")


# --------------------------------------------------------------------------- answers
def strip_think(text: str) -> str:
    """Remove a leading ``<think>...</think>`` block and the white space around it.

    An unclosed block (the answer ran out of tokens while thinking) leaves nothing. A
    ``</think>`` without its opening tag (templates that open the block in the prompt,
    e.g. DeepSeek-R1) drops everything up to it.
    """
    s = text.lstrip()
    if s.startswith(THINK_OPEN):
        end = s.find(THINK_CLOSE)
        return "" if end < 0 else s[end + len(THINK_CLOSE):].strip()
    end = s.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in s[:end]:
        return s[end + len(THINK_CLOSE):].strip()
    return text.strip()


def keep_think(text: str, reasoning: str | None = None) -> str:
    """The answer with its thinking kept as one well-formed leading ``<think>`` block.

    ``reasoning`` is what a server returned apart (``reasoning_content``); a block whose
    opening tag was in the prompt gets it back.
    """
    text = text.strip()
    if reasoning and reasoning.strip():
        return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{strip_think(text) if THINK_CLOSE in text else text}".strip()
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:
        return f"{THINK_OPEN}\n{text}"
    return text


def shape_answer(content: str, reasoning_text: str | None, mode: str) -> str:
    if mode == "drop":
        return strip_think(content)
    return keep_think(content, reasoning_text)


@dataclass
class Answer:
    text: str
    truncated: bool = False
    tokens: int | None = None  # generated tokens (None: the server did not say)


@dataclass
class Failure(Exception):
    reason: str
    transient: bool = False  # a connection problem / 5xx after every retry (the server may be down)

    def __str__(self) -> str:
        return self.reason


# --------------------------------------------------------------------------- records
@dataclass
class Item:
    """One input record and its progress."""

    index: int
    key: str  # the id, made unique (a repeated id gets "#2", "#3", ...)
    id: str
    conversation: list[dict[str, str]]  # after --system-prompt
    turns: list[int]  # positions of the assistant messages
    src: str  # digest of the non-assistant messages: stale work is recognised
    answers: list[Answer] = field(default_factory=list)  # regenerated answers 0..len-1
    failure: tuple[int, str] | None = None  # (turn, reason)
    done_before: bool = False  # complete before this run

    @property
    def complete(self) -> bool:
        return bool(self.turns) and len(self.answers) == len(self.turns)

    @property
    def next_turn(self) -> int:
        return len(self.answers)


def apply_system_prompt(conversation: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """Set (or with ``""`` remove) the system message of a conversation."""
    if system_prompt is None:
        return list(conversation)
    rest = [m for m in conversation if m["from"] != "system"]
    return ([{"from": "system", "value": system_prompt}] if system_prompt else []) + rest


def source_digest(conversation: Sequence[dict[str, str]]) -> str:
    """Digest of a conversation with its assistant answers blanked."""
    shape = [[m["from"], None if m["from"] == "gpt" else m["value"]] for m in conversation]
    return hashlib.blake2b(json.dumps(shape, ensure_ascii=False).encode("utf-8"), digest_size=12).hexdigest()


def prompt_messages(item: Item, answers: Sequence[str], turn: int) -> list[dict[str, str]]:
    """Chat messages of the prompt for assistant turn ``turn``: every message before it,
    with the earlier assistant answers replaced by the regenerated ``answers``."""
    from eagle3kit.train.data import ROLES

    position = item.turns[turn]
    replaced = {p: answers[k] for k, p in enumerate(item.turns[:turn])}
    return [{"role": ROLES[m["from"]], "content": replaced.get(i, m["value"])}
            for i, m in enumerate(item.conversation[:position])]


def regenerated_record(item: Item) -> dict[str, Any]:
    conversation = [dict(m) for m in item.conversation]
    for k, position in enumerate(item.turns):
        conversation[position] = {"from": "gpt", "value": item.answers[k].text}
    return {"id": item.id, "conversations": conversation,
            "truncated_turns": [k for k, a in enumerate(item.answers) if a.truncated]}


def read_items(cfg: RegenConfig, ui: UI) -> list[Item]:
    from eagle3kit.train.data import read_unified

    if not Path(cfg.input_path).is_file():
        raise UserError(f"input file {cfg.input_path!r} does not exist")
    records = read_unified(cfg.input_path)
    if cfg.limit is not None:
        records = itertools.islice(records, cfg.limit)
    items: list[Item] = []
    seen: dict[str, int] = {}
    keys: set[str] = set()
    repeated = 0
    for index, record in enumerate(records):
        rid = record["id"]
        key = rid
        if key in keys:
            repeated += 1
            n = seen.get(rid, 1)
            while key in keys:
                n += 1
                key = f"{rid}#{n}"
            seen[rid] = n
        keys.add(key)
        conversation = apply_system_prompt(record["conversations"], cfg.system_prompt)
        turns = [i for i, m in enumerate(conversation) if m["from"] == "gpt"]
        items.append(Item(index, key, rid, conversation, turns, source_digest(conversation)))
    if repeated:
        ui.warn(f"{cfg.input_path}: {repeated} records repeat an earlier id; they are kept apart by occurrence "
                "(the output keeps their ids)")
    return items


# --------------------------------------------------------------------------- work file
def _settings(cfg: RegenConfig) -> dict[str, Any]:
    s = {name: getattr(cfg, name) for name in ANSWER_SETTINGS}
    s.update(backend="server" if cfg.server else "transformers", limit=cfg.limit)
    if cfg.server:
        s.update(server=cfg.server, model=cfg.server_model or cfg.basepath, concurrency=cfg.concurrency,
                 retries=cfg.retries, timeout=cfg.timeout)
    else:
        s.update(batch_size=cfg.batch_size, dtype=cfg.dtype)
    return s


def _check_settings(previous: dict[str, Any] | None, cfg: RegenConfig, where: Path) -> None:
    if not previous:
        return
    now = _settings(cfg)
    changed = [f"{name} {previous.get(name)!r} -> {now[name]!r}" for name in ANSWER_SETTINGS
               if name in previous and previous[name] != now[name]]
    if changed:
        raise UserError(f"{where} was made with other settings ({'; '.join(changed)}). Re-run with the same "
                        "settings to resume, or pass --overwrite to start again.")


def read_work(path: Path, ui: UI) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """The header, the entries and the length of the good part of a work file.

    A last line without its newline (the run was killed mid-write) is ignored with a
    warning, as is any line that is not JSON."""
    data = path.read_bytes()
    header, entries, good_end, bad = None, [], 0, 0
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            ui.warn(f"{path}: ignoring an unfinished last line ({len(data) - start} bytes; the run was "
                    "interrupted while writing it)")
            break
        line = data[start:end]
        start = good_end = end + 1
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(entry, dict):
            bad += 1
        elif "header" in entry:
            header = header or entry["header"]
        elif isinstance(entry.get("key"), str) and isinstance(entry.get("turn"), int):
            entries.append(entry)
        else:
            bad += 1
    if bad:
        ui.warn(f"{path}: ignoring {bad} unreadable lines")
    return header, entries, good_end


class WorkLog:
    """The append-only work file: one fsync per group of lines, an exclusive lock."""

    def __init__(self, path: Path, header: dict[str, Any], keep_bytes: int | None, has_header: bool) -> None:
        self.path = path
        #: True when this run made the file (nothing earlier runs wrote is in it)
        self.created = not keep_bytes
        self.file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            import fcntl

            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except OSError:
            self.file.close()
            raise UserError(f"{path} is being written by another `eagle3kit regenerate`; wait for it or stop it") from None
        self.file.truncate(keep_bytes or 0)  # drops a torn last line before appending (or everything)
        self.file.seek(0, os.SEEK_END)
        if self.created or not has_header:
            self.write([{"header": header}])

    def write(self, entries: Iterable[dict[str, Any]]) -> None:
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        if not data:
            return
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- recording
@dataclass
class Event:
    item: Item
    turn: int
    answer: Answer | None = None
    failure: Failure | None = None


class Recorder:
    """Applies results to the items, appends them to the work file, moves the progress bar
    and keeps the run's statistics. Called from the main thread only."""

    def __init__(self, log: WorkLog, task, max_consecutive_failures: int) -> None:
        self.log, self.task = log, task
        self.answers = self.truncated = self.conversations = self.failed = 0
        self.tokens: int | None = 0
        self.consecutive_failures = 0
        self.max_consecutive_failures = max_consecutive_failures
        self.last_failure = ""

    def record(self, events: Sequence[Event]) -> int:
        """Record ``events``; return how many records they finished (complete or failed)."""
        lines, finished, advance = [], 0, 0
        for e in events:
            item = e.item
            if e.answer is not None:
                if e.turn != len(item.answers):  # cannot happen: a record's turns are sequential
                    raise RuntimeError(f"answer {e.turn} of {item.key!r} out of order")
                a = e.answer
                item.answers.append(a)
                lines.append({"key": item.key, "src": item.src, "turn": e.turn, "answer": a.text,
                              "truncated": a.truncated, "tokens": a.tokens})
                self.answers += 1
                self.truncated += a.truncated
                self.tokens = None if self.tokens is None or a.tokens is None else self.tokens + a.tokens
                self.consecutive_failures = 0
                advance += 1
                if item.complete:
                    self.conversations += 1
                    finished += 1
            else:
                reason = str(e.failure)[:REASON_CHARS]
                item.failure = (e.turn, reason)
                lines.append({"key": item.key, "src": item.src, "turn": e.turn, "failed": reason})
                self.failed += 1
                finished += 1
                advance += len(item.turns) - e.turn
                self.last_failure = reason
                self.consecutive_failures = self.consecutive_failures + 1 if e.failure.transient else 0
        self.log.write(lines)
        if self.task is not None:
            self.task.update(advance=advance, conversations=self.conversations, failed=self.failed)
        return finished

    @property
    def server_looks_down(self) -> bool:
        return self.consecutive_failures >= self.max_consecutive_failures


# --------------------------------------------------------------------------- in-process backend
class HFBackend:
    """Batched ``generate`` in this process."""

    name = "transformers"

    def __init__(self, cfg: RegenConfig, ui: UI) -> None:
        import torch
        from transformers import AutoTokenizer

        from eagle3kit.train.target import load_target_model

        self.cfg, self.ui, self.torch = cfg, ui, torch
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg.dtype != "auto":
            dtype = getattr(torch, cfg.dtype)
        elif device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.basepath)
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"cannot load the tokenizer of {cfg.basepath!r}: {first}. Give a local folder or a Hub id "
                            "(set HF_TOKEN for gated models).") from None
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError(f"the tokenizer of {cfg.basepath!r} has no chat template; use an instruct/chat model")
        ui.log(f"loading {cfg.basepath} on {device} ({str(dtype).replace('torch.', '')})")
        self.model = load_target_model(cfg.basepath, device=device, dtype=dtype)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer, self.device, self.dtype = tokenizer, device, dtype
        self.eos_ids = self._end_of_turn_ids()
        if not self.eos_ids:
            raise UserError(f"{cfg.basepath!r}: the tokenizer names no end-of-sequence token; cannot tell when an answer ends")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_batch = cfg.batch_size
        name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        self.description = {"device": name, "dtype": str(dtype).replace("torch.", ""),
                            "eos_token_ids": self.eos_ids}

    def _end_of_turn_ids(self) -> list[int]:
        from eagle3kit.train.data import end_of_turn_ids

        return end_of_turn_ids(self.tokenizer, self.model)

    def run(self, items: list[Item], recorder: Recorder) -> None:
        torch = self.torch
        torch.manual_seed(self.cfg.seed)
        rounds = max((len(it.turns) for it in items), default=0)
        for k in range(rounds):
            active = [it for it in items if it.failure is None and it.next_turn == k < len(it.turns)]
            if not active:
                continue
            prompts, failed = [], []
            for it in active:
                messages = prompt_messages(it, [a.text for a in it.answers], k)
                try:
                    text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                except Exception as error:  # jinja errors such as "roles must alternate"
                    failed.append(Event(it, k, failure=Failure(f"chat template: {error}")))
                    continue
                prompts.append((it, text))
            ids = self.tokenizer([t for _, t in prompts], add_special_tokens=False)["input_ids"] if prompts else []
            jobs = []
            for (it, _), row in zip(prompts, ids):
                if self.context and len(row) + self.cfg.max_new_tokens > self.context:
                    failed.append(Event(it, k, failure=Failure(
                        f"the prompt has {len(row)} tokens; with --max-new-tokens {self.cfg.max_new_tokens} it exceeds "
                        f"the model's context of {self.context} tokens")))
                else:
                    jobs.append((it, row))
            if failed:
                recorder.record(failed)
            jobs.sort(key=lambda j: -len(j[1]))  # longest first: an out-of-memory shows at once
            at = 0
            while at < len(jobs):
                batch = jobs[at: at + self.max_batch]
                at += len(batch)
                recorder.record(self._generate(batch, k))

    def _generate(self, batch: list[tuple[Item, list[int]]], k: int) -> list[Event]:
        torch = self.torch
        try:
            return self._generate_batch(batch, k)
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                return [Event(batch[0][0], k, failure=Failure(
                    f"out of memory generating for a {len(batch[0][1])}-token prompt"))]
            self.max_batch = max(1, len(batch) // 2)
            self.ui.warn(f"out of memory with {len(batch)} prompts per batch; going on with {self.max_batch}")
            half = len(batch) // 2
            return self._generate(batch[:half], k) + self._generate(batch[half:], k)

    def _generate_batch(self, batch: list[tuple[Item, list[int]]], k: int) -> list[Event]:
        torch, cfg = self.torch, self.cfg
        width = max(len(row) for _, row in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, row) in enumerate(batch):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        sampling = cfg.temperature > 0
        options: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
                                       eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        if sampling:  # OpenAI semantics: temperature and top-p, no top-k
            options.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **options)
        new = out[:, width:].tolist()
        eos = set(self.eos_ids)
        events = []
        for (it, _), row in zip(batch, new):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            truncated = end is None
            tokens = row if truncated else row[:end]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            events.append(Event(it, k, answer=Answer(shape_answer(text, None, cfg.reasoning), truncated,
                                                     len(tokens) + (0 if truncated else 1))))
        return events


# --------------------------------------------------------------------------- server backend
def chat_completions_url(server: str) -> tuple[str, str, int, str]:
    """``http://host:8000/v1`` -> (scheme, host, port, "/v1"): the base the endpoints hang off.

    A URL without a path gets ``/v1``; one ending in ``/chat/completions`` is cut back."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--server {server!r}: expected a URL such as http://localhost:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    if not path:
        path = "/v1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, path


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:300]
        if isinstance(error, str):
            return error[:300]
        if "detail" in data:
            return str(data["detail"])[:300]
    return text[:300]


class ServerBackend:
    """Requests to an OpenAI-compatible chat-completions server, from worker threads."""

    name = "server"

    def __init__(self, cfg: RegenConfig, ui: UI) -> None:
        self.cfg, self.ui = cfg, ui
        self.scheme, self.host, self.port, self.base = chat_completions_url(cfg.server)
        self.model = cfg.server_model or cfg.basepath
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        "User-Agent": f"eagle3kit/{__version__}"}
        if cfg.api_key:
            self.headers["Authorization"] = f"Bearer {cfg.api_key}"
        self.local = threading.local()
        self.stop = threading.Event()
        self.url = f"{self.scheme}://{self.host}:{self.port}{self.base}"
        self._check_server()
        self.description = {"server": self.url, "model": self.model}

    # -- HTTP
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = self.local.conn = cls(self.host, self.port, timeout=timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def _http(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """One request on this thread's kept-alive connection; a connection the server closed
        while idle is reopened once for free."""
        for fresh in (False, True):
            reused = getattr(self.local, "conn", None) is not None and getattr(self.local, "used", False)
            conn = self._connection(timeout)
            try:
                conn.request(method, self.base + path, body=body, headers=self.headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection()
                if reused and not fresh:
                    continue
                raise
            except BaseException:
                self._drop_connection()
                raise
            self.local.used = True
            if response.will_close:
                self._drop_connection()
                self.local.used = False
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")

    def _check_server(self) -> None:
        """GET /models: a server that is down, refuses the key or lacks the model fails fast."""
        try:
            status, _, body = self._http("GET", "/models", None, min(self.cfg.timeout, 30.0))
        except (OSError, http.client.HTTPException) as error:
            raise UserError(f"cannot reach the server at {self.url} ({type(error).__name__}: {error}); "
                            "is it running, and is --server right (e.g. http://localhost:8000/v1)?") from None
        finally:
            self._drop_connection()
        if status in (401, 403):
            raise UserError(f"the server at {self.url} refused the request (HTTP {status}: {_error_message(body)}); "
                            "give its key with --api-key or $OPENAI_API_KEY")
        if status != 200:
            return  # not every server lists its models
        try:
            names = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if names and self.model not in names:
            if len(names) == 1 and not self.cfg.server_model:
                self.ui.warn(f"the server serves {names[0]!r}, not {self.model!r}; asking it for {names[0]!r} "
                             "(pass --model to choose)")
                self.model = names[0]
            else:
                raise UserError(f"the server at {self.url} serves {', '.join(map(repr, names))}, not {self.model!r}; "
                                "pass --model NAME")

    def complete(self, messages: list[dict[str, str]], seed: int) -> Answer:
        cfg = self.cfg
        payload = {"model": self.model, "messages": messages, "max_tokens": cfg.max_new_tokens,
                   "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed}
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        error = ""
        attempts = cfg.retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                status, headers, data = self._http("POST", "/chat/completions", body, cfg.timeout)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, bad response
                kind = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else type(e).__name__
                error = f"{kind}: {e}" if str(e) else kind
            else:
                if status == 200:
                    try:
                        return self._answer(json.loads(data))
                    except json.JSONDecodeError:
                        error = f"HTTP 200 with a body that is not JSON: {data[:200]!r}"
                elif status in (408, 429) or status >= 500:
                    error = f"HTTP {status}: {_error_message(data)}"
                    retry_after = headers.get("retry-after")
                else:
                    raise Failure(f"HTTP {status}: {_error_message(data)}")
            if attempt + 1 < attempts:
                if self._wait(attempt, retry_after):
                    raise Failure("stopped", transient=True)
        raise Failure(f"{error} (after {attempts} attempt{'s' * (attempts > 1)})", transient=True)

    def _wait(self, attempt: int, retry_after: str | None) -> bool:
        """Back off before retry ``attempt + 1``; True when the run is stopping."""
        cfg = self.cfg
        if cfg.backoff_base <= 0:
            return self.stop.is_set()
        delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt) * random.uniform(0.75, 1.25)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), cfg.backoff_max * 5))
            except ValueError:
                pass
        return self.stop.wait(delay)

    def _answer(self, data: Any) -> Answer:
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise Failure(f"unexpected response (no choices[0].message): {json.dumps(data)[:200]}") from None
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if not isinstance(content, str) or (reasoning is not None and not isinstance(reasoning, str)):
            raise Failure(f"unexpected response (content is not text): {json.dumps(message)[:200]}")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return Answer(shape_answer(content, reasoning, self.cfg.reasoning), choice.get("finish_reason") == "length",
                      tokens if isinstance(tokens, int) else None)

    # -- work
    def _seed(self, item: Item, turn: int) -> int:
        digest = hashlib.blake2b(f"{self.cfg.seed}\0{item.key}\0{turn}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF

    def _worker(self, todo: queue.Queue, results: queue.Queue) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                answers = [a.text for a in item.answers]
                for k in range(len(item.answers), len(item.turns)):
                    if self.stop.is_set():
                        return
                    try:
                        answer = self.complete(prompt_messages(item, answers, k), self._seed(item, k))
                    except Failure as failure:
                        if not self.stop.is_set():
                            results.put(Event(item, k, failure=failure))
                        break
                    except Exception as error:  # a bug: fail the record, keep the run going
                        results.put(Event(item, k, failure=Failure(f"internal error: {error!r}")))
                        break
                    answers.append(answer.text)
                    results.put(Event(item, k, answer=answer))
        finally:
            self._drop_connection()

    def run(self, items: list[Item], recorder: Recorder) -> None:
        todo: queue.Queue = queue.Queue()
        for item in items:
            todo.put(item)
        results: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self._worker, args=(todo, results), daemon=True, name=f"regen-{i}")
                   for i in range(min(self.cfg.concurrency, len(items)))]
        for t in threads:
            t.start()
        remaining = len(items)
        try:
            while remaining:
                try:
                    events = [results.get(timeout=0.5)]
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and results.empty():
                        raise RuntimeError("the request threads stopped with records unfinished")
                    continue
                while True:
                    try:
                        events.append(results.get_nowait())
                    except queue.Empty:
                        break
                remaining -= recorder.record(events)
                if remaining and recorder.server_looks_down:
                    raise UserError(
                        f"{recorder.consecutive_failures} records in a row failed after every retry (last: "
                        f"{recorder.last_failure}); the server at {self.url} looks down. What is done is kept in "
                        f"{recorder.log.path}: re-run with --resume when it is back.")
        finally:
            self.stop.set()
            leftover = []
            while True:  # answers that arrived while stopping are kept too
                try:
                    leftover.append(results.get_nowait())
                except queue.Empty:
                    break
            if leftover:
                recorder.record(leftover)


# --------------------------------------------------------------------------- resume
def _read_output(out: Path) -> Iterable[tuple[str, list[dict[str, str]], set[int]]]:
    """(id, conversation, truncated turns) of each record of an earlier run's output."""
    from eagle3kit.errors import RecordError
    from eagle3kit.unified import validate_unified

    with open(out, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{out} line {number}"
            try:
                record = json.loads(line)
                conversation = validate_unified(record, where)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: bad JSON ({error.msg}); pass --overwrite to start again") from None
            except RecordError as error:
                raise UserError(f"{error}; pass --overwrite to start again") from None
            truncated = record.get("truncated_turns")
            yield (str(record.get("id", f"line{number}")), conversation,
                   {t for t in truncated if isinstance(t, int)} if isinstance(truncated, list) else set())


def _resume_state(cfg: RegenConfig, items: list[Item], out: Path, work: Path, ui: UI) -> tuple[dict | None, int | None]:
    """Fill the items with what earlier runs finished. Returns (work header, good bytes of
    the work file) so that it can be appended to."""
    by_key = {it.key: it for it in items}
    reused = stale = 0
    if out.is_file():
        manifest = manifest_path(out)
        if manifest.is_file():
            try:
                _check_settings(json.loads(manifest.read_text()).get("settings"), cfg, manifest)
            except json.JSONDecodeError:
                ui.warn(f"{manifest}: not JSON; not checking the earlier settings")
        counts: dict[str, int] = {}
        for rid, conversation, truncated in _read_output(out):
            n = counts[rid] = counts.get(rid, 0) + 1
            item = by_key.get(rid if n == 1 else f"{rid}#{n}")
            if item is None:
                continue
            if source_digest(conversation) != item.src:
                stale += 1
                continue
            item.answers = [Answer(conversation[p]["value"], k in truncated) for k, p in enumerate(item.turns)]
            reused += 1
    header, keep = None, None
    if work.is_file():
        header, entries, keep = read_work(work, ui)
        if header:
            _check_settings(header.get("settings"), cfg, work)
        found: dict[str, dict[int, Answer]] = {}
        for e in entries:
            item = by_key.get(e["key"])
            if item is None or "answer" not in e or not isinstance(e.get("answer"), str):
                continue  # a failure (retried now), or a record not in this input / --limit
            if e.get("src") != item.src:
                stale += 1
                continue
            turns = found.setdefault(item.key, {})
            if e["turn"] not in turns:  # the first of duplicates wins
                turns[e["turn"]] = Answer(e["answer"], bool(e.get("truncated")), e.get("tokens"))
        for key, turns in found.items():
            item = by_key[key]
            if item.complete:
                continue  # already in the output
            answers = list(item.answers)
            while len(answers) in turns and len(answers) < len(item.turns):
                answers.append(turns[len(answers)])
            item.answers = answers
    done = sum(it.complete for it in items)
    partial = sum(bool(it.answers) and not it.complete for it in items)
    for it in items:
        it.done_before = it.complete
    if stale:
        ui.warn(f"{stale} earlier results belong to records whose messages changed in {cfg.input_path}; "
                "they are regenerated")
    ui.log(f"resuming: {done} records done before{f', {partial} part-way' if partial else ''}"
           + (f" ({reused} from {out})" if reused else ""))
    return header, keep


# --------------------------------------------------------------------------- run
def _write_output(out: Path, items: Sequence[Item]) -> None:
    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for it in items:
            if it.complete:
                f.write(json.dumps(regenerated_record(it), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rate(n: float, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def _make_backend(cfg: RegenConfig, ui: UI) -> "HFBackend | ServerBackend":
    return ServerBackend(cfg, ui) if cfg.server else HFBackend(cfg, ui)


def run_regenerate(cfg: RegenConfig, ui: UI | None = None) -> dict[str, Any]:
    """Regenerate ``cfg.input_path`` into ``cfg.out_path``; returns the manifest (also
    written beside the output)."""
    ui = ui or UI()
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues, --overwrite starts again")
    if cfg.reasoning not in ("keep", "drop"):
        raise UserError(f"--reasoning must be keep or drop, not {cfg.reasoning!r}")
    if cfg.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise UserError(f"--dtype must be auto, bfloat16, float16 or float32, not {cfg.dtype!r}")
    out = Path(cfg.out_path)
    work, manifest_file = work_path(out), manifest_path(out)
    if out.exists() and Path(cfg.input_path).exists() and out.resolve() == Path(cfg.input_path).resolve():
        raise UserError("--out is the --input file; write the regenerated data somewhere else")
    if not cfg.resume and not cfg.overwrite:
        existing = [str(p) for p in (out, work) if p.exists()]
        if existing:
            raise UserError(f"{' and '.join(existing)} already exist{'s' * (len(existing) == 1)}: pass --resume to "
                            "continue (records already done are skipped) or --overwrite to start again")
    items = read_items(cfg, ui)
    out.parent.mkdir(parents=True, exist_ok=True)

    header, keep = None, None
    if cfg.resume:
        header, keep = _resume_state(cfg, items, out, work, ui)
    settings = _settings(cfg)
    log = WorkLog(work, {"format": WORK_FORMAT, "settings": settings, "input": str(cfg.input_path),
                         "eagle3kit_version": __version__}, None if cfg.overwrite else keep, header is not None)

    skipped = [it for it in items if not it.turns]
    pending = [it for it in items if it.turns and not it.complete]
    remaining_answers = sum(len(it.turns) - len(it.answers) for it in pending)
    backend = None
    load_start = time.time()
    try:
        if pending:
            backend = _make_backend(cfg, ui)
    except BaseException:
        log.close()
        if log.created:
            remove_quietly(work)
        raise
    load_s = time.time() - load_start
    if cfg.overwrite:  # the old output goes once the new run is under way (not when the model fails to load)
        remove_quietly(out)
        remove_quietly(manifest_file)

    gen_start = time.time()
    recorder = Recorder(log, None, cfg.max_consecutive_failures or max(32, 2 * cfg.concurrency))
    try:
        if pending:
            before = len(items) - len(pending) - len(skipped)
            ui.log(f"{len(items)} records: {len(pending)} to regenerate ({remaining_answers} answers)"
                   + (f", {before} done before" if before else "")
                   + (f", {len(skipped)} without an assistant turn (skipped)" if skipped else "")
                   + f"; backend {backend.name}")
            with ui.progress("regenerating", total=remaining_answers) as task:
                recorder.task = task
                backend.run(pending, recorder)
    except KeyboardInterrupt:
        ui.warn(f"interrupted: the answers finished so far are kept in {work}; re-run with --resume to continue")
        raise
    finally:
        log.close()
    gen_s = time.time() - gen_start

    regenerated = [it for it in items if it.complete]
    failed = [it for it in items if it.turns and not it.complete]
    for it in failed:
        if it.failure is None:  # cannot happen when the backend finished
            it.failure = (len(it.answers), "not generated")
    answers = [a for it in regenerated for a in it.answers]
    _write_output(out, items)

    failures = [{"id": it.id, "turn": it.failure[0], "reason": it.failure[1]} for it in failed]
    reasons: dict[str, int] = {}
    for f in failures:
        reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    if isinstance(backend, ServerBackend):
        model = backend.model
    else:
        model = cfg.server_model or cfg.basepath if cfg.server else cfg.basepath
    manifest = {
        "eagle3kit_version": __version__,
        "command": "regenerate",
        "input": str(cfg.input_path),
        "output": str(out),
        "backend": backend.name if backend else ("server" if cfg.server else "transformers"),
        "model": model,
        **(backend.description if backend else {}),
        "settings": settings,
        "read": len(items),
        "regenerated": len(regenerated),
        "failed": len(failed),
        "skipped": len(skipped),
        "done_before": sum(it.done_before for it in items),
        "answers": len(answers),
        "truncated_answers": sum(a.truncated for a in answers),
        "empty_answers": sum(not a.text for a in answers),
        "conversations_per_s": _rate(recorder.conversations, gen_s) if recorder.answers else None,
        "tokens_per_s": _rate(recorder.tokens, gen_s) if recorder.answers and recorder.tokens is not None else None,
        "this_run": {"conversations": recorder.conversations, "answers": recorder.answers,
                     "generated_tokens": recorder.tokens, "truncated_answers": recorder.truncated,
                     "failed": recorder.failed, "load_s": round(load_s, 3), "generation_s": round(gen_s, 3)},
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "failures": failures,
    }
    assert manifest["read"] == manifest["regenerated"] + manifest["failed"] + manifest["skipped"]
    atomic_write_text(manifest_file, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    remove_quietly(work)

    for f in failures[:SHOWN_FAILURES]:
        ui.warn(f"record {f['id']!r} failed at assistant turn {f['turn']}: {f['reason']}")
    if len(failures) > SHOWN_FAILURES:
        ui.warn(f"... and {len(failures) - SHOWN_FAILURES} more failures (all of them in {manifest_file})")
    ui.log(f"read {manifest['read']}: regenerated {manifest['regenerated']}"
           + (f" ({manifest['done_before']} of them before this run)" if manifest["done_before"] else "")
           + f", failed {manifest['failed']}, skipped {manifest['skipped']} (no assistant turn)")
    ui.log(f"answers {manifest['answers']}: {manifest['truncated_answers']} truncated at --max-new-tokens "
           f"{cfg.max_new_tokens}, {manifest['empty_answers']} empty")
    if recorder.answers:
        tps = manifest["tokens_per_s"]
        ui.log(f"this run: {recorder.conversations} conversations, {recorder.answers} answers in {gen_s:.1f} s: "
               f"{manifest['conversations_per_s']} conversations/s, "
               + (f"{tps} tokens/s" if tps is not None else "tokens/s unknown (the server reported no usage)"))
    if failed:
        ui.log(f"re-run with --resume to retry the {len(failed)} failed record{'s' * (len(failed) > 1)}")
    ui.log(f"wrote {out} and {manifest_file}")
    return manifest
