"""The ``eagle3kit`` command line for data: ``mix``, ``sources``, ``plugins``, ``--help``.

In-process through click's CliRunner, plus subprocesses of the installed console script
(start-up imports, a real mix, and the example plugin installed with pip and found
through its entry point)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

import eagle3kit
from conftest import PLUGIN_EXAMPLE, only_builtins_env, read_jsonl, write_jsonl
from eagle3kit.cli import cli

WIDE = {"COLUMNS": "400"}  # Rich tables unwrapped, so lines can be compared


def invoke(*args, env=None):
    """Run the CLI in-process, seeing only the built-in plugins unless ``env`` says otherwise."""
    return CliRunner().invoke(cli, list(args), env={**WIDE, **only_builtins_env(), **(env or {})}, catch_exceptions=False)


def error(result) -> str:
    """What a failed command said from its ``Error:`` on (progress lines may come before)."""
    return result.stderr[result.stderr.index("Error: "):]


def sample_args(samples, out, cache):
    return [
        "--source", f"ultrachat:path={samples / 'ultrachat_sample.jsonl'}",
        "--source", f"sharegpt:path={samples / 'sharegpt_sample.json'}",
        "--out", str(out), "--cache-dir", str(cache),
    ]


# --------------------------------------------------------------------------- start-up
HEAVY = ("torch", "deepspeed", "transformers", "datasets", "pyarrow", "pandas", "numpy", "wandb")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from eagle3kit.cli import main\n"
        "sys.argv = ['eagle3kit', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: eagle3kit [OPTIONS] COMMAND [ARGS]..." in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_help_import_time_lists_no_heavy_module():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "eagle3kit.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "click" in imported and "pluggy" in imported
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_help_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("mix", "sources", "plugins"):
        assert f"  {command} " in result.stdout
    result = invoke("--version")
    assert result.stdout == f"eagle3kit, version {eagle3kit.__version__}\n"
    help_mix = invoke("mix", "--help").stdout
    for option in ("--source NAME[:key=value,...]", "--out", "--cache-dir", "--test-ratio", "--seed", "--num-proc", "--no-dedup", "--skip-invalid"):
        assert option in help_mix


# --------------------------------------------------------------------------- sources / plugins
def table_rows(text: str) -> dict[str, list[str]]:
    """A Rich table's rows by their first cell, each cell's lines joined with newlines."""
    rows: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith(("│", "┃")):  # body and header lines; rules end a row
            current = None
            continue
        cells = [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]
        if cells[0]:
            current = rows.setdefault(cells[0], cells)
        elif current is not None:
            for i, cell in enumerate(cells):
                if cell:
                    current[i] = f"{current[i]}\n{cell}" if current[i] else cell
    return rows


def test_sources_lists_plugin_version_repositories_and_options():
    result = invoke("sources")
    assert result.exit_code == 0
    rows = table_rows(result.stdout)
    assert list(rows) == ["source", "sharegpt", "ultrachat"]
    assert rows["source"] == ["source", "plugin", "repositories (fallback order)", "own options", "description"]
    version = f"eagle3kit {eagle3kit.__version__}"
    source, plugin, repos, options, description = rows["ultrachat"]
    assert plugin == f"ultrachat\n{version}"
    assert repos.startswith("HuggingFaceH4/ultrachat_200k")
    assert options == "-"  # the options every source accepts are listed once, after the table
    assert result.stdout.split("┘\n", 1)[1].startswith(
        "Every source also accepts (--source NAME:key=value,...):\n"
        "  path: a local copy in the source's raw format (.json, .jsonl, .parquet, or a folder), used instead of the Hub\n"
        "  repo: another Hub dataset in the source's raw format, ID or ID@REVISION, used instead of the source's own "
        "repositories\n"
        "  split: with repo, or path= a folder: the split to read (default: the source's, else train)\n"
        "  files: with repo, or path= a folder: read only these data files (names or glob patterns, comma-separated)\n"
        "  limit: read only the first N raw records\n"
        "  weight: share of the final mix (relative to the other sources' weights)\n"
    )
    assert description == "UltraChat-200k: multi-turn dialogues written by ChatGPT (the SFT split)"
    source, plugin, repos, options, description = rows["sharegpt"]
    assert plugin == f"sharegpt\n{version}"
    first, second, third = repos.split("\n")
    assert first.startswith("anon8231489123/ShareGPT_Vicuna_unfiltered") and first.endswith("(ShareGPT_V3_unfiltered_cleaned_split.json)")
    assert second.startswith("Aeala/ShareGPT_Vicuna_unfiltered")
    assert third.startswith("RyokoAI/ShareGPT52K") and third.endswith("(sg_90k_part1.json, sg_90k_part2.json)")


def test_plugins_lists_distributions_and_sources():
    result = invoke("plugins")
    assert result.exit_code == 0
    v = eagle3kit.__version__
    assert f"sharegpt\teagle3kit {v}\tsources: sharegpt\n" in result.stdout
    assert f"ultrachat\teagle3kit {v}\tsources: ultrachat\n" in result.stdout


BROKEN = {"broken_cli_plugin": "raise ImportError('needs libfoo 2')\n"}


def test_a_broken_plugin_does_not_break_the_cli(fake_dist, tmp_path, samples):
    fake_dist("eagle3kit-broken", {"broken": "broken_cli_plugin"}, BROKEN)
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "broken\tFAILED: ImportError: needs libfoo 2 (at site/broken_cli_plugin.py:1 in <module>)\n" in result.stdout
    assert "eagle3kit: warning: plugin 'broken' failed to load and is skipped (ImportError: needs libfoo 2 (at site/broken_cli_plugin.py:1 in <module>))" in result.stderr
    result = invoke("sources")
    assert result.exit_code == 0 and "plugin broken failed to load: ImportError: needs libfoo 2 (at site/broken_cli_plugin.py:1 in <module>)" in result.stdout
    result = invoke("mix", *sample_args(samples, tmp_path / "out", tmp_path / "cache"))
    assert result.exit_code == 0 and (tmp_path / "out" / "manifest.json").exists()


def test_strict_plugins_make_a_broken_plugin_fatal(fake_dist):
    fake_dist("eagle3kit-broken", {"broken": "broken_cli_plugin"}, BROKEN)
    result = invoke("plugins", env={"EAGLE3KIT_STRICT_PLUGINS": "1"})
    assert result.exit_code == 2
    assert result.stderr == "Error: plugin 'broken' failed to load: ImportError: needs libfoo 2 (at site/broken_cli_plugin.py:1 in <module>)\n"


def test_blocked_plugins_are_not_loaded(samples, tmp_path):
    result = invoke("plugins", env=only_builtins_env("sharegpt"))
    assert result.exit_code == 0 and "ultrachat\t" in result.stdout and "sources: sharegpt" not in result.stdout
    assert re.search(r"^sharegpt\teagle3kit \S+\tBLOCKED by EAGLE3KIT_BLOCK_PLUGINS$", result.stdout, re.M)
    result = invoke("mix", "--source", f"sharegpt:path={samples / 'sharegpt_sample.json'}", "--cache-dir", str(tmp_path),
                    env=only_builtins_env("sharegpt"))
    assert result.exit_code == 2
    assert error(result).startswith("Error: source 'sharegpt' is not loaded: its plugin 'sharegpt'")


# --------------------------------------------------------------------------- mix
def test_mix_of_the_samples(samples, tmp_path):
    result = invoke("mix", *sample_args(samples, tmp_path / "out", tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert result.stdout.endswith(
        f"train: {out / 'train.jsonl'} (596 conversations)\ntest:  {out / 'test.jsonl'} (31 conversations)\n"
    )
    assert "eagle3kit mix (written)" in result.stdout
    rows = table_rows(result.stdout)
    assert rows["source"] == ["source", "read", "kept", "role", "short", "invalid", "cates", "used", "train", "test"]  # 2nd header line
    assert rows["ultrachat"][1:] == ["401", "383", "8", "10", "0", "1", "382", "364", "18"]
    assert rows["sharegpt"][1:] == ["250", "249", "0", "1", "0", "4", "245", "232", "13"]
    assert rows["total"][1:] == ["651", "632", "8", "11", "0", "5", "627", "596", "31"]
    assert f"ultrachat: {samples / 'ultrachat_sample.jsonl'}" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == {"train": 596, "test": 31}
    assert len(read_jsonl(out / "train.jsonl")) == 596

    again = invoke("mix", *sample_args(samples, tmp_path / "out", tmp_path / "cache"), "--num-proc", "2")
    assert again.exit_code == 0
    assert f"{out}: up to date (fingerprint {manifest['fingerprint'][:12]}), reusing the existing mix" in again.stderr
    assert "eagle3kit mix (reused)" in again.stdout


def test_mix_caption_shows_the_hub_split_literally(tmp_path):
    # "[train]" in where a source came from is text, not Rich markup
    from rich.console import Console

    from eagle3kit.mix import summary_table

    source = {"name": "x", "loaded_from": "org/x [train_sft]", "rows_read": 1, "kept": 1,
              "dropped": {"unknown_role": 0, "too_short": 0, "invalid": 0}, "duplicates": 0, "used": 1, "train": 1, "test": 0}
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(summary_table({"sources": [source], "reused": False}))
    assert "x: org/x [train_sft]" in console.export_text()


def test_mix_options_reach_the_pipeline(samples, tmp_path):
    args = sample_args(samples, tmp_path / "out", tmp_path / "cache")
    result = invoke("mix", *args, "--test-ratio", "0.1", "--seed", "7", "--no-dedup", "--num-proc", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["seed"], manifest["test_ratio"], manifest["dedup"], manifest["skip_invalid"]) == (7, 0.1, False, False)
    assert manifest["split"] == {"train": 569, "test": 63}  # 632 kept, no dedup, round(63.2)


def test_mix_default_out_is_under_the_cache_dir(samples, tmp_path):
    result = invoke("mix", "--source", f"sharegpt:path={samples / 'sharegpt_sample.json'}", "--cache-dir", str(tmp_path / "c"))
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "c" / "mixed").iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "ultrachatt"], "Error: unknown source 'ultrachatt'. Known sources: "),
        (["--source", "ultrachat:limit=-1"], "Error: --source ultrachat: bad value '-1' for option 'limit' (read only the first N raw records): must be 0 or more\n"),
        (["--source", "ultrachat:size=3"], "Error: --source ultrachat: unknown option 'size'. ultrachat accepts: path ("),
        (["--source", "ultra chat"], "Error: --source 'ultra chat': expected NAME or NAME:key=value,key=value"),
        (["--source", "ultrachat:path=/no/such/file.jsonl"], "Error: --source ultrachat:path=/no/such/file.jsonl: no such file or folder\n"),
    ],
)
def test_mix_usage_errors_are_one_clear_line(tmp_path, args, message):
    result = invoke("mix", *args, "--cache-dir", str(tmp_path))
    assert result.exit_code == 2
    assert error(result).startswith(message)
    assert "Traceback" not in result.output


def test_mix_default_sources_offline_say_what_was_tried(tmp_path):
    result = invoke("mix", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "could not load HuggingFaceH4/ultrachat_200k [train_sft]: ConnectionError" in result.stderr  # the logged attempt
    assert "Error: could not load source 'ultrachat' from any of its repositories:\n" in result.stderr
    assert "--source ultrachat:path=FILE_OR_DIR" in result.stderr


@pytest.mark.parametrize("args", [["--test-ratio", "1"], ["--num-proc", "0"], ["--seed", "x"]])
def test_mix_bad_values_are_refused_by_click(tmp_path, args):
    result = invoke("mix", *args, "--cache-dir", str(tmp_path))
    assert result.exit_code == 2 and "Invalid value for" in result.stderr


def test_mix_malformed_input_and_skip_invalid(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", ['{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}', "{oops"])
    args = ["mix", "--source", f"ultrachat:path={path}", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    result = invoke(*args)
    assert result.exit_code == 2
    assert error(result).startswith(
        f"Error: ultrachat: 1 malformed record(s), for example:\n  - {path} line 2: bad JSON: "
        "Expecting property name enclosed in double quotes (column 2)\nFix the file, or pass --skip-invalid"
    )
    result = invoke(*args, "--skip-invalid", "--test-ratio", "0")
    assert result.exit_code == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["sources"][0]["dropped"]["invalid"] == 1


# --------------------------------------------------------------------------- the installed console script
def run_script(console_script, *args, env=None, cwd=None):
    """Run the installed ``eagle3kit`` command (only the built-in plugins unless ``env`` says otherwise)."""
    env = {**os.environ, **WIDE, **only_builtins_env(), **(env or {})}
    return subprocess.run([str(console_script), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_console_script_mix_matches_the_in_process_mix(console_script, samples, tmp_path):
    done = run_script(console_script, "mix", *sample_args(samples, tmp_path / "script", tmp_path / "cache-a"), "--num-proc", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"test:  {tmp_path / 'script' / 'test.jsonl'} (31 conversations)\n")
    assert invoke("mix", *sample_args(samples, tmp_path / "inproc", tmp_path / "cache-b")).exit_code == 0
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "script" / name).read_bytes() == (tmp_path / "inproc" / name).read_bytes()


def test_console_script_error_exit_status(console_script, tmp_path):
    done = run_script(console_script, "mix", "--source", "nope", "--cache-dir", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("Error: unknown source 'nope'.")


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin pip-installed (offline, from a copy) into a folder of its own."""
    import importlib.util

    assert importlib.util.find_spec("setuptools"), "building the example plugin offline needs setuptools: pip install setuptools"
    root = tmp_path_factory.mktemp("example")
    source = root / "src"
    shutil.copytree(PLUGIN_EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_example_plugin_through_its_real_entry_point(console_script, installed_example, tmp_path):
    env = {"PYTHONPATH": str(installed_example), "EAGLE3KIT_BLOCK_PLUGINS": ""}
    done = run_script(console_script, "plugins", env=env)
    assert done.returncode == 0, done.stderr
    assert "mydata\teagle3kit-mydata 0.1.0\tsources: mydata\n" in done.stdout
    done = run_script(console_script, "sources", env=env)
    assert "mydata" in done.stdout and "followups: yes: keep the follow-up questions" in done.stdout

    # --source mydata reads the sample the package ships
    done = run_script(console_script, "mix", "--source", "mydata", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), env=env)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [source] = manifest["sources"]
    assert (source["plugin"], source["plugin_version"], source["rows_read"], source["kept"], source["duplicates"]) == (
        "mydata", "0.1.0", 37, 36, 1)
    assert source["dropped"] == {"unknown_role": 0, "too_short": 1, "invalid": 0}
    assert manifest["plugins"]["mydata"] == "eagle3kit-mydata 0.1.0"

    # --source mydata:path=FILE reads a file in the plugin's own format, with its own options
    own = write_jsonl(tmp_path / "mine.jsonl", [
        {"question": " Q1 ", "answer": "A1", "followups": [{"q": "F1", "a": "FA1"}]},
        {"question": "Q2", "answer": "A2"},
    ])
    done = run_script(console_script, "mix", "--source", f"mydata:path={own},followups=no,system=Be brief.", "--test-ratio", "0",
                      "--out", str(tmp_path / "own"), "--cache-dir", str(tmp_path / "c"), env=env)
    assert done.returncode == 0, done.stderr
    records = sorted(read_jsonl(tmp_path / "own" / "train.jsonl"), key=lambda r: r["id"])
    assert records == [
        {"id": "mydata_0", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}]},
        {"id": "mydata_1", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
    ]
    done = run_script(console_script, "mix", "--source", f"mydata:path={own},followups=maybe", "--cache-dir", str(tmp_path / "c"), env=env)
    assert done.returncode == 2
    assert "Error: --source mydata: bad value 'maybe' for option 'followups'" in done.stderr and "expected yes or no" in done.stderr
    done = run_script(console_script, "plugins", env={**env, "EAGLE3KIT_BLOCK_PLUGINS": "mydata"})
    assert "mydata\teagle3kit-mydata 0.1.0\tBLOCKED by EAGLE3KIT_BLOCK_PLUGINS\n" in done.stdout
    assert "sources: mydata" not in done.stdout


