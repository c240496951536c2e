"""The ``--server`` backend: an OpenAI-compatible ``/chat/completions`` endpoint, from worker threads."""

from __future__ import annotations

import hashlib
import http.client
import json
import queue
import random
import re
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from eagle3kit import __version__
from eagle3kit.errors import UserError
from eagle3kit.regenerate.answers import Answer, Failure, shape_answer
from eagle3kit.regenerate.config import RegenConfig
from eagle3kit.regenerate.recorder import Event, Recorder
from eagle3kit.regenerate.records import Item, prompt_messages
from eagle3kit.ui import UI


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


#: A server's refusal of a request longer than its context, as vLLM and SGLang word it: the
#: context, and the prompt's tokens (vLLM: "maximum context length is 4096 tokens ... 2952 in
#: the messages" or "... your request has 2952 input tokens"; SGLang: "... of 4096 tokens ...
#: 2952 tokens from the input messages", or for a prompt alone too long "The input (5000
#: tokens) is longer than the model's context length (4096 tokens)").
_CONTEXT = re.compile(r"(?:maximum context length|max_model_len|context length)\D{0,12}?(\d+)", re.I)
_PROMPT = re.compile(r"(\d+) (?:tokens )?(?:in the messages|input tokens|tokens from the input|in the prompt)"
                     r"|input \((\d+) tokens\)", re.I)


def room_left(reason: str) -> int | None:
    """The tokens a server's context leaves for the answer, from its refusal ``reason`` of
    a request too long for it (an HTTP 400); None when ``reason`` is not that."""
    if not reason.startswith("HTTP 400"):
        return None
    context, prompt = _CONTEXT.search(reason), _PROMPT.search(reason)
    if not context or not prompt:
        return None
    return int(context.group(1)) - int(prompt.group(1) or prompt.group(2))


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
        self.cut_by_context = 0  # prompts that had less room left than --max-new-tokens (from the worker threads)
        self.lock = threading.Lock()
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
        try:
            return self._complete(messages, seed, self.cfg.max_new_tokens)
        except Failure as failure:  # a prompt that leaves less than --max-new-tokens: what is left, as in process
            room = room_left(failure.reason)
            if room is None or failure.transient:
                raise
            if room < 1:
                raise Failure(f"{failure.reason} (the prompt fills the model's context)") from None
            answer = self._complete(messages, seed, room)  # finish_reason "length" marks it truncated if cut
            with self.lock:
                self.cut_by_context += 1
            return answer

    def _complete(self, messages: list[dict[str, str]], seed: int, max_tokens: int) -> Answer:
        cfg = self.cfg
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                   "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed}
        if cfg.chat_template_kwargs:  # vLLM and SGLang pass them to the template
            payload["chat_template_kwargs"] = cfg.chat_template_kwargs
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
            if self.cut_by_context:
                self.ui.warn(f"{self.cut_by_context} prompt(s) left less than --max-new-tokens {self.cfg.max_new_tokens} "
                             "in the server's context: they were asked for what was left (answers cut there are "
                             "marked truncated)")
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
