"""eagle3kit.rawdata: reading raw JSON, local copies of every kind, and Hub fallback."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest

from conftest import sharegpt_record, ultrachat_record, write_json, write_jsonl
from eagle3kit import HubRepo, Source, UserError, hookimpl
from eagle3kit import rawdata
from eagle3kit.plugins import load_registry
from eagle3kit.rawdata import (
    FILE_COLUMN,
    LENGTH_COLUMN,
    LOC_COLUMN,
    START_COLUMN,
    iter_json_records,
    load_hub,
    load_local,
    load_raw,
    read_records,
)

ULTRA = Source(name="ultrachat", description="d", repos=(HubRepo("HuggingFaceH4/ultrachat_200k", split="train_sft"),))
LOCAL = Source(name="local", description="d")
OFFLINE_REPO = "eagle3kit-tests/no-such-dataset"

RECORDS = [ultrachat_record(("user", f"Q{i}"), ("assistant", f"A{i}"), prompt_id=str(i)) for i in range(3)]


def texts(raw) -> list[str]:
    """The texts of the records a JSON-file RawData indexes, read back from the files."""
    ds = raw.dataset
    return [b.decode("utf-8") for b in read_records(raw.files, ds[FILE_COLUMN], ds[START_COLUMN], ds[LENGTH_COLUMN])]


def rows(raw) -> list[dict]:
    """The records of a loaded RawData as dicts (parsing raw JSON texts)."""
    if raw.is_raw_json:
        return [json.loads(text) for text in texts(raw)]
    return raw.dataset.to_list()


# --------------------------------------------------------------------------- iter_json_records
def test_json_lines_yield_text_and_1_based_line_numbers_skipping_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": 2}\n{"c": 3}', encoding="utf-8")
    assert list(iter_json_records(str(path))) == [('{"a": 1}\n', 1), ('{"b": 2}\n', 4), ('{"c": 3}', 5)]


def test_json_array_yields_record_texts_and_0_based_indices(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('\ufeff \n[ {"a": [1, {"x": "]"}]} ,\n{"b": "}, {"}\n, {} ]\n', encoding="utf-8")
    assert list(iter_json_records(str(path))) == [('{"a": [1, {"x": "]"}]}', 0), ('{"b": "}, {"}', 1), ("{}", 2)]


@pytest.mark.parametrize("text", ["", "  \n", "[]", " [ \n ] "])
def test_empty_files_and_arrays_yield_nothing(tmp_path, text):
    path = tmp_path / "e.json"
    path.write_text(text, encoding="utf-8")
    assert list(iter_json_records(str(path))) == []


def test_json_array_records_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(rawdata, "_CHUNK", 64)
    records = [sharegpt_record(("human", "q" * (i * 7)), ("gpt", "ü" * i), id=f"r{i}") for i in range(40)]
    path = write_json(tmp_path / "big.json", records)
    got = list(iter_json_records(str(path)))
    assert [json.loads(text) for text, _ in got] == records
    assert [loc for _, loc in got] == list(range(40))


def test_json_array_syntax_error_line_counts_bytes_of_multibyte_text(tmp_path, monkeypatch):
    monkeypatch.setattr(rawdata, "_CHUNK", 16)
    path = tmp_path / "bad.json"
    path.write_text('[{"a": "grüße 世界"},\r\n{"b": "ü"},\n\n{"c": "é"}\n{"d": 1}]', encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(iter_json_records(str(path)))
    assert str(info.value) == f"{path}: record 3 (line 5): expected ',' or ']' between records, found '{{'"


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"a": 1}\n{"b": 2}]', "record 1 (line 2): expected ',' or ']' between records, found '{'"),
        ('[{"a": 1},\n{"b": 2,}]', "record 1 (line 2): bad JSON: Expecting property name enclosed in double quotes"),
        ('[{"a": 1},\n{"b": 2}', "record 2 (line 2): the file ends inside the JSON array (missing ']')"),
        ('[{"a": 1},\n', "record 1 (line 2): the file ends after ','"),
        ('[\n\n{"a": tru}]', "record 0 (line 3): bad JSON: Expecting value"),
    ],
)
def test_json_array_syntax_errors_name_file_record_and_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(iter_json_records(str(path)))
    assert str(info.value) == f"{path}: {message}"


# --------------------------------------------------------------------------- load_local: each kind
def test_load_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    raw = load_local(ULTRA, str(path), tmp_path / "cache")
    assert raw.is_raw_json and rows(raw) == RECORDS
    assert raw.dataset[LOC_COLUMN] == [1, 2, 3]
    assert (raw.origin, raw.where, raw.attempts) == (str(path), f"{path} line {{loc}}", [])


def test_load_json_array_file(tmp_path):
    path = write_json(tmp_path / "s.json", RECORDS)
    raw = load_local(ULTRA, str(path), tmp_path / "cache")
    assert raw.is_raw_json and rows(raw) == RECORDS
    assert raw.dataset[LOC_COLUMN] == [0, 1, 2]
    assert raw.where == f"{path} record {{loc}}"


def test_load_json_lines_saved_as_dot_json(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", RECORDS)
    raw = load_local(ULTRA, str(path), tmp_path / "cache")
    assert rows(raw) == RECORDS and raw.where == f"{path} line {{loc}}"


def test_records_of_any_shape_survive_json_loading(tmp_path):
    # Arrow needs one schema; raw dumps do not have one. The raw text is kept as is.
    mixed = [{"conversations": [{"from": "human", "value": "Q"}]}, {"conversations": "oops", "extra": [1, "x"]}, [1, 2]]
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    assert rows(load_local(LOCAL, str(path), tmp_path / "cache")) == mixed


def test_load_parquet_file(tmp_path):
    import datasets

    path = tmp_path / "u.parquet"
    datasets.Dataset.from_list(RECORDS).to_parquet(str(path))
    raw = load_local(ULTRA, str(path), tmp_path / "cache")
    assert not raw.is_raw_json and rows(raw) == RECORDS
    assert (raw.origin, raw.where) == (str(path), f"{path} row {{row}}")


def test_load_save_to_disk_folder(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(folder))
    raw = load_local(ULTRA, str(folder), tmp_path / "cache")
    assert not raw.is_raw_json and rows(raw) == RECORDS
    assert raw.where == f"{folder} row {{row}}"


def test_load_save_to_disk_dataset_dict_picks_the_sources_split(tmp_path):
    import datasets

    folder = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {
            "test_sft": datasets.Dataset.from_list(RECORDS[:1]),
            "train_sft": datasets.Dataset.from_list(RECORDS),
        }
    ).save_to_disk(str(folder))
    assert rows(load_local(ULTRA, str(folder), tmp_path / "cache")) == RECORDS
    with pytest.raises(UserError) as info:
        load_local(LOCAL, str(folder), tmp_path / "cache")
    assert str(info.value) == (f"--source local:path={folder}: the folder holds the splits test_sft, train_sft, not "
                               "'train'; pick one with split=NAME")
    assert rows(load_local(LOCAL, str(folder), tmp_path / "cache", split="test_sft")) == RECORDS[:1]


def test_load_folder_of_json_files_in_name_order(tmp_path):
    folder = tmp_path / "dump"
    write_jsonl(folder / "b.jsonl", RECORDS[1:])
    write_json(folder / "a.json", RECORDS[:1])
    (folder / ".hidden.json").write_text("not json", encoding="utf-8")
    (folder / "README.md").write_text("# notes", encoding="utf-8")
    raw = load_local(ULTRA, str(folder), tmp_path / "cache")
    assert rows(raw) == RECORDS
    assert raw.where == f"{folder} record {{row}}"


def test_load_folder_of_parquet_files(tmp_path):
    import datasets

    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list(RECORDS).to_parquet(str(folder / "train_sft-00000-of-00001.parquet"))
    raw = load_local(ULTRA, str(tmp_path / "pq"), tmp_path / "cache")
    assert not raw.is_raw_json and rows(raw) == RECORDS


SHAREGPT = Source(name="sharegpt", description="d", repos=(
    HubRepo("anon/ShareGPT", data_files="ShareGPT_V3_unfiltered_cleaned_split.json"),
    HubRepo("mirror/ShareGPT", data_files=("sg_part1.json", "sg_part2.json")),
))


def test_a_copy_of_a_hub_repository_reads_the_files_the_source_names(tmp_path):
    # the repository's other files (a subset, HTML versions) are not more records
    folder = tmp_path / "snapshot"
    write_json(folder / "ShareGPT_V3_unfiltered_cleaned_split.json", RECORDS)
    write_json(folder / "ShareGPT_V3_unfiltered_cleaned_split_no_imsorry.json", RECORDS[:2])
    write_json(folder / "HTML_cleaned_raw_dataset" / "sg_90k_part1_html_cleaned.json", RECORDS[1:])
    raw = load_local(SHAREGPT, str(folder), tmp_path / "cache")
    assert rows(raw) == RECORDS
    assert raw.note == (f"source sharegpt: reading 1 file(s) of {folder} (the files sharegpt reads from anon/ShareGPT): "
                        "ShareGPT_V3_unfiltered_cleaned_split.json")
    # the fallback's files when the first repository's are not there
    mirror = tmp_path / "mirror"
    write_json(mirror / "sg_part2.json", RECORDS[2:])
    write_json(mirror / "sg_part1.json", RECORDS[:2])
    write_json(mirror / "other.json", RECORDS[:1])
    assert rows(load_local(SHAREGPT, str(mirror), tmp_path / "cache")) == RECORDS
    # files= picks, and says what there is when nothing matches
    raw = load_local(SHAREGPT, str(folder), tmp_path / "cache", files=("HTML*",))
    assert rows(raw) == RECORDS[1:] and "(files=HTML*)" in raw.note
    with pytest.raises(UserError) as info:
        load_local(SHAREGPT, str(folder), tmp_path / "cache", files=("nope*",))
    assert str(info.value) == (
        f"--source sharegpt:path={folder}: no data file matches files=nope*; the folder holds "
        "HTML_cleaned_raw_dataset/sg_90k_part1_html_cleaned.json, ShareGPT_V3_unfiltered_cleaned_split.json, "
        "ShareGPT_V3_unfiltered_cleaned_split_no_imsorry.json")


def test_the_patterns_a_repository_names_for_its_split():
    files = {"train": ["train-*.json", "extra.json"], "test": "test.json"}
    assert rawdata._patterns(files, "train") == ["train-*.json", "extra.json"]
    assert rawdata._patterns(files, "validation") == ["train-*.json", "extra.json", "test.json"]
    assert rawdata._patterns("a.json") == ["a.json"] and rawdata._patterns(("a", "b")) == ["a", "b"]
    assert rawdata._patterns(None) == []


def test_a_folder_of_json_files_names_each_records_file_and_line(tmp_path):
    folder = tmp_path / "dump"
    write_jsonl(folder / "b.jsonl", RECORDS[1:])
    write_json(folder / "a.json", RECORDS[:1])
    raw = load_local(LOCAL, str(folder), tmp_path / "cache")
    assert raw.file_where == (f"{folder / 'a.json'} record {{loc}}", f"{folder / 'b.jsonl'} line {{loc}}")


def test_parquet_folders_pick_a_split_and_ignore_the_dataset_description(tmp_path):
    import datasets

    folder = tmp_path / "pq"
    folder.mkdir()
    datasets.Dataset.from_list(RECORDS[:2]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list(RECORDS[2:]).to_parquet(str(folder / "test.parquet"))
    (folder / "dataset_infos.json").write_text("{}", encoding="utf-8")  # a Hub repository's description
    assert rows(load_local(ULTRA, str(folder), tmp_path / "cache")) == RECORDS[:2]  # no train_sft: train
    assert rows(load_local(ULTRA, str(folder), tmp_path / "cache", split="test")) == RECORDS[2:]
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(folder), tmp_path / "cache", split="dev")
    assert str(info.value) == (f"--source ultrachat:path={folder}: the folder holds the splits test, train, not 'dev'; "
                               "pick one with split=NAME")
    (folder / "extra.jsonl").write_text(json.dumps(RECORDS[0]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds both \.parquet \(2\) and \.json/\.jsonl \(1\) data files: extra.jsonl, "
                                        r"test.parquet, train.parquet; pick one kind with files=PATTERN"):
        load_local(ULTRA, str(folder), tmp_path / "cache")
    assert rows(load_local(ULTRA, str(folder), tmp_path / "cache", files=("*.parquet",), split="test")) == RECORDS[2:]


def test_unreadable_parquet_is_one_line(tmp_path):
    (tmp_path / "bad.parquet").write_text("garbage", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(tmp_path / "bad.parquet"), tmp_path / "cache")
    assert str(info.value).startswith(f"--source ultrachat:path={tmp_path / 'bad.parquet'}: cannot read this parquet "
                                      "file: ArrowInvalid: ")


def test_split_and_files_do_not_apply_to_one_file(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(path), tmp_path / "cache", split="test")
    assert str(info.value) == f"--source ultrachat:path={path}: split= and files= pick data in a folder; {path} is one file"


def test_one_pretty_printed_json_object_is_refused_not_read_as_lines(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": RECORDS, "version": 1}, indent=2), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(path), tmp_path / "cache")
    assert str(info.value) == (f"{path}: one JSON object spread over many lines (keys 'data', 'version'), not a JSON "
                               "array of records or JSON lines (one record per line); save the records as one of those")
    # JSON lines whose first line is broken are still read (that record is reported when converted)
    lines = tmp_path / "lines.jsonl"
    lines.write_text("{broken\n" + json.dumps(RECORDS[0]) + "\n", encoding="utf-8")
    assert len(load_local(ULTRA, str(lines), tmp_path / "cache").dataset) == 2


def test_load_raw_uses_path_when_given_and_the_hub_otherwise(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    assert rows(load_raw(ULTRA, {"path": str(path)}, tmp_path / "cache")) == RECORDS
    offline = Source(name="o", description="d", repos=(HubRepo(OFFLINE_REPO),))
    logged = []
    with pytest.raises(UserError, match="could not load source 'o' from any of its repositories"):
        load_raw(offline, {"path": None}, tmp_path / "cache", log=logged.append)
    assert len(logged) == 1


# --------------------------------------------------------------------------- load_local: errors
def test_missing_path(tmp_path):
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(tmp_path / "nope.jsonl"), tmp_path / "cache")
    assert str(info.value) == f"--source ultrachat:path={tmp_path / 'nope.jsonl'}: no such file or folder"


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(path), tmp_path / "cache")
    assert str(info.value) == (
        f"--source ultrachat:path={path}: unsupported file type .csv; give a .json, .jsonl or .parquet file, or a folder"
    )


def test_folder_without_data_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        load_local(ULTRA, str(tmp_path / "empty"), tmp_path / "cache")
    assert str(info.value) == f"--source ultrachat:path={tmp_path / 'empty'}: the folder holds no .json, .jsonl or .parquet file"


def test_bad_json_array_is_a_user_error_not_a_traceback(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('[{"id": "a"},\n{"id": "b"}\n{"id": "c"}]', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_local(LOCAL, str(path), tmp_path / "cache")
    assert str(info.value) == f"{path}: record 2 (line 3): expected ',' or ']' between records, found '{{'"


def test_json_lines_are_not_decoded_when_indexed(tmp_path):
    # a line that is not UTF-8 is one malformed record, found when converted (test_mix.py)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"a": "ok"}\n\n{"a": "café"}\n'.encode("latin-1"))
    raw = load_local(LOCAL, str(path), tmp_path / "cache")
    ds = raw.dataset
    assert read_records(raw.files, ds[FILE_COLUMN], ds[START_COLUMN], ds[LENGTH_COLUMN]) == [
        b'{"a": "ok"}', '{"a": "café"}'.encode("latin-1")]
    assert ds[LOC_COLUMN] == [1, 3]


def test_a_json_array_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"a": "café"}]'.encode("latin-1"))
    with pytest.raises(UserError) as info:
        load_local(LOCAL, str(path), tmp_path / "cache")
    assert str(info.value) == f"{path}: not UTF-8 text (invalid continuation byte); save the file as UTF-8"


# --------------------------------------------------------------------------- JSON lines, block by block
def test_json_lines_texts_locs_blank_lines_crlf_bom_and_no_final_newline(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n\t{"b": 2}\n\n{"c": "\xc3\xbc"}')
    raw = load_local(LOCAL, str(path), tmp_path / "cache")
    assert texts(raw) == ['{"a": 1}\r', '\t{"b": 2}', '{"c": "ü"}']
    assert raw.dataset[LOC_COLUMN] == [1, 4, 6]
    assert rows(raw) == [{"a": 1}, {"b": 2}, {"c": "ü"}]
    st = os.stat(path)
    assert raw.files == ((str(path), st.st_size, st.st_mtime_ns),)
    assert raw.dataset.column_names == [FILE_COLUMN, START_COLUMN, LENGTH_COLUMN, LOC_COLUMN]


def test_json_lines_across_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(rawdata, "_BLOCK", 50)
    records = [{"i": i, "text": "ä" * (i * 13 % 97)} for i in range(60)]  # some lines longer than a block
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(10, "")
    lines.insert(30, "  ")
    path = tmp_path / "blocks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = load_local(LOCAL, str(path), tmp_path / "cache")
    assert rows(raw) == records
    assert raw.dataset[LOC_COLUMN] == [n for n, line in enumerate(lines, 1) if line.strip()]
    assert texts(raw) == [line for line in lines if line.strip()]


def test_json_array_byte_ranges_with_multibyte_text_crlf_and_bom(tmp_path, monkeypatch):
    monkeypatch.setattr(rawdata, "_CHUNK", 64)
    records = [{"id": i, "text": "grüße 世界 " * (i % 7), "turns": [{"x": "]},{"}]} for i in range(30)]
    body = ",\r\n".join(json.dumps(r, ensure_ascii=False, indent=1).replace("\n", "\r\n") for r in records)
    path = tmp_path / "array.json"
    path.write_bytes(b"\xef\xbb\xbf [\r\n" + body.encode("utf-8") + b"\r\n]\r\n")
    raw = load_local(LOCAL, str(path), tmp_path / "cache")
    assert rows(raw) == records
    assert raw.dataset[LOC_COLUMN] == list(range(30))
    assert [json.loads(t) for t in texts(raw)] == records


def test_read_records_refuses_a_file_changed_after_indexing(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    raw = load_local(ULTRA, str(path), tmp_path / "cache")
    with open(path, "a", encoding="utf-8") as f:
        f.write("{}\n")
    with pytest.raises(UserError) as info:
        texts(raw)
    assert str(info.value) == f"{path} changed while it was being mixed (size or modification time); run again"


def test_empty_json_lines_file_gives_no_records(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    assert len(load_local(LOCAL, str(path), tmp_path / "cache").dataset) == 0


# --------------------------------------------------------------------------- caching
def test_an_edited_file_gets_a_new_fingerprint_and_is_read_again(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    first = load_local(ULTRA, str(path), tmp_path / "cache")
    again = load_local(ULTRA, str(path), tmp_path / "cache")
    assert again.dataset._fingerprint == first.dataset._fingerprint
    write_jsonl(path, RECORDS[:2])
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    edited = load_local(ULTRA, str(path), tmp_path / "cache")
    assert edited.dataset._fingerprint != first.dataset._fingerprint
    assert rows(edited) == RECORDS[:2]


def test_the_raw_fingerprint_does_not_depend_on_the_cache_folder(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", RECORDS)
    one = load_local(ULTRA, str(path), tmp_path / "cache-1")
    two = load_local(ULTRA, str(path), tmp_path / "cache-2")
    assert one.dataset._fingerprint == two.dataset._fingerprint
    assert one.dataset.cache_files != two.dataset.cache_files


def test_same_size_edit_with_a_new_mtime_is_read_again(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"q": "aaa"}])
    first = load_local(LOCAL, str(path), tmp_path / "cache")
    stat = os.stat(path)
    write_jsonl(path, [{"q": "bbb"}])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    edited = load_local(LOCAL, str(path), tmp_path / "cache")
    assert edited.dataset._fingerprint != first.dataset._fingerprint
    assert rows(edited) == [{"q": "bbb"}]


# --------------------------------------------------------------------------- the Hub, with fallback
def fallback_plugin(folder: Path):
    """A test plugin whose source's primary repository cannot load offline and whose
    second 'repository' is a local folder (datasets.load_dataset takes a folder path)."""
    module = types.ModuleType("fallback_plugin")

    @hookimpl
    def register_sources(register):
        register(
            Source(
                name="fallback",
                description="primary on the Hub (offline in tests), then a local folder",
                repos=(HubRepo(OFFLINE_REPO), HubRepo(str(folder), split="train")),
            )
        )

    @hookimpl
    def convert_to_unified(record):
        return [{"from": "human", "value": record["q"]}, {"from": "gpt", "value": record["a"]}]

    module.register_sources, module.convert_to_unified = register_sources, convert_to_unified
    return module


def test_hub_fallback_to_the_second_repository_logs_the_failed_one(tmp_path):
    folder = tmp_path / "mirror"
    write_jsonl(folder / "data.jsonl", [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": "A2"}])
    registry = load_registry(entry_points=False, extra_plugins=[("fallback", fallback_plugin(folder))])
    logged = []
    raw = load_hub(registry.source("fallback"), tmp_path / "cache", log=logged.append)
    primary_error = "ConnectionError: Couldn't reach 'eagle3kit-tests/no-such-dataset' on the Hub (OfflineModeIsEnabled)"
    assert logged == [f"source fallback: could not load {OFFLINE_REPO} [train]: {primary_error}"]
    assert raw.attempts == [
        {"repo": f"{OFFLINE_REPO} [train]", "error": primary_error},
        {"repo": f"{folder} [train]", "error": ""},
    ]
    assert (raw.origin, raw.where) == (f"{folder} [train]", f"{folder} row {{row}}")
    assert rows(raw) == [{"q": "Q1", "a": "A1"}, {"q": "Q2", "a": "A2"}]


def test_hub_all_repositories_fail_lists_every_attempt_and_suggests_path(tmp_path):
    source = Source(
        name="nowhere",
        description="d",
        repos=(HubRepo(OFFLINE_REPO), HubRepo(str(tmp_path / "missing"), split="train_sft", data_files=("x.json", "y.json"))),
    )
    logged = []
    with pytest.raises(UserError) as info:
        load_hub(source, tmp_path / "cache", log=logged.append)
    assert str(info.value) == (
        "could not load source 'nowhere' from any of its repositories:\n"
        f"  - {OFFLINE_REPO} [train]: ConnectionError: Couldn't reach '{OFFLINE_REPO}' on the Hub (OfflineModeIsEnabled)\n"
        f"  - {tmp_path / 'missing'} [train_sft] (x.json, y.json): FileNotFoundError: "
        f"Couldn't find any data file at {tmp_path / 'missing'}.\n"
        "Check the network (HF_HUB_OFFLINE, HF_ENDPOINT), or download a copy and pass --source nowhere:path=FILE_OR_DIR"
    )
    assert len(logged) == 2


def test_hub_arguments_passed_to_load_dataset(tmp_path):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) == 1:
            raise RuntimeError("first fails\nsecond line not shown")
        return ["row"]

    source = Source(
        name="s",
        description="d",
        repos=(
            HubRepo("org/a", split="train_sft", revision="abc123", name="cfg"),
            HubRepo("org/b", data_files=("f1.json", "f2.json")),
        ),
    )
    logged = []
    raw = load_hub(source, tmp_path / "cache", log=logged.append, load_dataset=fake_load_dataset)
    cache = str(tmp_path / "cache" / "hub")
    assert calls == [
        (("org/a", "cfg"), {"split": "train_sft", "data_files": None, "revision": "abc123", "cache_dir": cache}),
        (("org/b", None), {"split": "train", "data_files": ["f1.json", "f2.json"], "revision": None, "cache_dir": cache}),
    ]
    assert logged == ["source s: could not load org/a [train_sft]: RuntimeError: first fails"]
    assert raw.dataset == ["row"] and raw.origin == "org/b [train] (f1.json, f2.json)"


def test_an_unreachable_hub_is_asked_nothing_each_mirror_only_the_cache(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from eagle3kit import hub

    calls = []

    def fake_load_dataset(repo_id, *args, **kwargs):
        calls.append((repo_id, datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        raise ConnectionError(f"Couldn't reach '{repo_id}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(hub, "hub_unreachable", lambda: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    source = Source(name="s", description="d", repos=(HubRepo("org/a"), HubRepo("org/b"), HubRepo("org/c")))
    with pytest.raises(UserError) as info:
        load_hub(source, tmp_path / "cache", log=lambda line: None, load_dataset=fake_load_dataset)
    # each mirror may be the one cached; none is asked of the Hub (each would retry for 24 s)
    assert calls == [("org/a", True, True), ("org/b", True, True), ("org/c", True, True)]
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == (False, False)  # as it was
    assert str(info.value) == (
        "could not load source 's' from any of its repositories:\n"
        + "".join(f"  - org/{x} [train]: not in the cache ({tmp_path / 'cache' / 'hub'}), and the Hugging Face Hub "
                  "cannot be reached (huggingface.co:443: Name or service not known)\n" for x in "abc")
        + "Load it once where the Hub can be reached (with the same --cache-dir), or download a copy there "
          "(hf download --repo-type dataset org/a --local-dir DIR) and pass --source s:path=DIR")


UC_RECORDS = [ultrachat_record(("user", f"question {i}"), ("assistant", f"answer {i}"), prompt_id=str(i)) for i in range(3)]


def _cache_as_if_loaded_from_the_hub(tmp_path, repo_id: str, split: str) -> Path:
    """A ``datasets`` cache holding ``repo_id`` as a load from the Hub leaves it: a JSON
    load's cached Arrow files, moved to where the Hub dataset's would be."""
    import datasets

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in UC_RECORDS), encoding="utf-8")
    cache = tmp_path / "cache"
    datasets.load_dataset("json", data_files={split: str(raw)}, cache_dir=str(cache / "json-load"))
    (built,) = [p for p in (cache / "json-load").glob("json/*/*/*") if p.is_dir()]
    org, name = repo_id.split("/")
    home = cache / "hub" / f"{org}___{name}" / "default" / "0.0.0" / built.name
    home.parent.mkdir(parents=True)
    built.rename(home)
    (home / f"json-{split}.arrow").rename(home / f"{name}-{split}.arrow")
    return cache


def test_an_unreachable_hub_still_loads_a_cached_copy_at_once(tmp_path, monkeypatch):
    import socket

    import datasets.config
    import huggingface_hub.constants

    from eagle3kit import hub

    cache = _cache_as_if_loaded_from_the_hub(tmp_path, "org/ultra", "train_sft")
    looked_up = []

    def no_network(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(hub, "hub_unreachable", lambda: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the tests' environment sets it; users' does not
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    source = Source(name="s", description="d", repos=(HubRepo("org/gone", split="train_sft"),
                                                      HubRepo("org/ultra", split="train_sft")))
    logged = []
    raw = load_hub(source, cache, log=logged.append)
    assert [dict(r) for r in raw.dataset] == UC_RECORDS and raw.origin == "org/ultra [train_sft]"
    assert looked_up == []  # not one request: the retries are what made this take a minute
    assert logged == [f"source s: could not load org/gone [train_sft]: not in the cache ({cache / 'hub'}), and the "
                      "Hugging Face Hub cannot be reached (huggingface.co:443: Name or service not known)"]


def test_source_without_repositories_needs_a_path(tmp_path):
    with pytest.raises(UserError) as info:
        load_hub(LOCAL, tmp_path / "cache")
    assert str(info.value) == "source 'local' has no Hub repository; give a local copy with --source local:path=FILE"


def test_repo_option_loads_that_dataset_instead_of_the_sources_repositories(tmp_path):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return ["row"]

    cache = str(tmp_path / "cache" / "hub")
    options = {"path": None, "repo": "org/mine@abc123", "split": None, "files": ("a.json", "b/*.json")}
    raw = load_raw(ULTRA, options, tmp_path / "cache", load_dataset=fake_load_dataset)
    assert calls == [(("org/mine", None), {"split": "train_sft", "data_files": ["a.json", "b/*.json"],
                                           "revision": "abc123", "cache_dir": cache})]  # the source's split by default
    assert raw.origin == "org/mine [train_sft] (a.json, b/*.json)" and raw.attempts[0]["error"] == ""
    calls.clear()
    load_raw(LOCAL, {"repo": "org/other", "split": "dev", "files": None}, tmp_path / "cache", load_dataset=fake_load_dataset)
    assert calls == [(("org/other", None), {"split": "dev", "data_files": None, "revision": None, "cache_dir": cache})]


def test_repo_option_that_cannot_load_is_named_without_trying_the_sources_own(tmp_path):
    logged = []
    with pytest.raises(UserError) as info:
        load_raw(ULTRA, {"repo": OFFLINE_REPO}, tmp_path / "cache", log=logged.append)
    assert str(info.value).startswith(f"could not load source 'ultrachat' from any of its repositories:\n"
                                      f"  - {OFFLINE_REPO} [train_sft]: ConnectionError")
    assert "HuggingFaceH4" not in str(info.value) and len(logged) == 1