_CTRL_C_PLUGIN = '''
import os, signal
from pathlib import Path
from eagle3kit import Source, hookimpl

@hookimpl
def register_sources(register):
    register(Source(name="ctrlc", description="presses Ctrl-C once its workers are converting"))

@hookimpl
def convert_to_unified(source, record):
    if source != "ctrlc":
        return None
    flag = Path(os.environ["CTRLC_FLAG"])
    if os.getpid() != int(os.environ["CTRLC_MAIN"]) and not flag.exists():
        flag.write_text("pressed")
        os.killpg(os.getpgid(0), signal.SIGINT)  # the whole process group, as a terminal's Ctrl-C
    return [{"from": "human", "value": "q " + record["id"]}, {"from": "gpt", "value": "a " + record["id"]}]
'''


def test_ctrl_c_during_a_multi_process_conversion_is_one_line(console_script, fake_dist, tmp_path):
    # datasets' pool answers the interrupt with its own error (a TimeoutError over the
    # KeyboardInterrupt) and each worker printed a traceback: now one line, status 130
    site = fake_dist("eagle3kit-ctrlc", {"ctrlc": "ctrlc_mod"}, {"ctrlc_mod": _CTRL_C_PLUGIN})
    write_jsonl(tmp_path / "raw.jsonl", [{"id": str(i)} for i in range(4000)])
    out = tmp_path / "out"
    args = [str(console_script), "mix", "--source", f"ctrlc:path={tmp_path / 'raw.jsonl'}", "--num-proc", "2",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, **WIDE, "PYTHONPATH": str(site), "EAGLE3KIT_BLOCK_PLUGINS": "", "CTRLC_FLAG": str(tmp_path / "flag")}
    # the console script runs in its own process group, with the default Ctrl-C handling a
    # terminal gives, and knows its pid (the plugin tells the workers from it)
    launcher = ("import os, signal, sys; os.setsid(); signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.environ['CTRLC_MAIN'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", launcher, *args], env=env, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "flag").exists(), done.stderr
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("Interrupted. Nothing half-written is used")
    assert not (out / "train.jsonl").exists() and not (out / "test.jsonl").exists()
