"""eagle3kit.mix: the whole pipeline (rules, duplicates, weights, shuffle, split, files,
manifest, reuse, atomic writes) with exact expected outputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import types

import numpy as np
import pytest

import eagle3kit
from conftest import OTHER_PLUGINS, read_jsonl, sharegpt_record, ultrachat_record, write_json, write_jsonl
from eagle3kit import HubRepo, Source, UserError, hookimpl, mix
from eagle3kit.mix import apply_weights, default_num_proc, read_manifest, run_mix
from eagle3kit.plugins import load_registry
from eagle3kit.sourcespec import SourceSpec
from helpers import G, H, RecordingUI, S




def specs(*texts):
    return [SourceSpec.parse(t) for t in texts]


def do_mix(registry, tmp_path, *sources, out="out", cache="cache", **kwargs):
    kwargs.setdefault("ui", RecordingUI())
    return run_mix(registry, specs(*sources), tmp_path / out, tmp_path / cache, **kwargs)


def by_id(path):
    return {r["id"]: r["conversations"] for r in read_jsonl(path)}


@pytest.fixture
def small(tmp_path):
    """A small UltraChat JSONL file and ShareGPT JSON array exercising every rule."""
    ultra = write_jsonl(
        tmp_path / "in" / "ultra.jsonl",
        [
            ultrachat_record(("user", "Q0"), ("assistant", "A0")),  # kept
            ultrachat_record(("user", "Q1"), ("tool", "x"), ("assistant", "A1")),  # unknown_role
            ultrachat_record(("user", "Q2")),  # too_short
            ultrachat_record(("system", "S"), ("user", "Q3"), ("assistant", "A3"), ("user", "Thanks")),  # kept, cut
            ultrachat_record(("user", " Q0 "), ("assistant", "A0\n")),  # duplicate of 0 once stripped
            ultrachat_record(("user", "Q5"), ("assistant", "A5")),  # kept
        ],
    )
    share = write_json(
        tmp_path / "in" / "share.json",
        [
            sharegpt_record(("human", "Q0"), ("gpt", "A0")),  # duplicate of ultrachat_0
            sharegpt_record(("gpt", "Hello"), ("human", "Q7"), ("chatgpt", "A7")),  # greeting dropped
            sharegpt_record(("human", "Q8"), ("bard", "A8"), ("human", "Q9"), ("human", "Q10")),  # cut
            sharegpt_record(("user", "Q11"), ("model", "A11")),
        ],
    )
    return types.SimpleNamespace(ultra=ultra, share=share)


EXPECTED_SMALL = {
    "ultrachat_0": [H("Q0"), G("A0")],
    "ultrachat_3": [S("S"), H("Q3"), G("A3")],
    "ultrachat_5": [H("Q5"), G("A5")],
    "sharegpt_1": [H("Q7"), G("A7")],
    "sharegpt_2": [H("Q8"), G("A8")],
    "sharegpt_3": [H("Q11"), G("A11")],
}


# --------------------------------------------------------------------------- the pipeline
def test_small_mix_exact_records_counts_and_order(registry, tmp_path, small):
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}", test_ratio=0.5)
    out = tmp_path / "out"
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    # order: the rows in source order (u0 u3 u5 s1 s2 s3) permuted by default_rng(0); the
    # first round(0.5 * 6) = 3 of the permutation are the test split
    assert list(np.random.default_rng(0).permutation(6)) == [3, 2, 5, 4, 0, 1]
    assert [r["id"] for r in test] == ["sharegpt_1", "ultrachat_5", "sharegpt_3"]
    assert [r["id"] for r in train] == ["sharegpt_2", "ultrachat_0", "ultrachat_3"]
    assert {r["id"]: r["conversations"] for r in train + test} == EXPECTED_SMALL
    assert [list(r) for r in train] == [["id", "conversations"]] * 3
    assert (out / "train.jsonl").read_text(encoding="utf-8").splitlines()[0] == (
        '{"id": "sharegpt_2", "conversations": [{"from": "human", "value": "Q8"}, {"from": "gpt", "value": "A8"}]}'
    )

    ultra, share = manifest["sources"]
    assert {k: ultra[k] for k in ("name", "plugin", "loaded_from", "attempts", "rows_read", "kept", "dropped")} == {
        "name": "ultrachat",
        "plugin": "ultrachat",
        "loaded_from": str(small.ultra),
        "attempts": [],
        "rows_read": 6,
        "kept": 4,
        "dropped": {"unknown_role": 1, "too_short": 1, "invalid": 0},
    }
    assert (ultra["duplicates"], ultra["used"], ultra["train"], ultra["test"]) == (1, 3, 2, 1)
    assert (share["rows_read"], share["kept"], share["dropped"]) == (4, 4, {"unknown_role": 0, "too_short": 0, "invalid": 0})
    assert (share["duplicates"], share["used"], share["train"], share["test"]) == (1, 3, 1, 2)
    assert manifest["split"] == {"train": 3, "test": 3}
    assert manifest["seed"] == 0 and manifest["test_ratio"] == 0.5 and manifest["dedup"] is True
    assert manifest["eagle3kit_version"] == eagle3kit.__version__ and manifest["rules_version"] == mix.RULES_VERSION
    assert manifest["plugins"] == {"sharegpt": f"eagle3kit {eagle3kit.__version__}", "ultrachat": f"eagle3kit {eagle3kit.__version__}"}
    assert ultra["options"] == {"path": str(small.ultra), "repo": None, "split": None, "files": None, "limit": None,
                                "weight": None}
    assert manifest["reused"] is False
    assert len(manifest["fingerprint"]) == 32
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    for name in ("train.jsonl", "test.jsonl"):
        data = (out / name).read_bytes()
        assert manifest["files"][name] == {
            "rows": data.count(b"\n"),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


def test_ids_are_the_0_based_row_in_the_raw_split(registry, tmp_path):
    path = write_jsonl(
        tmp_path / "u.jsonl",
        ['{"messages": [{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A0"}]}', "", "  ",
         '{"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]}'],
    )
    do_mix(registry, tmp_path, f"ultrachat:path={path}", test_ratio=0)
    # blank lines hold no record: the second record is row 1 (line 4)
    assert by_id(tmp_path / "out" / "train.jsonl") == {"ultrachat_0": [H("Q0"), G("A0")], "ultrachat_1": [H("Q1"), G("A1")]}


def test_seed_changes_the_order_only(registry, tmp_path, small):
    a = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}", test_ratio=0, out="a")
    b = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}", test_ratio=0, out="b", seed=1)
    ids_a = [r["id"] for r in read_jsonl(tmp_path / "a" / "train.jsonl")]
    ids_b = [r["id"] for r in read_jsonl(tmp_path / "b" / "train.jsonl")]
    assert ids_b == ["sharegpt_2", "ultrachat_0", "ultrachat_5", "ultrachat_3", "sharegpt_3", "sharegpt_1"]
    assert ids_a != ids_b and sorted(ids_a) == sorted(ids_b)
    assert (a["seed"], b["seed"]) == (0, 1) and a["fingerprint"] != b["fingerprint"]
    assert (tmp_path / "a" / "test.jsonl").read_bytes() == b""


@pytest.mark.parametrize("ratio, n_test", [(0.05, 0), (0.25, 2), (0.3, 2), (0.35, 2), (0.45, 3), (0.5, 3)])
def test_test_split_is_python_round_of_ratio_times_n(registry, tmp_path, ratio, n_test):
    # 6 conversations: 0.25*6=1.5 -> 2, 0.35*6=2.1 -> 2, 0.45*6=2.7 -> 3, 0.05*6=0.3 -> 0
    path = write_jsonl(tmp_path / "u.jsonl", [ultrachat_record(("user", f"Q{i}"), ("assistant", "A")) for i in range(6)])
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}", test_ratio=ratio)
    assert n_test == round(ratio * 6)
    assert manifest["split"] == {"train": 6 - n_test, "test": n_test}
    assert len(read_jsonl(tmp_path / "out" / "test.jsonl")) == n_test


def test_python_round_is_bankers_rounding_on_the_split(registry, tmp_path):
    # 10 conversations at 0.25: round(2.5) == 2 (not 3)
    path = write_jsonl(tmp_path / "u.jsonl", [ultrachat_record(("user", f"Q{i}"), ("assistant", "A")) for i in range(10)])
    assert do_mix(registry, tmp_path, f"ultrachat:path={path}", test_ratio=0.25)["split"] == {"train": 8, "test": 2}


def test_default_test_ratio_is_5_percent(registry, tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [ultrachat_record(("user", f"Q{i}"), ("assistant", "A")) for i in range(30)])
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}")
    assert manifest["test_ratio"] == 0.05 and manifest["split"] == {"train": 28, "test": 2}  # round(1.5) == 2


# --------------------------------------------------------------------------- rule 6: duplicates
def test_duplicates_first_occurrence_in_source_order_is_kept(registry, tmp_path, small):
    # the same mix with the sources in the other order: ultrachat_0 now loses to sharegpt_0
    manifest = do_mix(registry, tmp_path, f"sharegpt:path={small.share}", f"ultrachat:path={small.ultra}", test_ratio=0)
    ids = set(by_id(tmp_path / "out" / "train.jsonl"))
    assert ids == {"sharegpt_0", "sharegpt_1", "sharegpt_2", "sharegpt_3", "ultrachat_3", "ultrachat_5"}
    assert [s["duplicates"] for s in manifest["sources"]] == [0, 2]  # ultrachat_0 and ultrachat_4


def test_duplicates_inside_one_source_keep_the_first(registry, tmp_path):
    conv = (("user", "Q"), ("assistant", "A"))
    path = write_jsonl(
        tmp_path / "u.jsonl",
        [ultrachat_record(("user", "other"), ("assistant", "x")), ultrachat_record(*conv, prompt_id="a"),
         ultrachat_record(*conv, prompt_id="b"), ultrachat_record(*conv, ("user", "trailing"))],
    )
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}", test_ratio=0)
    assert set(by_id(tmp_path / "out" / "train.jsonl")) == {"ultrachat_0", "ultrachat_1"}
    assert manifest["sources"][0]["duplicates"] == 2  # equal once cleaned: the trailing human is dropped


def test_no_dedup_keeps_duplicates(registry, tmp_path, small):
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}", test_ratio=0, dedup=False)
    assert [s["duplicates"] for s in manifest["sources"]] == [0, 0]
    assert [s["used"] for s in manifest["sources"]] == [4, 4]
    train = by_id(tmp_path / "out" / "train.jsonl")
    assert train["ultrachat_0"] == train["ultrachat_4"] == train["sharegpt_0"] == [H("Q0"), G("A0")]
    assert manifest["dedup"] is False


# --------------------------------------------------------------------------- limit and weights
def test_limit_reads_only_the_first_n_records(registry, tmp_path, small):
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=4", test_ratio=0)
    assert manifest["sources"][0]["rows_read"] == 4
    assert set(by_id(tmp_path / "out" / "train.jsonl")) == {"ultrachat_0", "ultrachat_3"}
    bigger = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=100", test_ratio=0, out="o2")
    assert bigger["sources"][0]["rows_read"] == 6


def test_apply_weights_no_weights_takes_everything():
    assert apply_weights([10, 0, 7], [None, None, None]) == [10, 0, 7]
    assert apply_weights([], []) == []


def test_apply_weights_needs_a_weight_on_every_source_or_none():
    with pytest.raises(UserError) as info:
        apply_weights([10, 10], [1.0, None])
    assert str(info.value) == "give weight= to every --source or to none (weights are shares of the whole mix)"


@pytest.mark.parametrize(
    "sizes, weights, expected",
    [
        ([100, 100], [1, 1], [100, 100]),
        ([100, 50], [1, 1], [50, 50]),
        ([100, 300], [3, 1], [100, 33]),
        ([1000, 1000], [3, 1], [1000, 333]),
        ([1000, 200], [3, 1], [600, 200]),
        ([10, 10, 10], [2, 1, 1], [10, 5, 5]),
        ([7, 100], [0.5, 0.5], [7, 7]),
        ([0, 100], [1, 1], [0, 0]),
        ([5], [9.0], [5]),
    ],
)
def test_apply_weights_shares_follow_the_weights_without_repeating(sizes, weights, expected):
    got = apply_weights(sizes, weights)
    assert got == expected
    assert all(g <= s for g, s in zip(got, sizes))  # never more than a source has: no repeats


def test_weights_sample_each_source_to_its_share(registry, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [ultrachat_record(("user", f"U{i}"), ("assistant", "A")) for i in range(40)])
    b = write_json(tmp_path / "b.json", [sharegpt_record(("human", f"S{i}"), ("gpt", "A")) for i in range(40)])
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={a},weight=3", f"sharegpt:path={b},weight=1", test_ratio=0)
    assert [s["used"] for s in manifest["sources"]] == [40, 13]
    ids = list(by_id(tmp_path / "out" / "train.jsonl"))
    assert len(ids) == len(set(ids)) == 53
    assert sum(i.startswith("sharegpt_") for i in ids) == 13
    again = do_mix(registry, tmp_path, f"ultrachat:path={a},weight=3", f"sharegpt:path={b},weight=1", test_ratio=0, out="o2")
    assert (tmp_path / "o2" / "train.jsonl").read_bytes() == (tmp_path / "out" / "train.jsonl").read_bytes()
    assert again["sources"][1]["options"]["weight"] == 1.0


def test_weight_on_one_source_only_is_an_error(registry, tmp_path, small):
    # said before any source is read (a Hub source would download first)
    with pytest.raises(UserError, match="give weight= to every --source or to none"):
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},weight=2", f"sharegpt:path={tmp_path / 'absent'}")


# --------------------------------------------------------------------------- malformed input
def bad_ultrachat(tmp_path):
    return write_jsonl(
        tmp_path / "bad.jsonl",
        [
            ultrachat_record(("user", "Q0"), ("assistant", "A0")),
            '{"messages": [{"role": "user", "content": "Q1"},',  # bad JSON (line 2), truncated
            '{"messages": [{"role": "user" "content": "Q1"}]}',  # bad JSON (line 3), a missing comma
            {"prompt": "no messages"},  # missing field (line 4)
            {"messages": [{"role": "user", "content": 5}]},  # wrong type (line 5)
            "[1, 2]",  # not an object (line 6)
            ultrachat_record(("user", "Q5"), ("assistant", "A5")),
        ],
    )


def test_malformed_records_stop_the_mix_naming_file_line_and_problem(registry, tmp_path):
    path = bad_ultrachat(tmp_path)
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"ultrachat:path={path}")
    assert str(info.value) == (
        "ultrachat: 5 malformed record(s), for example:\n"
        f"  - {path} line 2: bad JSON: Expecting value (column 49)\n"
        f"  - {path} line 3: bad JSON: Expecting ',' delimiter (column 31)\n"
        f"  - {path} line 4: 'messages' must be a list, found NoneType\n"
        f"  - {path} line 5: messages[0].content must be a string, found int\n"
        f"  - {path} line 6: the record is a JSON list, expected an object\n"
        "Fix the file, or pass --skip-invalid to drop malformed records (they are counted in the manifest)."
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_invalid_drops_and_counts_malformed_records(registry, tmp_path):
    path = bad_ultrachat(tmp_path)
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}", skip_invalid=True, test_ratio=0)
    source = manifest["sources"][0]
    assert (source["rows_read"], source["kept"], source["dropped"]) == (7, 2, {"unknown_role": 0, "too_short": 0, "invalid": 5})
    assert set(by_id(tmp_path / "out" / "train.jsonl")) == {"ultrachat_0", "ultrachat_6"}
    assert manifest["skip_invalid"] is True
    listed = source["invalid_records"]  # every dropped record, where and why (the error shows only 5 of them)
    assert len(listed) == 5 and [line.split(": ", 1)[0] for line in listed] == [f"{path} line {n}" for n in range(2, 7)]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sources"][0]["invalid_records"] == listed


def test_a_json_line_that_is_not_utf8_is_a_malformed_record(registry, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n'
                     + '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"))
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"ultrachat:path={path}")
    assert f"  - {path} line 2: not UTF-8 text (invalid continuation byte)\n" in str(info.value)
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}", skip_invalid=True, test_ratio=0)
    assert manifest["sources"][0]["dropped"]["invalid"] == 1 and manifest["sources"][0]["kept"] == 1


def test_a_plugin_raising_json_errors_of_its_own_on_arrow_rows(tmp_path):
    import datasets

    module = types.ModuleType("nested_plugin")
    module.register_sources = hookimpl(lambda register: register(Source(name="nested", description="d")))
    module.convert_to_unified = hookimpl(lambda record: json.loads(record["payload"]))
    registry = load_registry(entry_points=False, extra_plugins=[("nested", module)])
    path = tmp_path / "n.parquet"
    datasets.Dataset.from_list([{"payload": '[{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]'},
                                {"payload": "{oops"}]).to_parquet(str(path))
    manifest = do_mix(registry, tmp_path, f"nested:path={path}", skip_invalid=True, test_ratio=0)
    assert manifest["sources"][0]["dropped"]["invalid"] == 1
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"nested:path={path}", out="o2")
    assert f"  - {path} row 1: JSONDecodeError: Expecting property name enclosed in double quotes" in str(info.value)


def test_a_source_whose_every_record_fails_names_its_plugin_even_with_skip_invalid(tmp_path):
    """A plugin bug (or a file in another format) would otherwise drop the whole source."""
    import datasets

    module = types.ModuleType("crashy_plugin")
    module.register_sources = hookimpl(lambda register: register(Source(name="crashy", description="d")))
    module.convert_to_unified = hookimpl(lambda record: 1 / 0)
    registry = load_registry(entry_points=False, extra_plugins=[("crashy", module)])
    path = tmp_path / "c.parquet"
    datasets.Dataset.from_list([{"payload": "x"}, {"payload": "y"}]).to_parquet(str(path))
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"crashy:path={path}", skip_invalid=True)
    message = str(info.value)
    assert f"  - {path} row 0: ZeroDivisionError: division by zero" in message
    assert "Every record of source crashy failed to convert" in message and "a bug in plugin crashy" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _plugin_convert(record):
    if record["kind"] == "none":
        return None
    if record["kind"] == "exit":
        raise SystemExit(3)
    if record["kind"] == "bot":
        return [{"from": "user", "value": "Q"}, {"from": "bot", "value": "A"}]
    return [{"from": "user", "value": "Q"}, {"from": "assistant", "value": record["answer"]}]


def test_a_plugins_errors_name_where_its_code_raised_them(tmp_path, small):
    import inspect

    module = types.ModuleType("qa_plugin")
    module.register_sources = hookimpl(lambda register: register(Source(name="qa", description="d")))
    module.convert_to_unified = hookimpl(_plugin_convert)
    registry = load_registry(extra_plugins=[("qa", module)])
    path = write_jsonl(tmp_path / "qa.jsonl", [{"kind": "none"}, {"kind": "exit"}, {"kind": "ok"}, {"kind": "ok", "answer": "A"}])
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"qa:path={path}", f"ultrachat:path={small.ultra}")
    line = inspect.getsourcelines(_plugin_convert)[1]
    at = f"(at tests/test_mix.py:{line + 7} in _plugin_convert)"  # the line that reads record["answer"]
    assert str(info.value).splitlines() == [
        "qa: 3 malformed record(s), for example:",
        f"  - {path} line 1: convert_to_unified returned None; a plugin returns [] to skip a record",
        f"  - {path} line 2: SystemExit: 3 (at tests/test_mix.py:{line + 4} in _plugin_convert)",  # not the end of mix
        f"  - {path} line 3: missing field 'answer' {at}",
        "Fix the file (or, for an error a plugin's code raised, at the place named, the plugin), or pass --skip-invalid "
        "to drop malformed records (they are counted in the manifest)."]

    # every record dropped by the clean-up rules: an error, not a mix of the other sources
    path = write_jsonl(tmp_path / "bots.jsonl", [{"kind": "bot"}, {"kind": "bot"}])
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"qa:path={path}", f"ultrachat:path={small.ultra}")
    assert str(info.value).startswith("source qa has no conversation left (2 read: 2 unknown role): fix its input (or "
                                      "its plugin), or leave it out. A message's \"from\" must be one of: ")
    assert "assistant, bard, bing, chatgpt" in str(info.value)


def test_malformed_array_records_are_named_by_index(registry, tmp_path):
    path = write_json(tmp_path / "s.json", [sharegpt_record(("human", "Q"), ("gpt", "A")), {"id": "x", "conversations": [{"from": "human"}]}])
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"sharegpt:path={path}")
    assert f"  - {path} record 1: conversations[0] has no text (value or content or text)\n" in str(info.value)


def test_malformed_parquet_rows_are_named_by_row(registry, tmp_path):
    import datasets

    path = tmp_path / "u.parquet"
    datasets.Dataset.from_list(
        [ultrachat_record(("user", "Q"), ("assistant", "A")), {"prompt": "p", "prompt_id": "1", "messages": None}]
    ).to_parquet(str(path))
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"ultrachat:path={path}")
    assert f"  - {path} row 1: 'messages' must be a list, found NoneType\n" in str(info.value)


def test_only_five_examples_are_listed(registry, tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", ["{bad"] * 8)
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"ultrachat:path={path}")
    text = str(info.value)
    assert text.startswith("ultrachat: 8 malformed record(s), for example:\n")
    assert text.count("  - ") == 5 and f"{path} line 5:" in text and f"{path} line 6:" not in text


# --------------------------------------------------------------------------- each file kind
def test_every_local_file_kind_gives_the_same_mix(registry, tmp_path, small):
    import datasets

    records = [json.loads(line) for line in small.ultra.read_text().splitlines()]
    kinds = {
        "jsonl": small.ultra,
        "json": write_json(tmp_path / "kinds" / "u.json", records),
        "parquet": tmp_path / "kinds" / "u.parquet",
        "saved": tmp_path / "kinds" / "saved",
        "folder": tmp_path / "kinds" / "folder",
    }
    datasets.Dataset.from_list(records).to_parquet(str(kinds["parquet"]))
    datasets.Dataset.from_list(records).save_to_disk(str(kinds["saved"]))
    write_jsonl(kinds["folder"] / "part-0.jsonl", records[:3])
    write_jsonl(kinds["folder"] / "part-1.jsonl", records[3:])
    outputs = {}
    for kind, path in kinds.items():
        manifest = do_mix(registry, tmp_path, f"ultrachat:path={path}", out=f"out-{kind}", test_ratio=0.5)
        assert manifest["sources"][0]["loaded_from"] == str(path)
        outputs[kind] = ((tmp_path / f"out-{kind}" / "train.jsonl").read_bytes(), (tmp_path / f"out-{kind}" / "test.jsonl").read_bytes())
        counts = {k: manifest["sources"][0][k] for k in ("rows_read", "kept", "dropped", "duplicates")}
        assert counts == {"rows_read": 6, "kept": 4, "dropped": {"unknown_role": 1, "too_short": 1, "invalid": 0}, "duplicates": 1}
    assert len(set(outputs.values())) == 1


# --------------------------------------------------------------------------- errors before work
def test_unknown_source_lists_the_known_ones(registry, tmp_path):
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, "ultrachatt")
    assert str(info.value) == (
        "unknown source 'ultrachatt'. Known sources: sharegpt, ultrachat. "
        "Run `eagle3kit sources` to list them, or install the plugin that provides it."
        + (f" Blocked plugins, which may provide it: {', '.join(OTHER_PLUGINS)}." if OTHER_PLUGINS else "")
    )


def test_bad_option_names_it(registry, tmp_path):
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, "ultrachat:limit=lots")
    assert str(info.value) == (
        "--source ultrachat: bad value 'lots' for option 'limit' (read only the first N raw records): "
        "invalid literal for int() with base 10: 'lots'"
    )


@pytest.mark.parametrize(
    "sources, kwargs, message",
    [
        ((), {}, "no --source given; run `eagle3kit sources` to see the available ones"),
        (("ultrachat", "ultrachat:limit=1"), {}, "--source ultrachat is given twice; give each source once (ids must be unique)"),
        (("ultrachat",), {"test_ratio": 1.0}, "--test-ratio 1.0: must be at least 0 and below 1"),
        (("ultrachat",), {"test_ratio": -0.1}, "--test-ratio -0.1: must be at least 0 and below 1"),
    ],
)
def test_usage_errors(registry, tmp_path, sources, kwargs, message):
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, *sources, **kwargs)
    assert str(info.value) == message


def test_nothing_left_is_an_error(registry, tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [ultrachat_record(("user", "only a question"))])
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"ultrachat:path={path}")
    assert str(info.value) == "no conversation is left after the clean-up rules: ultrachat: 1 read: 1 too short; check the inputs"


def test_a_weighted_source_left_empty_is_named(registry, tmp_path, small):
    # its share of nothing used to leave nothing of the others, with no source named
    path = write_jsonl(tmp_path / "short.jsonl", [sharegpt_record(("human", "hi")), sharegpt_record(("human", "yo"), id="b")])
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, f"sharegpt:path={path},weight=1", f"ultrachat:path={small.ultra},weight=1")
    assert str(info.value) == ("source sharegpt has no conversation left (2 read: 2 too short), and weight= makes every "
                               "source a share of the mix, so nothing would be mixed; fix its input, or leave it out")


def test_a_test_ratio_that_leaves_no_train_split_says_so(registry, tmp_path, small):
    ui = RecordingUI()
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=2", test_ratio=0.8, ui=ui)
    n = manifest["split"]["test"]
    assert manifest["split"]["train"] == 0 and n > 0
    assert ui.warnings == [f"{n} conversation(s) x --test-ratio 0.8 rounds to an empty train split; mix more data or "
                           "lower --test-ratio"]


# --------------------------------------------------------------------------- plugins in a mix
def qa_plugin(calls):
    module = types.ModuleType("qa_plugin")

    @hookimpl
    def register_sources(register):
        register(Source(name="qa", description="q/a"))
        register(Source(name="qa2", description="q/a too"))

    @hookimpl
    def convert_to_unified(source, record):
        calls.append(source)
        return [{"from": "user", "value": record["q"]}, {"from": "assistant", "value": record["a"]}]

    module.register_sources, module.convert_to_unified = register_sources, convert_to_unified
    return module


def test_a_registered_plugin_source_mixes_with_builtins_and_gets_only_its_records(tmp_path, small):
    calls = []
    registry = load_registry(extra_plugins=[("qa", qa_plugin(calls))])
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q7", "a": "A7"}, {"q": "Qx", "a": "Ax"}])
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", f"qa:path={qa}", test_ratio=0)
    assert calls == ["qa", "qa"]  # never asked about ultrachat's six records
    train = by_id(tmp_path / "out" / "train.jsonl")
    assert train["qa_0"] == [H("Q7"), G("A7")] and train["qa_1"] == [H("Qx"), G("Ax")]
    assert manifest["sources"][1]["plugin"] == "qa" and manifest["sources"][1]["plugin_version"] == "?"


def test_hub_fallback_in_a_mix_is_recorded_in_the_manifest(tmp_path):
    from test_rawdata import OFFLINE_REPO, fallback_plugin

    folder = tmp_path / "mirror"
    write_jsonl(folder / "data.jsonl", [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": "A2"}])
    registry = load_registry(entry_points=False, extra_plugins=[("fallback", fallback_plugin(folder))])
    ui = RecordingUI()
    manifest = do_mix(registry, tmp_path, "fallback", test_ratio=0, ui=ui)
    source = manifest["sources"][0]
    assert source["loaded_from"] == f"{folder} [train]"
    assert [a["repo"] for a in source["attempts"]] == [f"{OFFLINE_REPO} [train]", f"{folder} [train]"]
    assert "OfflineModeIsEnabled" in source["attempts"][0]["error"] and source["attempts"][1]["error"] == ""
    assert ui.warnings == [f"source fallback: could not load {OFFLINE_REPO} [train]: {source['attempts'][0]['error']}"]
    assert by_id(tmp_path / "out" / "train.jsonl") == {"fallback_0": [H("Q1"), G("A1")], "fallback_1": [H("Q2"), G("A2")]}


def test_all_repositories_failing_stops_the_mix(tmp_path):
    source = Source(name="gone", description="d", repos=(HubRepo("eagle3kit-tests/gone-1"), HubRepo("eagle3kit-tests/gone-2")))
    module = types.ModuleType("gone_plugin")
    module.register_sources = hookimpl(lambda register: register(source))
    registry = load_registry(entry_points=False, extra_plugins=[("gone", module)])
    ui = RecordingUI()
    with pytest.raises(UserError) as info:
        do_mix(registry, tmp_path, "gone", ui=ui)
    text = str(info.value)
    assert "  - eagle3kit-tests/gone-1 [train]: ConnectionError" in text and "  - eagle3kit-tests/gone-2 [train]: ConnectionError" in text
    assert text.endswith("--source gone:path=FILE_OR_DIR")
    assert len(ui.warnings) == 2


# --------------------------------------------------------------------------- samples (golden)
def test_golden_mix_of_the_shipped_samples(registry, tmp_path, samples):
    manifest = do_mix(
        registry, tmp_path, f"ultrachat:path={samples / 'ultrachat_sample.jsonl'}", f"sharegpt:path={samples / 'sharegpt_sample.json'}"
    )
    counts = [
        {k: s[k] for k in ("name", "rows_read", "kept", "dropped", "duplicates", "used", "train", "test")} for s in manifest["sources"]
    ]
    assert counts == [
        {"name": "ultrachat", "rows_read": 401, "kept": 383, "dropped": {"unknown_role": 8, "too_short": 10, "invalid": 0},
         "duplicates": 1, "used": 382, "train": 364, "test": 18},
        {"name": "sharegpt", "rows_read": 250, "kept": 249, "dropped": {"unknown_role": 0, "too_short": 1, "invalid": 0},
         "duplicates": 4, "used": 245, "train": 232, "test": 13},
    ]
    assert manifest["split"] == {"train": 596, "test": 31}  # round(0.05 * 627) == 31
    train, test = read_jsonl(tmp_path / "out" / "train.jsonl"), read_jsonl(tmp_path / "out" / "test.jsonl")
    ids = [r["id"] for r in train + test]
    assert len(ids) == len(set(ids)) == 627
    for record in train + test:
        roles = [m["from"] for m in record["conversations"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["human", "gpt"] * (len(body) // 2) and len(body) >= 2
        assert all(m["value"] == m["value"].strip() and m["value"] for m in record["conversations"])


# --------------------------------------------------------------------------- determinism and reuse
def many_records(tmp_path, n=2400):
    """Enough rows (>= 2000) that --num-proc 2 really starts two workers."""
    ultra = write_jsonl(
        tmp_path / "in" / "many.jsonl",
        [ultrachat_record(("user", f"Q{i % 2300}"), ("assistant", f"A{i % 2300}"), *([("user", "more")] if i % 7 == 0 else []))
         for i in range(n)],
    )
    share = write_json(tmp_path / "in" / "many.json", [sharegpt_record(("human", f"S{i}"), ("gpt", "B")) for i in range(n)])
    return ultra, share


def test_same_inputs_give_byte_identical_files_whatever_num_proc(registry, tmp_path):
    ultra, share = many_records(tmp_path)
    sources = (f"ultrachat:path={ultra}", f"sharegpt:path={share}")
    one = do_mix(registry, tmp_path, *sources, out="one", cache="cache1", num_proc=1)
    two = do_mix(registry, tmp_path, *sources, out="two", cache="cache2", num_proc=2)
    assert list((tmp_path / "cache2" / "converted").glob("ultrachat-*_00001_of_00002.arrow"))  # really two workers
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert one == two
    assert one["sources"][0]["duplicates"] == 100 and one["split"] == {"train": 4465, "test": 235}


def test_a_repeated_run_reuses_the_result_and_says_so(registry, tmp_path, small):
    sources = (f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}")
    first = do_mix(registry, tmp_path, *sources)
    train = tmp_path / "out" / "train.jsonl"
    before = (train.stat().st_mtime_ns, train.stat().st_ino)
    ui = RecordingUI()
    second = do_mix(registry, tmp_path, *sources, ui=ui, num_proc=2)
    assert second["reused"] is True and second["fingerprint"] == first["fingerprint"]
    assert ui.logs == [f"{tmp_path / 'out'}: up to date (fingerprint {first['fingerprint'][:12]}), reusing the existing mix"]
    assert (train.stat().st_mtime_ns, train.stat().st_ino) == before
    third = do_mix(registry, tmp_path, *sources, seed=5)
    assert third["reused"] is False and third["fingerprint"] != first["fingerprint"]


def test_an_edited_input_changes_the_fingerprint(registry, tmp_path, small):
    first = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", test_ratio=0)
    with open(small.ultra, "a", encoding="utf-8") as f:
        f.write(json.dumps(ultrachat_record(("user", "Q new"), ("assistant", "A new"))) + "\n")
    second = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", test_ratio=0)
    assert second["fingerprint"] != first["fingerprint"] and second["reused"] is False
    assert second["sources"][0]["rows_read"] == 7
    assert by_id(tmp_path / "out" / "train.jsonl")["ultrachat_6"] == [H("Q new"), G("A new")]


def test_options_and_settings_are_in_the_fingerprint(registry, tmp_path, small):
    base = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}")["fingerprint"]
    variants = [
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=5")["fingerprint"],
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", test_ratio=0.1)["fingerprint"],
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", dedup=False)["fingerprint"],
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}", skip_invalid=True)["fingerprint"],
    ]
    assert len({base, *variants}) == 5
    assert do_mix(registry, tmp_path, f"ultrachat:path={small.ultra}")["fingerprint"] == base


class _FailingColumn:
    """The converted rows, failing on the ``fail_at``-th batch read: a write interrupted midway."""

    def __init__(self, column, fail_at, error):
        self.column, self.reads, self.fail_at, self.error = column, 0, fail_at, error

    def lines(self, rows):
        self.reads += 1
        if self.reads >= self.fail_at:
            raise self.error
        return self.column.lines(rows)


def fail_writing(monkeypatch, file_name, fail_at=3, error=OSError(28, "No space left on device")):
    """Make writing ``file_name`` fail after ``fail_at - 1`` batches of 2 lines were written."""
    original = mix._write_split
    monkeypatch.setattr(mix, "_WRITE_BATCH", 2)

    def write_split(path, column, order):
        if path.name.startswith(f".{file_name}.tmp-"):  # the split's temporary name
            column = _FailingColumn(column, fail_at, error)
        return original(path, column, order)

    monkeypatch.setattr(mix, "_write_split", write_split)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_interrupted_write_leaves_no_partial_file(registry, tmp_path, small, monkeypatch, error):
    sources = (f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}")
    fail_writing(monkeypatch, "train.jsonl", error=error)
    with pytest.raises(type(error)):
        do_mix(registry, tmp_path, *sources, test_ratio=0)
    assert sorted(os.listdir(tmp_path / "out")) == []  # no train.jsonl, no temporary file, no manifest
    monkeypatch.undo()
    ui = RecordingUI()
    manifest = do_mix(registry, tmp_path, *sources, test_ratio=0, ui=ui)
    assert manifest["reused"] is False and ui.logs == []
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json", "test.jsonl", "train.jsonl"]
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == 6


def test_a_failure_after_a_complete_mix_leaves_nothing_taken_as_complete(registry, tmp_path, small, monkeypatch):
    sources = (f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}")
    old = do_mix(registry, tmp_path, *sources, test_ratio=0.5)
    old_train = (tmp_path / "out" / "train.jsonl").read_bytes()
    old_test = (tmp_path / "out" / "test.jsonl").read_bytes()
    # a new mix (another seed) fails while writing test.jsonl, its train split complete:
    # the old pair stays as it was, never a new train split beside the old test split
    fail_writing(monkeypatch, "test.jsonl", fail_at=2)
    with pytest.raises(OSError):
        do_mix(registry, tmp_path, *sources, test_ratio=0.5, seed=3)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "out")) == ["test.jsonl", "train.jsonl"]  # no manifest, no temporary file
    assert read_manifest(tmp_path / "out") is None
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == old_train
    assert (tmp_path / "out" / "test.jsonl").read_bytes() == old_test
    # neither the old settings nor the new ones take the folder as complete
    ui = RecordingUI()
    again = do_mix(registry, tmp_path, *sources, test_ratio=0.5, ui=ui)
    assert again["reused"] is False and ui.logs == [] and again["fingerprint"] == old["fingerprint"]
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == old_train


def test_a_mix_too_small_for_a_test_split_says_so(registry, tmp_path, small):
    ui = RecordingUI()
    manifest = do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=2", test_ratio=0.05, ui=ui)
    n = manifest["split"]["train"]
    assert manifest["split"]["test"] == 0 and 0 < n <= 2
    assert ui.warnings == [f"{n} conversation(s) x --test-ratio 0.05 rounds to an empty test split; mix more data "
                           "(train --testpath needs at least one conversation)"]
    ui = RecordingUI()
    do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=2", test_ratio=0, ui=ui)
    assert ui.warnings == []  # asked for no test split


def test_an_empty_source_is_named(registry, tmp_path, small):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(UserError, match=r"source ultrachat: no records in .*empty.jsonl; check the file"):
        do_mix(registry, tmp_path, f"ultrachat:path={tmp_path / 'empty.jsonl'}")
    with pytest.raises(UserError, match=r"source sharegpt: no records in .*empty.json; check the file"):
        do_mix(registry, tmp_path, f"sharegpt:path={tmp_path / 'empty.json'}")
    with pytest.raises(UserError, match=r"source ultrachat: limit=0 leaves no records of "):
        do_mix(registry, tmp_path, f"ultrachat:path={small.ultra},limit=0")


def test_an_interruption_between_the_renames_leaves_no_mixed_pair(registry, tmp_path, small, monkeypatch):
    """The new splits take their names one after the other; stopped in between, the folder
    holds the new test split and no train split, never a new split beside an old one."""
    sources = (f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}")
    do_mix(registry, tmp_path, *sources, test_ratio=0.5)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(mix.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        do_mix(registry, tmp_path, *sources, test_ratio=0.5, seed=3)
    monkeypatch.undo()
    assert calls == ["test.jsonl", "train.jsonl"]
    assert sorted(os.listdir(tmp_path / "out")) == ["test.jsonl"] and read_manifest(tmp_path / "out") is None


def test_a_hand_edited_output_is_not_taken_as_complete(registry, tmp_path, small):
    sources = (f"ultrachat:path={small.ultra}",)
    do_mix(registry, tmp_path, *sources, test_ratio=0)
    train = tmp_path / "out" / "train.jsonl"
    complete = train.read_bytes()
    train.write_bytes(complete[: len(complete) // 2])
    assert read_manifest(tmp_path / "out") is None
    assert do_mix(registry, tmp_path, *sources, test_ratio=0)["reused"] is False
    assert train.read_bytes() == complete


def test_read_manifest_of_a_folder_without_one(tmp_path):
    assert read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{not json")
    assert read_manifest(tmp_path) is None


def test_default_num_proc():
    assert default_num_proc(19_999) is None
    assert default_num_proc(20_000) == max(1, min(os.cpu_count() or 1, 16))


def test_rows_are_read_the_same_through_the_arrow_table(registry, tmp_path, small, monkeypatch):
    """Writing reads rows from the converted files with pread; a dataset not laid out as
    expected is read through its Arrow table instead, with the same bytes."""
    sources = (f"ultrachat:path={small.ultra}", f"sharegpt:path={small.share}")
    monkeypatch.setattr(mix, "_WRITE_BATCH", 4)
    fast = do_mix(registry, tmp_path, *sources, out="fast", test_ratio=0.5)

    def not_indexable(self, run):
        raise mix._NotIndexable

    monkeypatch.setattr(mix._JsonColumn, "_index", not_indexable)
    slow = do_mix(registry, tmp_path, *sources, out="slow", test_ratio=0.5)
    assert fast["files"] == slow["files"]
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes()


def test_json_column_reads_rows_in_any_order_across_sources_and_shards(registry, tmp_path):
    from eagle3kit.mix import SourceRun, _convert, _JsonColumn
    from eagle3kit.rawdata import load_raw

    ultra, share = many_records(tmp_path, n=2100)
    runs = []
    for name, path in (("ultrachat", ultra), ("sharegpt", share)):
        run = SourceRun(name, name, "0", {"path": str(path), "limit": None, "weight": None})
        run.raw = load_raw(registry.source(name), run.options, tmp_path / "cache")
        _convert(run, registry, tmp_path / "cache", 2, RecordingUI())
        runs.append(run)
    assert [len(run.converted.cache_files) for run in runs] == [2, 2]  # two worker shards per source
    every = [line for run in runs for line in run.converted["json"]]  # global row order
    rows = np.array([4199, 0, 2100, 1050, 1049, 3000, 7, 2099, 7], dtype=np.int64)
    column = _JsonColumn(runs)
    try:
        assert column.lines(rows) == "".join(every[r] + "\n" for r in rows).encode("utf-8")
        assert column.lines(rows[:0]) == b""
    finally:
        column.close()


def test_repo_option_mixes_another_dataset_in_the_sources_format(registry, tmp_path):
    """``sharegpt:repo=...,files=...``: a ShareGPT-format dataset other than the built-in
    ones (a local folder stands in for a Hub repository: ``load_dataset`` takes both),
    only the named files; the manifest says where the records came from."""
    folder = tmp_path / "my-sharegpt"
    write_json(folder / "part1.json", [sharegpt_record(("human", "Q1"), ("gpt", "A1"), id="a"),
                                      sharegpt_record(("human", "Q2"), ("gpt", "A2"), id="b")])
    write_json(folder / "part2.json", [sharegpt_record(("human", "Q3"), ("gpt", "A3"), id="c")])
    do_mix(registry, tmp_path, f"sharegpt:repo={folder},files=part1.json", test_ratio=0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    source = manifest["sources"][0]
    assert source["loaded_from"] == f"{folder} [train] (part1.json)"
    assert source["options"]["repo"] == str(folder) and source["options"]["files"] == ["part1.json"]
    assert by_id(tmp_path / "out" / "train.jsonl") == {"sharegpt_0": [H("Q1"), G("A1")], "sharegpt_1": [H("Q2"), G("A2")]}
    every = do_mix(registry, tmp_path, f"sharegpt:repo={folder}", out="out2", test_ratio=0)
    assert every["sources"][0]["rows_read"] == 3 and every["fingerprint"] != manifest["fingerprint"]


def test_an_edited_plugin_converts_again(tmp_path):
    """Its version unchanged, the conversion cached from its old code is not reused."""
    import importlib.util

    def plugin(prefix):
        (tmp_path / "qa_edit.py").write_text(
            "from eagle3kit import Source, hookimpl\n"
            "@hookimpl\ndef register_sources(register):\n    register(Source(name='qa', description='d'))\n"
            "@hookimpl\ndef convert_to_unified(record):\n"
            f"    return [{{'from': 'user', 'value': record['q']}}, {{'from': 'assistant', 'value': {prefix!r} + record['a']}}]\n")
        spec = importlib.util.spec_from_file_location("qa_edit", tmp_path / "qa_edit.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return load_registry(entry_points=False, extra_plugins=[("qa", module)])

    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q", "a": "A"}, {"q": "R", "a": "B"}])
    do_mix(plugin(""), tmp_path, f"qa:path={path}", out="before", test_ratio=0)
    do_mix(plugin("edited "), tmp_path, f"qa:path={path}", out="after", test_ratio=0)
    assert [c[1]["value"] for c in by_id(tmp_path / "before" / "train.jsonl").values()] == ["A", "B"]
    assert [c[1]["value"] for c in by_id(tmp_path / "after" / "train.jsonl").values()] == ["edited A", "edited B"]
