"""``eagle3kit eval --server URL``: the acceptance length a running SGLang or vLLM server
gets from its draft, on the same prompts as the in-process evaluation.

The prompts go one at a time (batch 1, as the in-process decoder runs), as token ids, so
the server sees exactly the tokens ``eagle3kit eval`` would decode from. What each engine
reports:

* SGLang (``POST /generate``): ``meta_info.completion_tokens`` and ``spec_verify_ct``
  per request. The first token comes from the prefill, so the tokens the verification
  passes produced are ``completion_tokens - 1``; SGLang's own logs divide
  ``completion_tokens`` itself (``engine_accept_length``, a little higher).
* vLLM (``POST /v1/completions``): the Prometheus counters at ``/metrics``, read before
  and after each request: ``vllm:spec_decode_num_drafts``, ``..._num_accepted_tokens``
  and ``..._num_accepted_tokens_per_pos`` (by draft position). tau is
  ``1 + accepted / drafts``, which is also vLLM's mean acceptance length. The counters
  are read once more at the end: what vLLM recorded after a response had left counts too.

tau is therefore the in-process evaluation's figure (tokens per verification pass),
with the same bootstrap interval over prompts.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

from eagle3kit import __version__
from eagle3kit.errors import UserError
from eagle3kit.ui import UI

_COUNTER = re.compile(r'^(vllm:spec_decode_num_(?:drafts|draft_tokens|accepted_tokens|accepted_tokens_per_pos))'
                      r'(?:_total)?(\{[^}]*\})?\s+([0-9.eE+-]+)\s*$', re.MULTILINE)
_POSITION = re.compile(r'position="(\d+)"')


class Server:
    """A tiny HTTP client for one server (sequential requests, JSON in and out)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--server {url!r}: expected a URL such as http://localhost:30000")
        self.url, self.timeout = url, timeout
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.root = f"{parts.scheme}://{parts.hostname}:{self.port}"

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"User-Agent": f"eagle3kit/{__version__}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise UserError(f"--server {self.root}: {method} {path} failed ({error}); is the server running?") from None
        finally:
            conn.close()

    def json(self, method: str, path: str, body: dict | None = None) -> Any:
        status, data = self.request(method, path, body)
        if status != 200:
            raise UserError(f"--server {self.root}: {method} {path} answered HTTP {status}: "
                            f"{data.decode('utf-8', 'replace').strip()[:300]}")
        try:
            return json.loads(data)
        except ValueError:
            raise UserError(f"--server {self.root}: {method} {path} did not answer JSON") from None


def vllm_counters(text: str) -> dict[str, Any]:
    """The speculative-decoding counters of a vLLM ``/metrics`` page (summed over labels;
    per position as a list)."""
    out: dict[str, Any] = {"drafts": 0.0, "draft_tokens": 0.0, "accepted": 0.0, "per_position": {}}
    names = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted"}
    for name, labels, value in _COUNTER.findall(text):
        if name.endswith("_per_pos"):
            match = _POSITION.search(labels or "")
            if match:
                pos = int(match.group(1))
                out["per_position"][pos] = out["per_position"].get(pos, 0.0) + float(value)
        else:
            out[names[name]] += float(value)
    return out


def detect_engine(server: Server) -> str:
    """``vllm`` (its /metrics has spec_decode counters) or ``sglang`` (it has /get_server_info)."""
    status, body = server.request("GET", "/metrics")
    text = body.decode("utf-8", "replace") if status == 200 else ""
    if "vllm:" in text:
        if "vllm:spec_decode_num_drafts" not in text:
            raise UserError(f"--server {server.root} is a vLLM server without speculative decoding (no "
                            "vllm:spec_decode_* metrics); start it with --speculative-config '{\"method\": \"eagle3\", ...}'")
        return "vllm"
    for path in ("/get_server_info", "/server_info"):
        if server.request("GET", path)[0] == 200:
            return "sglang"
    raise UserError(f"--server {server.root}: neither vLLM (/metrics with vllm: counters) nor SGLang "
                    "(/get_server_info); give --engine sglang|vllm")


