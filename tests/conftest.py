"""Shared fixtures. No test touches the network: the Hub is switched off here, before any
test module imports ``datasets`` (which reads these variables at import time), and again
per test by the autouse fixture below."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
os.environ.update(OFFLINE_ENV)
# datasets and huggingface_hub keep modules and locks under HF_HOME: keep them out of ~.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="eagle3kit-tests-hf-"))

from importlib import metadata

#: Plugins installed besides the built-in ones (CI installs the example plugin, for one).
#: Tests that pin the exact set of sources block them, so they pass either way.
OTHER_PLUGINS = sorted(
    ep.name for ep in metadata.entry_points(group="eagle3kit") if not ep.value.startswith("eagle3kit.sources.")
)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "eagle3kit" / "sources" / "samples"
PLUGIN_EXAMPLE = REPO / "plugins_example" / "eagle3kit-mydata"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Every test runs offline, with no plugin blocked and strict mode off."""
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EAGLE3KIT_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("EAGLE3KIT_BLOCK_PLUGINS", raising=False)


@pytest.fixture
def samples() -> Path:
    """The folder of the sample raw files shipped in eagle3kit/sources/samples."""
    return SAMPLES


@pytest.fixture
def registry():
    """The registry built from the installed entry points: the built-in sources only."""
    from eagle3kit.plugins import load_registry

    return load_registry(blocked=OTHER_PLUGINS)


def only_builtins_env(block: str = "") -> dict[str, str]:
    """Environment for a CLI run that sees only the built-in plugins (and blocks ``block``)."""
    return {"EAGLE3KIT_BLOCK_PLUGINS": ",".join(filter(None, [block, *OTHER_PLUGINS]))}


def write_jsonl(path: Path, records) -> Path:
    """Write ``records`` as JSON lines (a record that is a str is written as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def write_json(path: Path, records) -> Path:
    """Write ``records`` as one JSON array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def ultrachat_record(*pairs: tuple[str, str], prompt_id: str = "p") -> dict:
    """An UltraChat raw record from ``(role, content)`` pairs."""
    messages = [{"role": role, "content": content} for role, content in pairs]
    return {"prompt": messages[0]["content"] if messages else "", "prompt_id": prompt_id, "messages": messages}


def sharegpt_record(*pairs: tuple[str, str], id: str = "x") -> dict:
    """A ShareGPT raw record from ``(from, value)`` pairs."""
    return {"id": id, "conversations": [{"from": role, "value": value} for role, value in pairs]}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a fake distribution on ``sys.path``, as pip would: its modules and a
    ``.dist-info`` folder whose ``entry_points.txt`` declares ``eagle3kit`` plugins.

    ``fake_dist("eagle3kit-x", {"x": "x_mod"}, {"x_mod": "source code"})`` returns the
    folder (put it on PYTHONPATH to see the plugin from a subprocess too). Modules are
    removed from ``sys.modules`` afterwards, so every test imports its own.
    """
    root = tmp_path / "site"
    created: list[str] = []

    def install(dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0") -> Path:
        root.mkdir(exist_ok=True)
        for module, source in modules.items():
            (root / f"{module}.py").write_text(source, encoding="utf-8")
            created.append(module)
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[eagle3kit]\n{lines}", encoding="utf-8")
        return root

    monkeypatch.syspath_prepend(str(root))
    yield install
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture
def console_script() -> Path:
    """The installed ``eagle3kit`` console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "eagle3kit"
    assert script.exists(), f"eagle3kit is not installed in {sys.prefix}: pip install -e ."
    return script


# --------------------------------------------------------------------------- trainer fixtures
from train_fixtures import mixed_data, tiny_target, trained_run  # noqa: E402,F401
