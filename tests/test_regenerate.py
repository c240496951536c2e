"""``eagle3kit regenerate``: every assistant answer replaced by the target's own.

The server backend runs against a small OpenAI-compatible server started on 127.0.0.1
(tests/regen_server.py) with canned answers, failures and a gate that holds requests
(for a client killed midway and resumed); the in-process backend runs on a tiny Llama
target built once per session, and a server that serves that same target must give the
same answers. Nothing sleeps: back-off is switched off (``backoff_base=0``)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLES, read_jsonl, write_jsonl
from regen_server import ChatServer, echo_answer, last_user
from eagle3kit.errors import UserError
from eagle3kit.regenerate import (
    Item,
    RegenConfig,
    apply_system_prompt,
    chat_completions_url,
    keep_think,
    manifest_path,
    prompt_messages,
    read_work,
    run_regenerate,
    source_digest,
    strip_think,
    work_path,
)
from helpers import G, H, RecordingUI


# --------------------------------------------------------------------------- data
def convo(*pairs, system=None):
    conversation = [{"from": "system", "value": system}] if system else []
    for human, gpt in pairs:
        conversation += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return conversation


def records(n_plain: int = 8) -> list[dict]:
    """Records with 1-3 assistant turns, a system message, and one without any answer."""
    out = [
        {"id": "sys", "conversations": convo(("Hello there", "old 1"), ("And then?", "old 2"), system="Be kind.")},
        {"id": "three", "conversations": convo(("q one", "a"), ("q two", "b"), ("q three", "c"))},
        {"id": "noanswer", "conversations": [{"from": "human", "value": "a question left open"}]},
        {"id": "one", "conversations": convo(("single question", "old"))},
    ]
    out += [{"id": f"r{i}", "conversations": convo((f"first {i}", "x"), (f"second {i}", "y"))} for i in range(n_plain)]
    return out


def echo_expected(record: dict, system_prompt: str | None = None) -> list[dict]:
    """The conversation the echo server's answers make of ``record``."""
    conversation = apply_system_prompt(record["conversations"], system_prompt)
    out, turn, user = [], 0, ""
    for m in conversation:
        if m["from"] == "gpt":
            out.append({"from": "gpt", "value": f"echo {turn}: {user}"})
            turn += 1
        else:
            user = m["value"] if m["from"] == "human" else user
            out.append(dict(m))
    return out


def answers_of(rs) -> int:
    return sum(m["from"] == "gpt" for r in rs for m in r["conversations"])


def server_cfg(tmp_path: Path, server: ChatServer, input_path: Path, **kw) -> RegenConfig:
    options = dict(basepath="tiny", input_path=str(input_path), out_path=str(tmp_path / "out" / "regen.jsonl"),
                   server=server.url, concurrency=4, retries=2, timeout=30.0, max_new_tokens=64, backoff_base=0.0)
    options.update(kw)
    return RegenConfig(**options)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds (the test fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.02)


# --------------------------------------------------------------------------- pure helpers
def test_file_names_beside_the_output(tmp_path):
    assert manifest_path(tmp_path / "regen.jsonl") == tmp_path / "regen.manifest.json"
    assert work_path(tmp_path / "regen.jsonl") == tmp_path / "regen.partial.jsonl"
    assert manifest_path("data/out") == Path("data/out.manifest.json")


@pytest.mark.parametrize("text, dropped", [
    ("<think>\nplan it\n</think>\n\nThe answer.", "The answer."),
    ("  <think>a</think>b", "b"),
    ("<think>never closed because it ran out", ""),
    ("plan without opening tag</think>\n\nThe answer.", "The answer."),
    ("No thinking here.\n", "No thinking here."),
    ("Text mentioning <think> later </think> stays", "Text mentioning <think> later </think> stays"),
])
def test_reasoning_drop(text, dropped):
    assert strip_think(text) == dropped


def test_reasoning_follows_what_the_prompt_opened():
    """In-process the prompt is known: a closing tag closes a block only if the prompt
    opened one (DeepSeek-R1); an answer that merely mentions it is kept whole."""
    from eagle3kit.regenerate.answers import opened_in_prompt

    mention = "Models end their thoughts with </think>; the rest is the reply."
    assert strip_think(mention, opened=False) == mention and keep_think(mention, opened=False) == mention
    assert strip_think("plan</think>\n\nThe answer.", opened=True) == "The answer."
    assert keep_think("plan</think>\n\nThe answer.", opened=True) == "<think>\nplan</think>\n\nThe answer."
    assert strip_think("still planning", opened=True) == ""  # ran out of tokens inside the block
    assert opened_in_prompt("<|User|>q<|Assistant|><think>\n") and not opened_in_prompt("<|im_start|>assistant\n")
    assert not opened_in_prompt("<think>\n\n</think>\n\n")  # Qwen 3 without thinking: closed in the prompt


def test_reasoning_keep():
    assert keep_think("<think>a</think>\n\nb") == "<think>a</think>\n\nb"
    assert keep_think("plan</think>\n\nb") == "<think>\nplan</think>\n\nb"  # opening tag was in the prompt
    assert keep_think("b", reasoning="plan") == "<think>\nplan\n</think>\n\nb"


