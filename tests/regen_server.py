"""A small OpenAI-compatible chat-completions server for the ``regenerate`` tests.

``ChatServer`` runs a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a thread and
answers ``GET /v1/models`` and ``POST /v1/chat/completions``. By default the answer is
canned and deterministic (:func:`echo_answer`); ``answer=`` takes any function of the
request (the tests pass one that runs the tiny target). ``fail=`` decides per request to
answer with an HTTP error instead, knowing how many times that prompt was tried before;
``gate`` holds every request from number ``hold_from`` on until the test opens it.
Every request is logged (payload, status) in ``requests``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def last_user(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def echo_answer(messages: list[dict[str, str]]) -> str:
    """The canned answer: the turn number (assistant messages already in the prompt) and
    the last user message."""
    turn = sum(m["role"] == "assistant" for m in messages)
    return f"echo {turn}: {last_user(messages)}"


def prompt_key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True)


class ChatServer:
    def __init__(self, answer: Callable[[dict], Any] | None = None,
                 fail: Callable[[dict, int], tuple[int, Any] | None] | None = None,
                 models: tuple[str, ...] = ("tiny",), hold_from: int | None = None) -> None:
        self.answer = answer or (lambda payload: echo_answer(payload["messages"]))
        self.fail = fail
        self.models = models
        self.hold_from = hold_from
        self.gate = threading.Event()  # opened: held requests go on
        self.held = 0  # requests waiting at the gate
        self.requests: list[tuple[dict, int]] = []  # (payload, HTTP status), in arrival order
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answered(self) -> list[dict]:
        """Payloads answered with 200."""
        with self.lock:
            return [p for p, status in self.requests if status == 200]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.attempts.clear()

    # ------------------------------------------------------------------ serving
    def _handle_chat(self, payload: dict) -> tuple[int, Any]:
        key = prompt_key(payload.get("messages", []))
        with self.lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            number = len(self.requests)
        if self.fail is not None:
            failure = self.fail(payload, attempt)
            if failure is not None:
                with self.lock:
                    self.requests.append((payload, failure[0]))
                return failure
        if self.hold_from is not None and number >= self.hold_from:
            with self.lock:
                self.held += 1
            self.gate.wait()
        result = self.answer(payload)
        if isinstance(result, str):
            result = {"content": result}
        message = {"role": "assistant", "content": result["content"]}
        if "reasoning_content" in result:
            message["reasoning_content"] = result["reasoning_content"]
        body = {"id": f"chatcmpl-{number}", "object": "chat.completion", "model": payload.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": result.get("finish_reason", "stop")}]}
        if result.get("usage", True):
            body["usage"] = {"prompt_tokens": 1, "completion_tokens": result.get("completion_tokens", len(result["content"].split()) + 1)}
        with self.lock:
            self.requests.append((payload, 200))
        return 200, body

    def start(self) -> "ChatServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM does

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: Any) -> None:
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self._send(*server._handle_chat(json.loads(raw)))

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client killed mid-request: not news
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
