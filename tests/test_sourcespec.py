"""eagle3kit.sourcespec: ``--source NAME[:key=value,...]`` parsing and option checks."""

from __future__ import annotations

import pytest

from eagle3kit import Option, Source, UserError
from eagle3kit.sourcespec import COMMON_OPTIONS, SourceSpec, resolve_options, source_options

ULTRA = Source(name="ultrachat", description="d")


def test_parse_name_only():
    assert SourceSpec.parse("ultrachat") == SourceSpec("ultrachat", ())
    assert SourceSpec.parse("  sharegpt  ") == SourceSpec("sharegpt", ())
    assert SourceSpec.parse("ultrachat:") == SourceSpec("ultrachat", ())


def test_parse_options_in_order_and_stripped():
    spec = SourceSpec.parse("ultrachat:path=/data/u.jsonl, limit = 10,weight=2.5")
    assert spec == SourceSpec("ultrachat", (("path", "/data/u.jsonl"), ("limit", "10"), ("weight", "2.5")))


def test_parse_path_may_hold_commas_colons_and_equals():
    spec = SourceSpec.parse("sharegpt:path=/a,b/c:d=e.json,limit=3")
    assert spec == SourceSpec("sharegpt", (("path", "/a,b/c:d=e.json"), ("limit", "3")))


def test_parse_names_with_dots_dashes_underscores():
    assert SourceSpec.parse("my-data_v1.2:limit=1").name == "my-data_v1.2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--source '': expected NAME or NAME:key=value,key=value (for example ultrachat:limit=1000)"),
        ("bad name", "--source 'bad name': expected NAME or NAME:key=value,key=value (for example ultrachat:limit=1000)"),
        (":limit=3", "--source ':limit=3': expected NAME or NAME:key=value,key=value (for example ultrachat:limit=1000)"),
        ("ultrachat:limit", "--source 'ultrachat:limit': option 'limit' is not of the form key=value"),
        ("ultrachat:=3", "--source 'ultrachat:=3': option '=3' is not of the form key=value"),
    ],
)
def test_parse_errors_say_what_is_expected(text, message):
    with pytest.raises(UserError) as info:
        SourceSpec.parse(text)
    assert str(info.value) == message


def test_common_options_and_source_options():
    assert [o.name for o in COMMON_OPTIONS] == ["path", "repo", "split", "files", "limit", "weight"]
    extra = Option("lang", "language code", str, "en")
    source = Source(name="s", description="d", options=(extra,))
    assert [o.name for o in source_options(source)] == ["path", "repo", "split", "files", "limit", "weight", "lang"]


def test_resolve_defaults():
    assert resolve_options(ULTRA, SourceSpec.parse("ultrachat")) == {"path": None, "repo": None, "split": None, "files": None, "limit": None, "weight": None}


def test_resolve_parses_values():
    options = resolve_options(ULTRA, SourceSpec.parse("ultrachat:path=x.jsonl,limit=0,weight=0.25"))
    assert options == {"path": "x.jsonl", "repo": None, "split": None, "files": None, "limit": 0, "weight": 0.25}
    assert type(options["limit"]) is int and type(options["weight"]) is float


def test_resolve_source_specific_option_with_default_and_parser():
    source = Source(name="s", description="d", options=(Option("turns", "max turns", int, 4), Option("lang", "code")))
    assert resolve_options(source, SourceSpec.parse("s")) == {"path": None, "repo": None, "split": None, "files": None, "limit": None, "weight": None, "turns": 4,
                                                              "lang": None}
    assert resolve_options(source, SourceSpec.parse("s:turns=7,lang=de"))["turns"] == 7


def test_unknown_option_names_it_and_lists_what_is_accepted():
    with pytest.raises(UserError) as info:
        resolve_options(ULTRA, SourceSpec.parse("ultrachat:lmit=3"))
    assert str(info.value) == (
        "--source ultrachat: unknown option 'lmit'. ultrachat accepts: "
        "path (a local copy in the source's raw format (.json, .jsonl, .parquet, or a folder), used instead of the Hub), "
        "repo (another Hub dataset in the source's raw format, ID or ID@REVISION, used instead of the source's own "
        "repositories), "
        "split (with repo, or path= a folder: the split to read (default: the source's, else train)), "
        "files (with repo, or path= a folder: read only these data files (names or glob patterns, comma-separated)), "
        "limit (read only the first N raw records), "
        "weight (share of the final mix (relative to the other sources' weights))"
    )