def test_server_urls():
    assert chat_completions_url("http://localhost:8000/v1") == ("http", "localhost", 8000, "/v1")
    assert chat_completions_url("http://h:1/v1/chat/completions") == ("http", "h", 1, "/v1")
    assert chat_completions_url("localhost:30000") == ("http", "localhost", 30000, "/v1")
    assert chat_completions_url("https://api.example.com/openai/v1/") == ("https", "api.example.com", 443, "/openai/v1")
    with pytest.raises(UserError, match="expected a URL"):
        chat_completions_url("ftp://x/v1")


def test_prompt_holds_the_regenerated_answers_and_the_system_prompt():
    conversation = apply_system_prompt(convo(("h0", "g0"), ("h1", "g1"), ("h2", "g2"), system="old"), "new")
    assert conversation[0] == {"from": "system", "value": "new"}
    assert apply_system_prompt(convo(("h", "g")), "S")[0] == {"from": "system", "value": "S"}
    assert apply_system_prompt(convo(("h", "g"), system="old"), "") == convo(("h", "g"))
    turns = [i for i, m in enumerate(conversation) if m["from"] == "gpt"]
    item = Item(0, "k", "k", conversation, turns, source_digest(conversation))
    assert prompt_messages(item, [], 0) == [{"role": "system", "content": "new"}, {"role": "user", "content": "h0"}]
    assert prompt_messages(item, ["R0", "R1"], 2) == [
        {"role": "system", "content": "new"}, {"role": "user", "content": "h0"}, {"role": "assistant", "content": "R0"},
        {"role": "user", "content": "h1"}, {"role": "assistant", "content": "R1"}, {"role": "user", "content": "h2"}]
    # the digest ignores the answers, not the questions
    assert source_digest(convo(("h", "a"))) == source_digest(convo(("h", "b"))) != source_digest(convo(("H", "a")))


def test_work_file_with_a_torn_last_line(tmp_path):
    path = tmp_path / "w.partial.jsonl"
    path.write_bytes(b'{"header": {"settings": {}}}\n{"key": "a", "src": "s", "turn": 0, "answer": "x"}\n'
                     b'not json\n{"key": "b", "src": "s", "tu')
    ui = RecordingUI()
    header, entries, good = read_work(path, ui)
    assert header == {"settings": {}} and [e["key"] for e in entries] == ["a"]
    assert good == len(path.read_bytes()) - len(b'{"key": "b", "src": "s", "tu')
    assert any("unfinished last line" in w for w in ui.warnings) and any("1 unreadable" in w for w in ui.warnings)


# --------------------------------------------------------------------------- server backend
def test_server_regenerates_turn_by_turn(tmp_path):
    rs = records()
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    with ChatServer() as server:
        cfg = server_cfg(tmp_path, server, src, temperature=0.7, top_p=0.9, seed=5, max_new_tokens=33)
        manifest = run_regenerate(cfg, RecordingUI())
        payloads = server.answered()
    out = read_jsonl(Path(cfg.out_path))
    kept = [r for r in rs if r["id"] != "noanswer"]
    assert [r["id"] for r in out] == [r["id"] for r in kept]  # input order, the skipped one left out
    for got, record in zip(out, kept):
        assert got["conversations"] == echo_expected(record)
        assert got["truncated_turns"] == []
    # turn k's prompt holds the regenerated answers of turns < k, never the original ones
    assert len(payloads) == answers_of(kept)
    for p in payloads:
        assert p["model"] == "tiny" and p["max_tokens"] == 33 and p["temperature"] == 0.7 and p["top_p"] == 0.9
        assert isinstance(p["seed"], int) and "chat_template_kwargs" not in p
        for k, m in enumerate(x for x in p["messages"] if x["role"] == "assistant"):
            assert m["content"].startswith(f"echo {k}: ")
    three = [p for p in payloads if last_user(p["messages"]) == "q three"][0]
    assert [m["content"] for m in three["messages"]] == ["q one", "echo 0: q one", "q two", "echo 1: q two", "q three"]
    assert len({p["seed"] for p in payloads}) > 1  # a seed per request, derived from --seed
    assert manifest["read"] == len(rs) == manifest["regenerated"] + manifest["failed"] + manifest["skipped"]
    assert (manifest["regenerated"], manifest["failed"], manifest["skipped"]) == (len(kept), 0, 1)
    assert manifest["answers"] == answers_of(kept) and manifest["truncated_answers"] == 0
    assert manifest["backend"] == "server" and manifest["model"] == "tiny" and manifest["server"] == server.url
    assert manifest["conversations_per_s"] > 0 and manifest["tokens_per_s"] > 0
    assert manifest["settings"]["max_new_tokens"] == 33 and manifest["settings"]["seed"] == 5
    assert json.loads(manifest_path(cfg.out_path).read_text()) == manifest
    assert not work_path(cfg.out_path).exists()
    # train takes it as is
    from eagle3kit.train.data import read_unified

    assert [r["id"] for r in read_unified(cfg.out_path)] == [r["id"] for r in kept]


