"""Tests of the mydata source plugin. Run them after installing the package:

    pip install ./eagle3kit-mydata
    pytest eagle3kit-mydata/tests
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

# The tests never touch the network: switch the Hugging Face Hub off before `datasets`
# is imported (it reads these variables at import time).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)

from click.testing import CliRunner  # noqa: E402

import eagle3kit_mydata  # noqa: E402
from eagle3kit import RecordError  # noqa: E402
from eagle3kit.cli import cli  # noqa: E402
from eagle3kit.mix import run_mix  # noqa: E402
from eagle3kit.plugins import converter_for, load_registry  # noqa: E402
from eagle3kit.sourcespec import SourceSpec  # noqa: E402
from eagle3kit.unified import clean_messages  # noqa: E402
from eagle3kit_mydata import SAMPLE_FILE, convert_to_unified, parse_yes_no  # noqa: E402

DEFAULTS = {"path": None, "limit": None, "weight": None, "followups": True, "system": None}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)


def convert(record, **options):
    return convert_to_unified(record=record, options={**DEFAULTS, **options})


# --------------------------------------------------------------------------- installation
def test_the_entry_point_is_installed():
    [entry_point] = [ep for ep in metadata.entry_points(group="eagle3kit") if ep.name == "mydata"]
    assert entry_point.value == "eagle3kit_mydata"
    assert entry_point.dist.name == "eagle3kit-mydata"
    assert entry_point.load() is eagle3kit_mydata


def test_eagle3kit_finds_the_source():
    registry = load_registry()
    source = registry.source("mydata")
    assert source.plugin == "mydata" and source.plugin_version == "0.1.0"
    assert [o.name for o in source.options] == ["followups", "system"]
    assert registry.plugins["mydata"].distribution == "eagle3kit-mydata"
    assert "mydata" not in dict(registry.failed)


def test_the_sample_is_shipped():
    assert SAMPLE_FILE.is_file()
    records = [json.loads(line) for line in SAMPLE_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 37 and all({"question", "answer"} <= set(r) for r in records)


# --------------------------------------------------------------------------- conversion
def test_question_answer_and_followups():
    record = {"question": "Q", "answer": "A", "followups": [{"q": "Q2", "a": "A2"}, {"q": "Q3", "a": "A3"}]}
    assert convert(record) == [
        {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "A"},
        {"from": "user", "value": "Q2"},
        {"from": "assistant", "value": "A2"},
        {"from": "user", "value": "Q3"},
        {"from": "assistant", "value": "A3"},
    ]


def test_followups_are_optional():
    expected = [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]
    assert convert({"question": "Q", "answer": "A"}) == expected
    assert convert({"question": "Q", "answer": "A", "followups": None}) == expected  # Arrow rows without the field
    assert convert({"question": "Q", "answer": "A", "followups": [{"q": "Q2", "a": "A2"}]}, followups=False) == expected


def test_system_option():
    assert convert({"question": "Q", "answer": "A"}, system="Be brief.") == [
        {"from": "system", "value": "Be brief."},
        {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "A"},
    ]


def test_eagle3kit_rules_apply_to_the_result():
    record = {"question": "  Q ", "answer": "A", "followups": [{"q": "Q2", "a": " "}]}
    assert clean_messages(convert(record)) == ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "kept")


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"answer": "A"}, "missing field 'question'"),
        ({"question": "Q"}, "missing field 'answer'"),
        ({"question": 1, "answer": "A"}, "question must be a string, found int"),
        ({"question": "Q", "answer": "A", "followups": "more"}, "followups must be a list, found str"),
        ({"question": "Q", "answer": "A", "followups": ["Q2"]}, "followups[0] must be an object with 'q' and 'a', found str"),
        ({"question": "Q", "answer": "A", "followups": [{"q": "Q2"}]}, "followups[0].a must be a string, found NoneType"),
    ],
)
def test_malformed_records(record, problem):
    with pytest.raises(RecordError) as info:
        convert(record)
    assert str(info.value) == problem


@pytest.mark.parametrize("text, value", [("yes", True), ("No", False), ("1", True), ("off", False)])
def test_parse_yes_no(text, value):
    assert parse_yes_no(text) is value


def test_parse_yes_no_refuses_other_text():
    with pytest.raises(ValueError, match="expected yes or no"):
        parse_yes_no("maybe")


def test_the_converter_eagle3kit_builds_is_routed_here():
    convert_fn = converter_for(load_registry(), "mydata", DEFAULTS)
    assert convert_fn.function is eagle3kit_mydata.convert_to_unified
    assert convert_fn({"question": "Q", "answer": "A"}) == [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]


# --------------------------------------------------------------------------- with eagle3kit mix
def test_mix_of_the_shipped_sample(tmp_path):
    manifest = run_mix(load_registry(), [SourceSpec.parse("mydata")], tmp_path / "out", tmp_path / "cache")
    [source] = manifest["sources"]
    assert (source["rows_read"], source["kept"], source["duplicates"], source["used"]) == (37, 36, 1, 35)
    assert source["dropped"] == {"unknown_role": 0, "too_short": 1, "invalid": 0}
    assert manifest["split"] == {"train": 33, "test": 2}


def test_mix_of_a_file_of_your_own(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"question": "Q1", "answer": "A1", "followups": [{"q": "F", "a": "FA"}]}) + "\n"
        + json.dumps({"question": "Q2"}) + "\n",
        encoding="utf-8",
    )
    args = ["mix", "--source", f"mydata:path={path}", "--test-ratio", "0", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{path} line 2: missing field 'answer'" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--skip-invalid"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": "mydata_0", "conversations": [
            {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "F"}, {"from": "gpt", "value": "FA"},
        ]}
    ]


def test_the_eagle3kit_command_finds_the_plugin(tmp_path):
    script = Path(sys.executable).parent / "eagle3kit"
    done = subprocess.run(
        [str(script), "mix", "--source", "mydata:followups=no", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=120, env={**os.environ, **OFFLINE},
    )
    assert done.returncode == 0, done.stderr
    assert "(33 conversations)" in done.stdout