def test_option_given_twice():
    with pytest.raises(UserError) as info:
        resolve_options(ULTRA, SourceSpec.parse("ultrachat:limit=1,limit=2"))
    assert str(info.value) == "--source ultrachat: option 'limit' given twice"


@pytest.mark.parametrize(
    "option, value, reason",
    [
        ("limit", "ten", "invalid literal for int() with base 10: 'ten'"),
        ("limit", "-1", "must be 0 or more"),
        ("limit", "1.5", "invalid literal for int() with base 10: '1.5'"),
        ("weight", "0", "must be a positive number"),
        ("weight", "-2", "must be a positive number"),
        ("weight", "inf", "must be a positive number"),
        ("weight", "nan", "must be a positive number"),
        ("weight", "heavy", "could not convert string to float: 'heavy'"),
    ],
)
def test_bad_values_name_the_option_and_what_it_accepts(option, value, reason):
    helps = {"limit": "read only the first N raw records", "weight": "share of the final mix (relative to the other sources' weights)"}
    with pytest.raises(UserError) as info:
        resolve_options(ULTRA, SourceSpec.parse(f"ultrachat:{option}={value}"))
    assert str(info.value) == f"--source ultrachat: bad value {value!r} for option {option!r} ({helps[option]}): {reason}"


def test_plugin_option_parser_errors_are_reported_the_same_way():
    def parse_yes_no(text):
        if text not in ("yes", "no"):
            raise ValueError("expected yes or no")
        return text == "yes"

    source = Source(name="s", description="d", options=(Option("fancy", "fancy mode", parse_yes_no, False),))
    assert resolve_options(source, SourceSpec.parse("s:fancy=yes"))["fancy"] is True
    with pytest.raises(UserError) as info:
        resolve_options(source, SourceSpec.parse("s:fancy=maybe"))
    assert str(info.value) == "--source s: bad value 'maybe' for option 'fancy' (fancy mode): expected yes or no"
    levels = {"low": 1, "high": 3}
    source = Source(name="s", description="d", options=(Option("level", "low or high", lambda t: levels[t], 1),))
    with pytest.raises(UserError) as info:  # a parser that raises something else: the same, not a traceback
        resolve_options(source, SourceSpec.parse("s:level=medium"))
    assert str(info.value) == ("--source s: bad value 'medium' for option 'level' (low or high): its parser raised "
                               "KeyError: 'medium' (a parser should raise ValueError)")


def test_repo_split_and_files_name_another_hub_dataset():
    options = resolve_options(ULTRA, SourceSpec.parse("ultrachat:repo=org/data@v1.0,split=test,files=a.json,b/*.json"))
    assert (options["repo"], options["split"], options["files"]) == ("org/data@v1.0", "test", ("a.json", "b/*.json"))
    assert resolve_options(ULTRA, SourceSpec.parse("ultrachat:repo=org/data"))["repo"] == "org/data"


@pytest.mark.parametrize("text, message", [
    ("ultrachat:path=x.json,repo=org/d", "--source ultrachat: give path (a local copy) or repo (a Hub dataset), not both"),
    ("ultrachat:split=test", "--source ultrachat: option 'split' goes with repo=ID (a Hub dataset) or path=FOLDER"),
    ("ultrachat:files=a.json", "--source ultrachat: option 'files' goes with repo=ID (a Hub dataset) or path=FOLDER"),
    ("ultrachat:repo=org/d@", "--source ultrachat: bad value 'org/d@' for option 'repo'"),
    ("ultrachat:repo=@main", "--source ultrachat: bad value '@main' for option 'repo'"),
    ("ultrachat:repo=org/d,files=", "--source ultrachat: bad value '' for option 'files'"),
])
def test_repo_options_that_cannot_work_are_refused(text, message):
    with pytest.raises(UserError) as info:
        resolve_options(ULTRA, SourceSpec.parse(text))
    assert str(info.value).startswith(message)