def _sglang_one(server: Server, ids: list[int], max_new_tokens: int, sampling: dict[str, Any]) -> tuple[int, int, int]:
    out = server.json("POST", "/generate", {"input_ids": ids, "sampling_params": {
        **sampling, "max_new_tokens": max_new_tokens}})
    if isinstance(out, list):
        out = out[0]
    meta = out.get("meta_info", {}) if isinstance(out, dict) else {}
    completion, verify = int(meta.get("completion_tokens", 0)), int(meta.get("spec_verify_ct", 0) or 0)
    if completion > 1 and verify == 0:
        raise UserError(f"--server {server.root}: SGLang reports no speculative verification (spec_verify_ct 0); "
                        "start it with --speculative-algorithm EAGLE3 --speculative-draft-model-path DRAFT")
    return completion, max(completion - 1, 0), verify


def _scrape(server: Server) -> dict[str, Any]:
    return vllm_counters(server.request("GET", "/metrics")[1].decode("utf-8", "replace"))


def _delta(after: dict[str, Any], before: dict[str, Any]) -> tuple[int, int, dict[int, float]]:
    """(drafts, accepted tokens, accepted per position) between two scrapes."""
    per_position = {p: after["per_position"][p] - before["per_position"].get(p, 0.0) for p in after["per_position"]}
    return round(after["drafts"] - before["drafts"]), round(after["accepted"] - before["accepted"]), per_position


def _vllm_one(server: Server, model: str, ids: list[int], max_new_tokens: int,
              sampling: dict[str, Any]) -> tuple[int, int, int, dict[int, float]]:
    before = _scrape(server)
    out = server.json("POST", "/v1/completions", {"model": model, "prompt": ids, "max_tokens": max_new_tokens,
                                                  **sampling})
    drafts, accepted, per_position = _delta(_scrape(server), before)
    return int(out.get("usage", {}).get("completion_tokens", 0)), drafts + accepted, drafts, per_position


def served_acceptance(url: str, engine: str, prompts: list[list[int]], max_new_tokens: int, sampling: dict[str, Any],
                      timeout: float, ui: UI) -> dict[str, Any]:
    """Decode ``prompts`` one at a time on the server with the ``sampling`` parameters
    (``temperature``, and ``top_k`` / ``top_p`` where set); the report (tau with its
    interval, per-position acceptance where the engine counts it, tokens/s)."""
    from eagle3kit.eval.report import bootstrap_interval

    server = Server(url, timeout)
    engine = detect_engine(server) if engine == "auto" else engine
    model = start_counters = None
    if engine == "vllm":
        models = server.json("GET", "/v1/models").get("data") or [{}]
        model = models[0].get("id")
        start_counters = _scrape(server)
    produced, passes, completions, per_position = [], [], [], {}
    start = time.perf_counter()
    with ui.progress(f"decoding on the {engine} server", total=len(prompts)) as task:
        for ids in prompts:
            if engine == "sglang":
                completion, made, verified = _sglang_one(server, ids, max_new_tokens, sampling)
            else:
                completion, made, verified, positions = _vllm_one(server, model, ids, max_new_tokens, sampling)
                for p, v in positions.items():
                    per_position[p] = per_position.get(p, 0.0) + v
            completions.append(completion)
            produced.append(made)
            passes.append(verified)
            task.update(advance=1, tau=f"{sum(produced) / max(sum(passes), 1):.2f}")
    seconds = time.perf_counter() - start
    if start_counters is not None and passes:  # counts vLLM recorded after a response left go to the last prompt
        drafts, accepted, positions = _delta(_scrape(server), start_counters)
        late_drafts = drafts - sum(passes)
        if late_drafts > 0 or drafts + accepted > sum(produced):
            passes[-1] += max(late_drafts, 0)
            produced[-1] += max(drafts + accepted - sum(produced), 0)
            per_position = positions
    total = sum(passes)
    if total == 0:
        raise UserError(f"--server {server.root}: no verification pass was counted over {len(prompts)} prompts; is "
                        "speculative decoding on?")
    tau = sum(produced) / total
    reached = [per_position[p] / total for p in sorted(per_position)]
    conditional = [r / prev if prev else float("nan") for r, prev in zip(reached, [1.0] + reached[:-1])]
    report = {"tau": tau, "tau_ci95": list(bootstrap_interval(produced, passes)), "passes": total,
              "tokens": sum(completions), "acceptance_rate": conditional, "acceptance_reached": reached,
              "server": server.root, "engine": engine, "prompts": len(prompts), "spec_seconds": seconds,
              "spec_tokens_per_s": sum(completions) / max(seconds, 1e-9),
              "per_prompt_produced": produced, "per_prompt_passes": passes}
    if engine == "sglang":
        report["engine_accept_length"] = sum(completions) / total
    if model:
        report["model"] = model
    return report
