"""``eagle3kit eval --server``: the acceptance a running SGLang or vLLM server gets, read the
way each engine reports it, checked against small fake servers with known counts."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from eagle3kit.cli import cli
from eagle3kit.eval.server import vllm_counters

#: (completion_tokens, spec_verify_ct) of each SGLang request, in turn
SGLANG = [(33, 8), (17, 4), (65, 16)]
#: (completion_tokens, accepted tokens at each draft position) of each vLLM request: one draft per pass
VLLM = [(32, [8, 6, 4, 2, 1], 10), (21, [5, 4, 3, 2, 1], 5), (1, [0, 0, 0, 0, 0], 0)]


class FakeEngine:
    """``sglang``, ``vllm``, ``vllm-late`` (counters recorded after the response has left) or
    ``vllm-plain`` (vLLM without speculative decoding) on 127.0.0.1."""

    def __init__(self, kind: str) -> None:
        self.kind, self.bodies, self.served, self.pending = kind, [], 0, []
        self.counters = {"drafts": 0, "accepted": 0, "per_pos": [0] * 5}
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body, content_type="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/metrics" and engine.kind.startswith("vllm"):
                    self.send(200, engine.metrics(), "text/plain")
                    engine.record()  # vllm-late: a request's counts show from the scrape after the next one
                elif self.path == "/v1/models" and engine.kind.startswith("vllm"):
                    self.send(200, {"data": [{"id": "tiny-served"}]})
                elif self.path == "/get_server_info" and engine.kind == "sglang":
                    self.send(200, {"version": "fake"})
                else:
                    self.send(404, {"detail": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.bodies.append(body)
                if self.path == "/generate" and engine.kind == "sglang":
                    completion, verify = SGLANG[engine.served % len(SGLANG)]
                    engine.served += 1
                    self.send(200, {"text": "x", "meta_info": {"completion_tokens": completion, "spec_verify_ct": verify}})
                elif self.path == "/v1/completions" and engine.kind in ("vllm", "vllm-late"):
                    completion, per_pos, drafts = VLLM[engine.served % len(VLLM)]
                    engine.served += 1
                    engine.pending.append((drafts, per_pos))
                    if engine.kind == "vllm":
                        engine.record()
                    self.send(200, {"choices": [{"text": "x"}], "usage": {"completion_tokens": completion}})
                else:
                    self.send(404, {"detail": "not found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def record(self) -> None:
        for drafts, per_pos in self.pending:
            self.counters["drafts"] += drafts
            self.counters["accepted"] += sum(per_pos)
            self.counters["per_pos"] = [a + b for a, b in zip(self.counters["per_pos"], per_pos)]
        self.pending = []

    def metrics(self) -> str:
        c = self.counters
        lines = ["# HELP vllm:num_requests_running Number of requests.", 'vllm:num_requests_running{model_name="m"} 0.0']
        if self.kind in ("vllm", "vllm-late"):
            lines += [f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="m"}} {c["drafts"]:.1f}',
                      f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="m"}} {5 * c["drafts"]:.1f}',
                      f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="m"}} {c["accepted"]:.1f}']
            lines += [f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",model_name="m",position="{p}"}} '
                      f'{v:.1f}' for p, v in enumerate(c["per_pos"])]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def engine(request):
    fake = FakeEngine(request.param)
    yield fake
    fake.close()


def run_eval(tiny_target, mixed_data, tmp_path, url, *extra):
    args = ["eval", "--basepath", str(tiny_target), "--server", url, "--data", str(mixed_data / "test.jsonl"),
            "--num-samples", "3", "--max-new-tokens", "64", "--json", str(tmp_path / "served.json"), *extra]
    result = CliRunner().invoke(cli, args)
    report = json.loads((tmp_path / "served.json").read_text()) if result.exit_code == 0 else None
    return result, report


def prompts(tiny_target, mixed_data):
    from eagle3kit.eval import prompts_from_data
    from eagle3kit.train.target import load_tokenizer

    return prompts_from_data(str(mixed_data / "test.jsonl"), load_tokenizer(str(tiny_target)), 3)


@pytest.mark.parametrize("engine", ["sglang"], indirect=True)
def test_sglang_acceptance_from_meta_info(engine, tiny_target, mixed_data, tmp_path):
    result, report = run_eval(tiny_target, mixed_data, tmp_path, engine.url)
    assert result.exit_code == 0, result.output
    assert report["engine"] == "sglang" and report["prompts"] == 3
    assert report["tau"] == pytest.approx((32 + 16 + 64) / (8 + 4 + 16))  # the prefill's token is not a pass's
    assert report["engine_accept_length"] == pytest.approx((33 + 17 + 65) / 28)  # what SGLang logs
    assert report["tokens"] == 115 and report["acceptance_rate"] == []
    assert report["tau_ci95"][0] <= report["tau"] <= report["tau_ci95"][1]
    assert [(r["produced"], r["passes"]) for r in report["per_prompt"]] == [(32, 8), (16, 4), (64, 16)]
    expected = prompts(tiny_target, mixed_data)
    assert [b["input_ids"] for b in engine.bodies] == expected  # the same tokens in-process eval decodes from
    assert all(b["sampling_params"] == {"temperature": 0.0, "max_new_tokens": 64} for b in engine.bodies)
    assert "acceptance length tau 4.000" in result.output


@pytest.mark.parametrize("engine", ["vllm", "vllm-late"], indirect=True)
def test_vllm_acceptance_from_its_counters(engine, tiny_target, mixed_data, tmp_path):
    result, report = run_eval(tiny_target, mixed_data, tmp_path, engine.url, "--draft", "ignored", "--temperature", "0.7",
                              "--top-p", "0.9", "--top-k", "20")
    assert result.exit_code == 0, result.output
    assert "ignored" in result.output  # --draft with --server is said to be ignored
    assert report["engine"] == "vllm" and report["model"] == "tiny-served"
    assert report["tau"] == pytest.approx(1 + 36 / 15)  # vLLM's mean acceptance length
    reached = [13 / 15, 10 / 15, 7 / 15, 4 / 15, 2 / 15]
    assert report["acceptance_reached"] == pytest.approx(reached)
    assert report["acceptance_rate"] == pytest.approx([13 / 15, 10 / 13, 7 / 10, 4 / 7, 2 / 4])
    assert [b["prompt"] for b in engine.bodies] == prompts(tiny_target, mixed_data)
    assert all(b["model"] == "tiny-served" and b["max_tokens"] == 64 for b in engine.bodies)
    assert all((b["temperature"], b["top_p"], b["top_k"]) == (0.7, 0.9, 20) for b in engine.bodies)  # as asked


@pytest.mark.parametrize("engine", ["vllm-plain"], indirect=True)
def test_a_server_without_speculative_decoding_is_named(engine, tiny_target, mixed_data, tmp_path):
    result, _ = run_eval(tiny_target, mixed_data, tmp_path, engine.url)
    assert result.exit_code == 2 and "without speculative decoding" in result.output
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result, _ = run_eval(tiny_target, mixed_data, tmp_path, f"http://127.0.0.1:{port}")
    assert result.exit_code == 2 and "is the server running?" in result.output
    result = CliRunner().invoke(cli, ["eval", "--basepath", str(tiny_target), "--data", str(mixed_data / "test.jsonl")])
    assert result.exit_code == 2 and "give --draft DRAFT (or --server URL" in result.output


def test_vllm_counters_sum_over_labels():
    text = ('vllm:spec_decode_num_drafts_total{engine="0"} 3.0\nvllm:spec_decode_num_drafts_total{engine="1"} 4.0\n'
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="1"} 2.0\n'
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",position="1"} 5.0\n'
            '# TYPE vllm:spec_decode_num_accepted_tokens counter\nvllm:spec_decode_num_accepted_tokens_total 9\n')
    c = vllm_counters(text)
    assert (c["drafts"], c["accepted"], c["per_position"]) == (7.0, 9.0, {1: 7.0})
