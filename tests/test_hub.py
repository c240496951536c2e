"""eagle3kit.hub: an unreachable Hub is said at once, not after a minute of retries."""

from __future__ import annotations

import errno
import socket

import pytest

from eagle3kit import hub
from eagle3kit.errors import UserError


@pytest.fixture
def network(monkeypatch):
    """No offline mode, no proxy, and a connection that fails as ``network.error`` says."""
    for var in ("HF_HUB_OFFLINE", "HF_ENDPOINT", *hub._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    tried = []

    class Network:
        error: OSError | None = OSError(errno.EAI_NONAME if hasattr(errno, "EAI_NONAME") else 0,
                                        "Name or service not known")

    def connect(address, timeout=None):
        tried.append((address, timeout))
        if Network.error is not None:
            raise Network.error
        return socket.socket()

    monkeypatch.setattr(hub.socket, "create_connection", connect)
    hub.hub_unreachable.cache_clear()
    Network.tried = tried
    yield Network
    hub.hub_unreachable.cache_clear()


def test_hub_ids_and_local_paths(tmp_path):
    assert hub.is_hub_id("meta-llama/Llama-3.1-8B-Instruct")
    assert not hub.is_hub_id(str(tmp_path))  # a folder that exists
    assert not hub.is_hub_id("./org/name") and not hub.is_hub_id("a/b/c") and not hub.is_hub_id("name")
    assert hub.is_hub_id("gpt2", legacy=True) and hub.is_hub_id("org/name", legacy=True)  # targets may be legacy names
    assert not hub.is_hub_id(str(tmp_path), legacy=True) and not hub.is_hub_id("./name", legacy=True)
    assert not hub.is_hub_id("", legacy=True)


def test_an_unreachable_hub_means_the_local_cache_only(network, monkeypatch, tmp_path):
    assert hub.hub_unreachable() == "huggingface.co:443: Name or service not known"
    assert hub.hub_kwargs("org/model") == {"local_files_only": True}
    assert hub.hub_kwargs(str(tmp_path)) == {}  # a local folder never asks the Hub
    assert hub.hub_kwargs("mistyped-folder") == {"local_files_only": True}  # or a legacy name: the cache only
    hub.hub_unreachable()
    assert network.tried == [(("huggingface.co", 443), 5)]  # probed once per process
    hub.hub_unreachable.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.internal:8080")
    assert hub.hub_unreachable() == "mirror.internal:8080: Name or service not known"


def test_reachable_offline_mode_or_a_proxy_changes_nothing(network, monkeypatch):
    network.error = None
    assert hub.hub_unreachable() is None and hub.hub_kwargs("org/model") == {}
    network.error = OSError("down")
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HTTPS_PROXY", "http://proxy:3128")):
        hub.hub_unreachable.cache_clear()
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert hub.hub_unreachable() is None  # not ours to decide: no probe
    assert network.tried == [(("huggingface.co", 443), 5)]


def test_loading_a_target_from_an_unreachable_hub_says_why(network):
    from eagle3kit.train.target import load_tokenizer

    with pytest.raises(UserError) as error:
        load_tokenizer("someone/no-such-model")
    message = str(error.value)
    assert message.startswith("cannot load the tokenizer of 'someone/no-such-model': ")
    assert ("The Hugging Face Hub cannot be reached (huggingface.co:443: Name or service not known), so only the local "
            "cache was looked in.") in message


def test_a_missing_folder_without_a_slash_is_named_as_both_a_folder_and_a_hub_name(network):
    from eagle3kit.train.target import load_tokenizer

    with pytest.raises(UserError) as error:
        load_tokenizer("my-target")
    message = str(error.value)
    assert message.startswith("cannot load the tokenizer of 'my-target': no such folder here, and as a Hugging Face "
                              "Hub name: ")
    assert ("The Hugging Face Hub cannot be reached (huggingface.co:443: Name or service not known), so only the local "
            "cache was looked in.") in message
