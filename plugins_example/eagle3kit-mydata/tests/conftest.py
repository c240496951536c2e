"""Tests never touch the network: the Hugging Face Hub is switched off before
``datasets`` is imported (it reads these variables at import time)."""

import os

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