def flaky(payload, attempt):
    """500 on the first try of every third prompt, 429 on the first try of every fifth,
    a permanent 400 for the poisoned one."""
    text = last_user(payload["messages"])
    if "POISON" in text:
        return 400, {"error": {"message": "this prompt is not allowed", "type": "BadRequestError"}}
    digest = sum(map(ord, text))
    if attempt == 0 and digest % 3 == 0:
        return 500, "Internal Server Error"
    if attempt == 0 and digest % 5 == 0:
        return 429, {"error": {"message": "slow down"}}
    return None


def long_answers(payload):
    text = last_user(payload["messages"])
    if "LONG" in text:
        return {"content": "cut short", "finish_reason": "length"}
    return echo_answer(payload["messages"])


def test_server_failures_retries_truncation_and_resume(tmp_path):
    rs = records()
    rs.insert(2, {"id": "poison", "conversations": convo(("fine", "x"), ("POISON here", "y"))})
    rs.append({"id": "long", "conversations": convo(("LONG please", "x"), ("short", "y"))})
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    with ChatServer(answer=long_answers, fail=flaky) as server:
        cfg = server_cfg(tmp_path, server, src, retries=1)
        ui = RecordingUI()
        manifest = run_regenerate(cfg, ui)
        statuses = [s for _, s in server.requests]
    assert 500 in statuses and 429 in statuses  # retried ...
    assert manifest["failed"] == 1  # ... and only the 400 is a failure
    assert manifest["failures"] == [{"id": "poison", "turn": 1,
                                     "reason": "HTTP 400: this prompt is not allowed"}]
    assert manifest["failure_reasons"] == {"HTTP 400: this prompt is not allowed": 1}
    assert any("'poison' failed at assistant turn 1: HTTP 400" in w for w in ui.warnings)
    assert "1 record failed for the reasons above, which a retry meets again: --resume retries failed records once " \
           "their cause is fixed" in ui.logs  # a 400 is the request's fault, not the network's
    assert manifest["read"] == len(rs) == manifest["regenerated"] + manifest["failed"] + manifest["skipped"]
    assert manifest["truncated_answers"] == 1
    out = {r["id"]: r for r in read_jsonl(Path(cfg.out_path))}
    assert "poison" not in out and out["long"]["truncated_turns"] == [0]
    assert out["long"]["conversations"][1]["value"] == "cut short"

    # --resume retries the failed record, and only it (all its turns: a finished run keeps no partial records)
    with ChatServer(answer=long_answers) as healthy:
        again = run_regenerate(server_cfg(tmp_path, healthy, src, resume=True), RecordingUI())
        asked = healthy.answered()
    assert [last_user(p["messages"]) for p in asked] == ["fine", "POISON here"]
    assert (again["failed"], again["regenerated"], again["done_before"]) == (0, len(rs) - 1, len(rs) - 2)
    assert again["truncated_answers"] == 1  # the mark survives the resume
    out = read_jsonl(Path(cfg.out_path))
    assert [r["id"] for r in out] == [r["id"] for r in rs if r["id"] != "noanswer"]


def test_retries_exhausted_and_a_server_that_is_down(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(4))

    def always_503(payload, attempt):
        return (503, {"error": {"message": "overloaded"}}) if "q two" in last_user(payload["messages"]) else None

    ui = RecordingUI()
    with ChatServer(fail=always_503) as server:
        manifest = run_regenerate(server_cfg(tmp_path, server, src, retries=2), ui)
        tries = [s for p, s in server.requests if last_user(p["messages"]) == "q two"]
    assert tries == [503, 503, 503]
    assert "re-run with --resume to retry the 1 failed record" in ui.logs  # an overloaded server may answer later
    assert manifest["failures"] == [{"id": "three", "turn": 1, "reason": "HTTP 503: overloaded (after 3 attempts)"}]

    # nothing listening: a clear error at once, nothing written
    with ChatServer() as gone:
        pass  # its port is closed now
    cfg = server_cfg(tmp_path, gone, src, overwrite=True)
    with pytest.raises(UserError, match="cannot reach the server"):
        run_regenerate(cfg, RecordingUI())
    assert not work_path(cfg.out_path).exists()

    # every request failing: the run stops early, keeps its work, and resumes later
    with ChatServer(fail=lambda p, a: (502, "Bad Gateway")) as down:
        cfg = server_cfg(tmp_path, down, src, overwrite=True, retries=0, concurrency=1, max_consecutive_failures=3)
        with pytest.raises(UserError, match="3 records in a row failed.*looks down.*--resume"):
            run_regenerate(cfg, RecordingUI())
        assert 3 <= len(down.requests) <= 4  # the one worker may have sent its next request meanwhile
    assert work_path(cfg.out_path).exists() and not Path(cfg.out_path).exists()
    with ChatServer() as up:
        manifest = run_regenerate(server_cfg(tmp_path, up, src, resume=True), RecordingUI())
    assert manifest["failed"] == 0 and manifest["regenerated"] == len(records(4)) - 1


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(3))
    with ChatServer() as server:
        cfg = server_cfg(tmp_path, server, src)
        run_regenerate(cfg, RecordingUI())
        first = Path(cfg.out_path).read_text()
        with pytest.raises(UserError, match="already exists: pass --resume .* or --overwrite"):
            run_regenerate(cfg, RecordingUI())
        with pytest.raises(UserError, match="exclude each other"):
            run_regenerate(server_cfg(tmp_path, server, src, resume=True, overwrite=True), RecordingUI())
        server.clear()
        manifest = run_regenerate(server_cfg(tmp_path, server, src, resume=True), RecordingUI())
        assert server.requests == [] and Path(cfg.out_path).read_text() == first  # nothing left to do
        assert manifest["done_before"] == manifest["regenerated"] and manifest["conversations_per_s"] is None
        manifest = run_regenerate(server_cfg(tmp_path, server, src, overwrite=True), RecordingUI())
        assert len(server.answered()) == manifest["answers"] and manifest["done_before"] == 0
        assert Path(cfg.out_path).read_text() == first
        # a work file alone also needs a flag
        work_path(cfg.out_path).write_text("")
        Path(cfg.out_path).unlink()
        with pytest.raises(UserError, match="regen.partial.jsonl already exists"):
            run_regenerate(cfg, RecordingUI())


def test_resume_refuses_other_settings(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(2))
    with ChatServer() as server:
        run_regenerate(server_cfg(tmp_path, server, src, max_new_tokens=16), RecordingUI())
        with pytest.raises(UserError, match=r"max_new_tokens 16 -> 32.*--overwrite"):
            run_regenerate(server_cfg(tmp_path, server, src, max_new_tokens=32, resume=True), RecordingUI())
        # settings that do not change answers may change
        run_regenerate(server_cfg(tmp_path, server, src, max_new_tokens=16, resume=True, concurrency=1), RecordingUI())


def test_an_input_without_conversations_is_refused_and_nothing_is_written(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with ChatServer() as server:
        with pytest.raises(UserError, match=r"--input .*empty.jsonl: no conversation to regenerate; give the train"):
            run_regenerate(server_cfg(tmp_path, server, empty), RecordingUI())
        src = write_jsonl(tmp_path / "in.jsonl", records(2))
        with pytest.raises(UserError, match=r"no conversation to regenerate \(--limit 0\)"):
            run_regenerate(server_cfg(tmp_path, server, src, limit=0), RecordingUI())
    assert not (tmp_path / "out").exists()


def test_resume_pairs_repeated_ids_by_their_messages_and_checks_the_model(tmp_path):
    """The output holds finished records only: with a repeated id whose first record
    failed, the finished one is still recognised (not asked again, no false warning)."""
    rs = [{"id": "a", "conversations": [{"from": "human", "value": "POISON q"}, {"from": "gpt", "value": "x"}]},
          {"id": "a", "conversations": [{"from": "human", "value": "good q"}, {"from": "gpt", "value": "y"}]},
          {"id": "b", "conversations": [{"from": "human", "value": "other"}, {"from": "gpt", "value": "z"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", rs)

    def fail(payload, attempt):
        return (400, {"error": {"message": "bad"}}) if "POISON" in last_user(payload["messages"]) else None

    with ChatServer(fail=fail) as server:
        first = run_regenerate(server_cfg(tmp_path, server, src), RecordingUI())
    assert (first["regenerated"], first["failed"]) == (2, 1)
    with ChatServer() as server:
        ui = RecordingUI()
        again = run_regenerate(server_cfg(tmp_path, server, src, resume=True), ui)
        assert [last_user(p["messages"]) for p in server.answered()] == ["POISON q"]
    assert not [w for w in ui.warnings if "messages changed" in w] and again["regenerated"] == 3
    with ChatServer() as server:
        with pytest.raises(UserError, match=r"model 'tiny' -> 'other'"):
            run_regenerate(server_cfg(tmp_path, server, src, resume=True, server_model="other"), RecordingUI())


def test_the_in_process_backend_refuses_a_harmony_model_before_loading_it(tmp_path):
    """gpt-oss answers in a final channel after an analysis message; stopping at its <|end|>
    would keep the analysis as the answer."""
    from eagle3kit.tiny import CHATML_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["What is two plus two?", "Four."] * 20, style="chatml", vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|channel|>", "<|return|>"]})
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(tmp_path / "harmony")  # no weights: refused before they are read
    src = write_jsonl(tmp_path / "in.jsonl", records(1))
    cfg = RegenConfig(basepath=str(tmp_path / "harmony"), input_path=str(src), out_path=str(tmp_path / "r.jsonl"))
    with pytest.raises(UserError, match="harmony format .* pass --server URL"):
        run_regenerate(cfg, RecordingUI())


def test_a_greeting_before_the_first_question_is_kept(tmp_path):
    rs = [{"id": "g", "conversations": [{"from": "gpt", "value": "Hi! How can I help?"},
                                        {"from": "human", "value": "Capital of France?"},
                                        {"from": "gpt", "value": "old"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    with ChatServer() as server:
        manifest = run_regenerate(server_cfg(tmp_path, server, src), RecordingUI())
        prompts = [p["messages"] for p in server.answered()]
    out = read_jsonl(tmp_path / "out" / "regen.jsonl")[0]["conversations"]
    assert manifest["regenerated"] == 1 and out[0] == {"from": "gpt", "value": "Hi! How can I help?"}
    assert prompts == [[{"role": "assistant", "content": "Hi! How can I help?"},
                        {"role": "user", "content": "Capital of France?"}]]
    assert out[2]["value"] != "old"


def test_resume_regenerates_records_whose_questions_changed(tmp_path):
    rs = records(2)
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    with ChatServer() as server:
        cfg = server_cfg(tmp_path, server, src)
        run_regenerate(cfg, RecordingUI())
        rs[0]["conversations"][1]["value"] = "Hello again"  # a human message changed
        rs[1]["conversations"][1]["value"] = "new original answer"  # an answer changed: no matter
        write_jsonl(src, rs)
        server.clear()
        ui = RecordingUI()
        run_regenerate(server_cfg(tmp_path, server, src, resume=True), ui)
        assert {last_user(p["messages"]) for p in server.answered()} == {"Hello again", "And then?"}
    assert any("changed" in w for w in ui.warnings)
    out = read_jsonl(Path(cfg.out_path))
    assert out[0]["conversations"] == echo_expected(rs[0])


def test_reasoning_keep_and_drop(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "conversations": convo(("x", "y"), ("z", "w"))}])

    def thinking(payload):
        if last_user(payload["messages"]) == "x":  # a server with a reasoning parser
            return {"content": "answer x", "reasoning_content": "let me see"}
        return {"content": "<think>\nhmm\n</think>\n\nanswer z"}  # one without

    with ChatServer(answer=thinking) as server:
        run_regenerate(server_cfg(tmp_path, server, src, reasoning="drop"), RecordingUI())
        dropped = read_jsonl(tmp_path / "out" / "regen.jsonl")[0]["conversations"]
        second_prompt = server.answered()[1]["messages"]
        run_regenerate(server_cfg(tmp_path, server, src, reasoning="keep", overwrite=True), RecordingUI())
        kept = read_jsonl(tmp_path / "out" / "regen.jsonl")[0]["conversations"]
    assert [m["value"] for m in dropped if m["from"] == "gpt"] == ["answer x", "answer z"]
    assert second_prompt[1] == {"role": "assistant", "content": "answer x"}
    assert [m["value"] for m in kept if m["from"] == "gpt"] == ["<think>\nlet me see\n</think>\n\nanswer x",
                                                                 "<think>\nhmm\n</think>\n\nanswer z"]


def test_system_prompt_limit_and_repeated_ids(tmp_path):
    rs = records(4)
    rs[5]["id"] = rs[4]["id"]  # two records with one id
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    with ChatServer() as server:
        ui = RecordingUI()
        manifest = run_regenerate(server_cfg(tmp_path, server, src, system_prompt="You are terse.", limit=6), ui)
        payloads = server.answered()
    assert manifest["read"] == 6
    assert all(p["messages"][0] == {"role": "system", "content": "You are terse."} for p in payloads)
    out = read_jsonl(tmp_path / "out" / "regen.jsonl")
    assert [r["id"] for r in out] == ["sys", "three", "one", "r0", "r0"]
    assert [r["conversations"] for r in out] == [echo_expected(r, "You are terse.") for r in rs[:6] if r["id"] != "noanswer"]
    assert any("repeat an earlier id" in w for w in ui.warnings)


def test_the_model_name_is_checked_against_the_server(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", records(1))
    with ChatServer(models=("a", "b")) as server:
        with pytest.raises(UserError, match="serves 'a', 'b', not 'tiny'; pass --model"):
            run_regenerate(server_cfg(tmp_path, server, src), RecordingUI())
        manifest = run_regenerate(server_cfg(tmp_path, server, src, server_model="b", overwrite=True), RecordingUI())
        assert manifest["model"] == "b" and {p["model"] for p in server.answered()} == {"b"}


def test_killed_midway_and_resumed_loses_and_duplicates_nothing(tmp_path):
    rs = [{"id": f"k{i}", "conversations": convo((f"first {i}", "x"), (f"second {i}", "y"))} for i in range(12)]
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    out = tmp_path / "regen.jsonl"
    work = work_path(out)
    args = [sys.executable, "-m", "eagle3kit", "regenerate", "--basepath", "tiny", "--input", str(src), "--out", str(out),
            "--concurrency", "2", "--max-new-tokens", "16"]
    with ChatServer(hold_from=6) as server:  # answers 6 requests, then holds every one
        with open(tmp_path / "log1", "w") as log:
            proc = subprocess.Popen(args + ["--server", server.url], stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: server.held == 2 and work.exists() and len(work.read_bytes().splitlines()) == 7,
                         what="6 answers in the work file")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        server.gate.set()  # the two held requests are answered to a client that is gone
        wait_for(lambda: len(server.requests) == 8, what="the held requests to end")
        assert not out.exists()
        lines = work.read_text().splitlines()
        assert len(lines) == 7 and "header" in json.loads(lines[0])
        saved = [json.loads(line) for line in lines[1:]]
        with open(work, "ab") as f:  # as if killed in the middle of writing a line
            f.write(b'{"key": "k11", "src": "')
        server.clear()
        resumed = subprocess.run(args + ["--server", server.url, "--resume"], capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        asked = server.answered()
    assert "unfinished last line" in resumed.stderr
    # only what was not saved is asked again
    assert len(asked) == 24 - len(saved)
    done = {(e["key"], e["turn"]) for e in saved}
    assert all(("k" + last_user(p["messages"]).split()[1], int(last_user(p["messages"]).startswith("second")))
               not in done for p in asked)
    regenerated = read_jsonl(out)
    assert [r["id"] for r in regenerated] == [r["id"] for r in rs]  # each once, in input order
    assert [r["conversations"] for r in regenerated] == [echo_expected(r) for r in rs]
    manifest = json.loads(manifest_path(out).read_text())
    assert (manifest["read"], manifest["regenerated"], manifest["failed"], manifest["answers"]) == (12, 12, 0, 24)
    assert manifest["this_run"]["answers"] == 24 - len(saved)
    assert not work.exists()


# --------------------------------------------------------------------------- in-process backend
def sample_conversations() -> list[list[dict]]:
    from eagle3kit.unified import clean_messages

    conversations = []
    with open(SAMPLES / "ultrachat_sample.jsonl", encoding="utf-8") as f:
        for line in f:
            raw = json.loads(line)
            conversation, _ = clean_messages([{"from": m["role"], "value": m["content"]} for m in raw["messages"]])
            if conversation:
                conversations.append(conversation)
    return conversations


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Llama with a Llama-3-style chat template, trained briefly on
    150 sample conversations (it learns to end its answers with <|eot_id|>)."""
    import torch

    from eagle3kit.tiny import build_tiny_target

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_thread
    try:
        return build_tiny_target(tmp_path_factory.mktemp("regen_tiny"), sample_conversations()[:150], steps=100,
                                 layers=2, hidden=64, batch_size=8, seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny models generate fastest on one thread (and steadily on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)


def hf_records(n: int = 6) -> list[dict]:
    picked = [c for c in sample_conversations()[200:] if sum(m["from"] == "gpt" for m in c) >= 2][:n]
    return [{"id": f"u{i}", "conversations": c[:4] if i % 2 else c[:6]} for i, c in enumerate(picked)]


def direct_greedy(tiny_model, messages, max_new_tokens) -> tuple[str, bool]:
    """One prompt, no padding, plain greedy decoding: what the answer must be."""
    import torch

    model, tokenizer = tiny_model
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop, pad_token_id=stop[1])
    new = out[0, ids.shape[1]:].tolist()
    end = next((i for i, t in enumerate(new) if t in stop), None)
    return tokenizer.decode(new if end is None else new[:end], skip_special_tokens=True).strip(), end is None


def test_in_process_backend_matches_plain_greedy_decoding(tmp_path, tiny, tiny_model, one_thread):
    rs = hf_records()
    rs.append({"id": "noanswer", "conversations": [{"from": "human", "value": "What colour is snow?"}]})
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    cfg = RegenConfig(basepath=str(tiny), input_path=str(src), out_path=str(tmp_path / "regen.jsonl"), batch_size=4,
                      max_new_tokens=24, device="cpu")
    manifest = run_regenerate(cfg, RecordingUI())
    out = read_jsonl(tmp_path / "regen.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rs[:-1]]
    assert (manifest["read"], manifest["regenerated"], manifest["skipped"], manifest["failed"]) == (len(rs), len(rs) - 1, 1, 0)
    assert manifest["backend"] == "transformers" and manifest["device"].startswith("cpu") and manifest["dtype"] == "float32"
    assert manifest["answers"] == answers_of(rs) and manifest["tokens_per_s"] > 0 and manifest["conversations_per_s"] > 0
    assert manifest["truncated_answers"] == sum(len(r["truncated_turns"]) for r in out)
    changed = 0
    for got, record in zip(out, rs):
        conversation = got["conversations"]
        assert [m["from"] for m in conversation] == [m["from"] for m in record["conversations"]]
        answers = []
        for i, (new, old) in enumerate(zip(conversation, record["conversations"])):
            if old["from"] != "gpt":
                assert new == old  # system and human messages are kept
                continue
            # turn k from the prompt with the regenerated answers < k, as one unpadded greedy decode
            messages = [{"role": {"human": "user", "gpt": "assistant", "system": "system"}[m["from"]], "content": m["value"]}
                        for m in conversation[:i]]
            expected, truncated = direct_greedy(tiny_model, messages, 24)
            assert new["value"] == expected
            assert (len(answers) in got["truncated_turns"]) == truncated
            answers.append(new["value"])
            changed += new["value"] != old["value"]
    assert changed > 0


def test_in_process_truncation_is_marked_and_counted(tmp_path, tiny, one_thread):
    rs = hf_records(3)
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    manifest = run_regenerate(RegenConfig(basepath=str(tiny), input_path=str(src), out_path=str(tmp_path / "r.jsonl"),
                                          max_new_tokens=1, batch_size=2, device="cpu"), RecordingUI())
    out = read_jsonl(tmp_path / "r.jsonl")
    assert manifest["truncated_answers"] == manifest["answers"] == answers_of(rs)
    assert all(r["truncated_turns"] == list(range(answers_of([r]))) for r in out)


def test_a_prompt_near_the_models_context_gets_what_room_is_left(tmp_path, tiny, tiny_model, one_thread):
    _, tokenizer = tiny_model

    def prompt_tokens(question):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    short, cut, whole = "What is rain?", "Tell me about " + "the sea and " * 8 + "rain.", "Why? " * 60
    context = prompt_tokens(cut) + 3
    assert prompt_tokens(short) + 24 <= context <= prompt_tokens(whole)  # full room, 3 tokens, none
    small = tmp_path / "small-context"
    shutil.copytree(tiny, small)
    config = json.loads((small / "config.json").read_text())
    config["max_position_embeddings"] = context
    (small / "config.json").write_text(json.dumps(config))
    questions = {"short": short, "cut": cut, "whole": whole}
    rs = [{"id": rid, "conversations": [H(q), G("old answer")]} for rid, q in questions.items()]
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    ui = RecordingUI()
    manifest = run_regenerate(RegenConfig(basepath=str(small), input_path=str(src), out_path=str(tmp_path / "r.jsonl"),
                                          max_new_tokens=24, batch_size=4, device="cpu"), ui)
    out = {r["id"]: r for r in read_jsonl(tmp_path / "r.jsonl")}
    for rid, room in (("short", 24), ("cut", 3)):  # as plain greedy decoding with that many new tokens
        expected, truncated = direct_greedy(tiny_model, [{"role": "user", "content": questions[rid]}], room)
        assert out[rid]["conversations"][1]["value"] == expected and (out[rid]["truncated_turns"] == [0]) == truncated
    assert out["cut"]["truncated_turns"] == [0]
    assert manifest["failures"] == [{"id": "whole", "turn": 0, "reason": f"the prompt has {prompt_tokens(whole)} "
                                     f"tokens, the model's whole context of {context} tokens"}]
    assert ui.warnings[0] == (f"1 prompt(s) left less than --max-new-tokens 24 in the model's {context}-token "
                              "context: their answers end where the context does (marked truncated)")
    assert ("1 record failed for the reasons above, which a retry meets again: --resume retries failed records once "
            "their cause is fixed") in ui.logs

    src = write_jsonl(tmp_path / "long.jsonl", rs[2:])
    with pytest.raises(UserError) as error:  # nothing regenerated: an error, not exit 0 with an empty file
        run_regenerate(RegenConfig(basepath=str(small), input_path=str(src), out_path=str(tmp_path / "l.jsonl"),
                                   max_new_tokens=24, device="cpu"), RecordingUI())
    assert str(error.value) == (f"no record was regenerated: all 1 failed (first: the prompt has {prompt_tokens(whole)} "
                                f"tokens, the model's whole context of {context} tokens); every reason is in "
                                f"{tmp_path / 'l.manifest.json'}")


def test_server_serving_the_target_gives_the_same_answers(tmp_path, tiny, tiny_model, one_thread):
    """The same tiny target behind the test server (greedy, one prompt at a time) and in
    this process (batched, padded): the same regenerated data."""
    lock = threading.Lock()

    def serve(payload):
        with lock:
            text, truncated = direct_greedy(tiny_model, payload["messages"], payload["max_tokens"])
        return {"content": text, "finish_reason": "length" if truncated else "stop", "usage": False}

    rs = hf_records(4)
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    local = run_regenerate(RegenConfig(basepath=str(tiny), input_path=str(src), out_path=str(tmp_path / "hf.jsonl"),
                                       max_new_tokens=20, batch_size=3, device="cpu"), RecordingUI())
    with ChatServer(answer=serve, models=(str(tiny),)) as server:
        remote = run_regenerate(RegenConfig(basepath=str(tiny), input_path=str(src), out_path=str(tmp_path / "srv.jsonl"),
                                            server=server.url, max_new_tokens=20, backoff_base=0.0), RecordingUI())
    assert read_jsonl(tmp_path / "hf.jsonl") == read_jsonl(tmp_path / "srv.jsonl")
    assert local["truncated_answers"] == remote["truncated_answers"]
    assert remote["tokens_per_s"] is None  # this server reports no usage


def test_cli(tmp_path, tiny, one_thread):
    from eagle3kit.cli import cli

    src = write_jsonl(tmp_path / "in.jsonl", hf_records(4))
    out = tmp_path / "x" / "regen.jsonl"
    args = ["regenerate", "--basepath", str(tiny), "--input", str(src), "--out", str(out), "--limit", "2",
            "--max-new-tokens", "8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "read 2: regenerated 2, failed 0, skipped 0" in result.stderr
    assert "conversations/s" in result.stderr and "tokens/s" in result.stderr
    assert len(read_jsonl(out)) == 2 and (tmp_path / "x" / "regen.manifest.json").exists()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    again = CliRunner().invoke(cli, args[:-4] + ["--limit", "3", "--max-new-tokens", "8", "--resume"])
    assert again.exit_code == 0, again.output
    assert "read 3: regenerated 3 (2 of them before this run)" in again.stderr
    missing = CliRunner().invoke(cli, ["regenerate", "--basepath", str(tmp_path / "nope"), "--input", str(src),
                                       "--out", str(tmp_path / "y.jsonl")])
    assert missing.exit_code == 2 and "cannot load the tokenizer" in missing.stderr
    assert not (tmp_path / "y.partial.jsonl").exists()


def test_template_kwargs_reach_the_server_and_a_resume_with_others_is_refused(tmp_path):
    """``--chat-template-kwargs`` goes to the server as ``chat_template_kwargs`` (what vLLM
    and SGLang read), and is one of the settings a resumed run must keep."""
    src = write_jsonl(tmp_path / "in.jsonl", records())
    thinking_off = {"enable_thinking": False}
    with ChatServer() as server:
        cfg = server_cfg(tmp_path, server, src, chat_template_kwargs=thinking_off)
        manifest = run_regenerate(cfg, RecordingUI())
        payloads = server.answered()
        assert payloads and all(p["chat_template_kwargs"] == thinking_off for p in payloads)
        assert manifest["settings"]["chat_template_kwargs"] == thinking_off
        again = server_cfg(tmp_path, server, src, resume=True)
        with pytest.raises(UserError, match=r"other settings \(chat_template_kwargs \{'enable_thinking': False\} -> None\)"):
            run_regenerate(again, RecordingUI())


def test_options_the_backend_does_not_use_are_named(monkeypatch):
    from eagle3kit.regenerate.config import ignored_options

    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    assert ignored_options(RegenConfig("t", "i", "o", api_key="from-the-environment")) is None  # not given: read
    assert ignored_options(RegenConfig("t", "i", "o", server_model="other", concurrency=8, api_key="k")) == (
        "--model, --api-key, --concurrency only apply with --server, so they are ignored; in process, the model "
        "that answers is --basepath")
    assert ignored_options(RegenConfig("t", "i", "o", timeout=5)) == (
        "--timeout only applies with --server, so it is ignored")
    assert ignored_options(RegenConfig("t", "i", "o", server="http://x", batch_size=4, dtype="float16")) == (
        "--batch-size, --dtype only apply without --server (in process), so they are ignored")
    assert ignored_options(RegenConfig("t", "i", "o", server="http://x", concurrency=3, timeout=5)) is None


def test_the_servers_context_refusal_words_give_the_room_left():
    from eagle3kit.regenerate.server import room_left

    assert room_left("HTTP 400: This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                     "(2952 in the messages, 2048 in the completion). Please reduce the length") == 1144  # vLLM
    assert room_left("HTTP 400: 'max_tokens' or 'max_completion_tokens' is too large: 2048. This model's maximum "
                     "context length is 4096 tokens and your request has 2952 input tokens (2048 > 4096 - 2952).") == 1144
    assert room_left("HTTP 400: Requested token count exceeds the model's maximum context length of 4096 tokens. You "
                     "requested a total of 5000 tokens: 2952 tokens from the input messages and 2048 tokens for the "
                     "completion. Please reduce") == 1144  # SGLang
    assert room_left("HTTP 400: The input (5000 tokens) is longer than the model's context length (4096 tokens).") == -904
    assert room_left("HTTP 400: this prompt is not allowed") is None
    assert room_left("HTTP 503: maximum context length is 4096 tokens, 2952 input tokens") is None  # not a 400


def test_a_prompt_near_the_servers_context_is_asked_for_what_is_left(tmp_path):
    context = 40

    def tokens(payload):  # one token per word of the messages
        return sum(len(m["content"].split()) for m in payload["messages"])

    def too_long(payload, attempt):
        n = tokens(payload)
        if n + payload["max_tokens"] <= context:
            return None
        return 400, {"error": {"message": f"This model's maximum context length is {context} tokens. However, you "
                                          f"requested {n + payload['max_tokens']} tokens ({n} in the messages, "
                                          f"{payload['max_tokens']} in the completion).", "type": "BadRequestError"}}

    def answer(payload):  # five words, or as many as max_tokens allows
        return {"content": "word " * min(payload["max_tokens"], 5),
                "finish_reason": "length" if payload["max_tokens"] < 5 else "stop", "usage": False}

    rs = [{"id": "short", "conversations": convo(("a short question", "old"))},
          {"id": "near", "conversations": convo((" ".join(["w"] * 37), "old"))},
          {"id": "full", "conversations": convo((" ".join(["w"] * 45), "old"))}]
    src = write_jsonl(tmp_path / "in.jsonl", rs)
    ui = RecordingUI()
    with ChatServer(answer=answer, fail=too_long) as server:
        manifest = run_regenerate(server_cfg(tmp_path, server, src, max_new_tokens=16), ui)
        asked = {tokens(p): p["max_tokens"] for p, status in server.requests if status == 200}
    assert asked == {3: 16, 37: 3}  # the near one asked again for the 3 tokens its context leaves
    out = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "regen.jsonl")}
    assert out["near"]["truncated_turns"] == [0] and out["short"]["truncated_turns"] == []
    assert [f["id"] for f in manifest["failures"]] == ["full"]
    assert manifest["failures"][0]["reason"].endswith("(45 in the messages, 16 in the completion). (the prompt fills "
                                                      "the model's context)")
    assert ("1 prompt(s) left less than --max-new-tokens 16 in the server's context: they were asked for what was left "
            "(answers cut there are marked truncated)") in ui.warnings
