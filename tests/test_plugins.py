"""eagle3kit.plugins (and hookspecs, and the built-in source plugins): loading, failures,
blocking, conflicts, routing and the picklable converter."""

from __future__ import annotations

import pickle
import types
from importlib import metadata

import pytest
from click.testing import CliRunner

import eagle3kit
from conftest import OTHER_PLUGINS, only_builtins_env
from eagle3kit import HubRepo, Option, RecordError, Source, UserError, hookimpl
from eagle3kit.cli import cli
from eagle3kit.errors import PluginError
from eagle3kit.plugins import (
    BLOCK_ENV,
    ENTRY_POINT_GROUP,
    STRICT_ENV,
    Converter,
    converter_for,
    load_registry,
    make_plugin_manager,
)
from eagle3kit.sources import sharegpt, ultrachat


def plugin_module(name: str, sources=("s",), convert=True, **extra):
    """An in-process plugin: a module with the hooks, as a third-party package would write it."""
    module = types.ModuleType(name)
    module.calls = []

    @hookimpl
    def register_sources(register):
        for source in sources:
            register(source if isinstance(source, Source) else Source(name=source, description=f"{source} from {name}"))

    module.register_sources = register_sources
    if convert:

        @hookimpl
        def convert_to_unified(source, record, options):
            module.calls.append(source)
            return [{"from": "user", "value": record["q"]}, {"from": "assistant", "value": record["a"]}]

        module.convert_to_unified = convert_to_unified
    for key, value in extra.items():
        setattr(module, key, value)
    return module


# --------------------------------------------------------------------------- built-ins
def test_builtin_sources_are_declared_as_entry_points_of_eagle3kit():
    eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert eps["ultrachat"].value == "eagle3kit.sources.ultrachat"
    assert eps["sharegpt"].value == "eagle3kit.sources.sharegpt"
    assert eps["ultrachat"].dist.name == "eagle3kit"
    assert ENTRY_POINT_GROUP == "eagle3kit"


def test_builtin_sources_load_through_the_entry_points(registry):
    ultra, share = registry.source("ultrachat"), registry.source("sharegpt")
    assert ultra.plugin == "ultrachat" and share.plugin == "sharegpt"
    assert ultra.plugin_version == eagle3kit.__version__
    assert ultra.repos == (HubRepo("HuggingFaceH4/ultrachat_200k", split="train_sft"),)
    assert share.repos == (
        HubRepo("anon8231489123/ShareGPT_Vicuna_unfiltered", data_files="ShareGPT_V3_unfiltered_cleaned_split.json"),
        HubRepo("Aeala/ShareGPT_Vicuna_unfiltered", data_files="ShareGPT_V4.3_unfiltered_cleaned_split.json"),
        HubRepo("RyokoAI/ShareGPT52K", data_files=("sg_90k_part1.json", "sg_90k_part2.json")),
    )
    assert registry.plugins["ultrachat"].distribution == "eagle3kit"
    assert registry.plugin_versions()["sharegpt"] == f"eagle3kit {eagle3kit.__version__}"
    assert registry.failed == []


def test_builtins_are_plain_plugins_without_entry_points():
    registry = load_registry(entry_points=False, extra_plugins=[("u", ultrachat), ("g", sharegpt)])
    assert sorted(registry.sources) == ["sharegpt", "ultrachat"]
    assert registry.source("ultrachat").plugin == "u"
    assert registry.plugins["u"].distribution == "(registered in process)"


def test_hook_specs_are_exactly_the_documented_ones():
    pm = make_plugin_manager()
    specs = sorted(name for name in dir(pm.hook) if not name.startswith("_") and getattr(pm.hook, name).has_spec())
    assert specs == ["convert_to_unified", "register_sources"]
    assert pm.hook.convert_to_unified.spec.argnames == ("source", "record", "options")
    assert pm.hook.register_sources.spec.argnames == ("register",)


def test_public_api_of_eagle3kit_for_plugins():
    assert {"hookimpl", "Source", "HubRepo", "Option", "RecordError", "UserError"} <= set(eagle3kit.__all__)
    assert isinstance(eagle3kit.hookimpl, type(hookimpl)) and eagle3kit.hookimpl.project_name == "eagle3kit"


# --------------------------------------------------------------------------- built-in hooks
def test_ultrachat_hook_ignores_other_sources_and_converts_messages():
    record = {"prompt": "Q", "prompt_id": "1", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert ultrachat.convert_to_unified(source="sharegpt", record=record) is None
    assert ultrachat.convert_to_unified(source="ultrachat", record=record) == [
        {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "A"},
    ]


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"prompt": "Q"}, "'messages' must be a list, found NoneType"),
        ({"messages": "Q"}, "'messages' must be a list, found str"),
        ({"messages": ["Q"]}, "messages[0] must be an object, found str"),
        ({"messages": [{"content": "Q"}]}, "messages[0].role must be a string, found NoneType"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": 5}]}, "messages[1].content must be a string, found int"),
    ],
)
def test_ultrachat_malformed_records(record, problem):
    with pytest.raises(RecordError) as info:
        ultrachat.convert_to_unified(source="ultrachat", record=record)
    assert str(info.value) == problem


def test_sharegpt_hook_reads_conversations_and_messages_mirrors():
    assert sharegpt.convert_to_unified(source="ultrachat", record={}) is None
    record = {"id": "a", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert sharegpt.convert_to_unified(source="sharegpt", record=record) == [
        {"from": "human", "value": "Q"},
        {"from": "gpt", "value": "A"},
    ]
    mirror = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "text": "A"}]}
    assert sharegpt.convert_to_unified(source="sharegpt", record=mirror) == [
        {"from": "user", "value": "Q"},
        {"from": "assistant", "value": "A"},
    ]


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"id": "a"}, "'conversations' must be a list, found NoneType"),
        ({"conversations": {"from": "human"}}, "'conversations' must be a list, found dict"),
        ({"conversations": [None]}, "conversations[0] must be an object, found NoneType"),
        ({"conversations": [{"value": "Q"}]}, "conversations[0] has no role (from or role)"),
        ({"conversations": [{"from": "human"}]}, "conversations[0] has no text (value or content or text)"),
        ({"conversations": [{"from": "human", "value": ["Q"]}]}, "conversations[0].value must be a string, found list"),
        ({"conversations": [{"from": 1, "value": "Q"}]}, "conversations[0].from must be a string, found int"),
    ],
)
def test_sharegpt_malformed_records(record, problem):
    with pytest.raises(RecordError) as info:
        sharegpt.convert_to_unified(source="sharegpt", record=record)
    assert str(info.value) == problem


# --------------------------------------------------------------------------- third-party plugins
def test_a_third_party_entry_point_is_loaded(fake_dist):
    fake_dist(
        "eagle3kit-qa",
        {"qa": "qa_plugin"},
        {
            "qa_plugin": (
                "from eagle3kit import hookimpl, Source, Option\n"
                "__version__ = '2.3'\n"
                "@hookimpl\n"
                "def register_sources(register):\n"
                "    register(Source(name='qa', description='Q and A', options=(Option('lang', 'language'),)))\n"
                "@hookimpl\n"
                "def convert_to_unified(record):\n"
                "    return [{'from': 'user', 'value': record['q']}, {'from': 'assistant', 'value': record['a']}]\n"
            )
        },
        version="2.3",
    )
    registry = load_registry()
    source = registry.source("qa")
    assert (source.plugin, source.plugin_version) == ("qa", "2.3")
    assert registry.plugins["qa"].distribution == "eagle3kit-qa"
    assert {"ultrachat", "sharegpt", "qa"} <= set(registry.sources)
    convert = converter_for(registry, "qa", {"lang": "de"})
    assert convert({"q": "Q", "a": "A"}) == [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(fake_dist, capsys):
    fake_dist("eagle3kit-broken", {"broken": "broken_plugin"}, {"broken_plugin": "import no_such_module_for_eagle3kit\n"})
    registry = load_registry()
    assert "broken" not in registry.plugins
    assert {"ultrachat", "sharegpt"} <= set(registry.sources)
    assert registry.failed == [("broken", "ModuleNotFoundError: No module named 'no_such_module_for_eagle3kit' "
                                          "(at site/broken_plugin.py:1 in <module>)")]  # where the plugin's code raised
    assert capsys.readouterr().err == (
        "eagle3kit: warning: plugin 'broken' failed to load and is skipped "
        "(ModuleNotFoundError: No module named 'no_such_module_for_eagle3kit' (at site/broken_plugin.py:1 in <module>)). "
        "It comes from eagle3kit-broken 1.0: upgrade or uninstall it, or block it with EAGLE3KIT_BLOCK_PLUGINS=broken. "
        "Set EAGLE3KIT_STRICT_PLUGINS=1 to make this fatal.\n"
    )


def test_strict_mode_makes_a_failing_plugin_fatal(fake_dist, monkeypatch):
    fake_dist("eagle3kit-broken", {"broken": "broken_plugin2"}, {"broken_plugin2": "raise RuntimeError('boom at import')\n"})
    with pytest.raises(PluginError) as info:
        load_registry(strict=True)
    assert str(info.value) == "plugin 'broken' failed to load: RuntimeError: boom at import (at site/broken_plugin2.py:1 in <module>)"
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginError):
        load_registry()
    monkeypatch.setenv(STRICT_ENV, "0")
    assert load_registry().failed == [("broken", "RuntimeError: boom at import (at site/broken_plugin2.py:1 in <module>)")]


def test_an_entry_point_naming_a_missing_attribute_is_a_failing_plugin(fake_dist):
    fake_dist("eagle3kit-attr", {"attr": "attr_plugin:nothing_here"}, {"attr_plugin": "x = 1\n"})
    registry = load_registry()
    assert registry.failed == [("attr", "AttributeError: module 'attr_plugin' has no attribute 'nothing_here'")]


def test_a_hook_with_no_spec_is_rejected_by_check_pending(capsys):
    typo = plugin_module("typo")

    @hookimpl
    def convert_to_unifed(record):  # the typo: no such hook
        return []

    typo.convert_to_unifed = convert_to_unifed
    registry = load_registry(entry_points=False, extra_plugins=[("typo", typo), ("good", plugin_module("good", ["g"]))])
    assert list(registry.plugins) == ["good"]
    assert list(registry.sources) == ["g"]
    [(name, error)] = registry.failed
    assert name == "typo"
    assert error.startswith("unknown hook 'convert_to_unifed' in plugin <module 'typo'>")
    assert error.endswith("(hooks eagle3kit knows: convert_to_unified(source, record, options), "
                          "register_sources(register))")
    assert "plugin 'typo' failed to load and is skipped (unknown hook 'convert_to_unifed'" in capsys.readouterr().err
    with pytest.raises(PluginError) as info:
        load_registry(entry_points=False, extra_plugins=[("typo", typo)], strict=True)
    assert str(info.value).startswith("plugin 'typo' failed to load: unknown hook 'convert_to_unifed'")


def test_a_hook_with_an_argument_the_spec_lacks_is_rejected():
    bad = plugin_module("bad", convert=False)

    @hookimpl
    def convert_to_unified(record, tokenizer):
        return []

    bad.convert_to_unified = convert_to_unified
    registry = load_registry(entry_points=False, extra_plugins=[("bad", bad)])
    [(name, error)] = registry.failed
    assert name == "bad"
    assert error.startswith("PluginValidationError: Plugin 'bad' for hook 'convert_to_unified'")
    assert "tokenizer" in error
    assert registry.sources == {} and not registry.pm.has_plugin("bad")


def test_a_plugin_whose_register_sources_raises_is_skipped():
    @hookimpl
    def register_sources(register):
        raise RuntimeError("cannot read my config")

    broken = types.ModuleType("broken")
    broken.register_sources = register_sources
    registry = load_registry(entry_points=False, extra_plugins=[("broken", broken), ("good", plugin_module("good", ["g"]))])
    line = register_sources.__code__.co_firstlineno + 2  # the raise: the plugin's own line
    assert registry.failed == [("broken", f"RuntimeError: cannot read my config (at tests/test_plugins.py:{line} in "
                                          "register_sources)")]
    assert list(registry.sources) == ["g"] and not registry.pm.has_plugin("broken")


def test_register_must_be_given_a_source():
    @hookimpl
    def register_sources(register):
        register({"name": "s"})

    wrong = types.ModuleType("wrong")
    wrong.register_sources = register_sources
    registry = load_registry(entry_points=False, extra_plugins=[("wrong", wrong)])
    assert registry.failed == [("wrong", "register() was given a dict; pass an eagle3kit.Source")]
    with pytest.raises(PluginError) as info:
        load_registry(entry_points=False, extra_plugins=[("wrong", wrong)], strict=True)
    assert str(info.value) == "plugin 'wrong' failed to load: register() was given a dict; pass an eagle3kit.Source"


def test_a_source_name_must_be_usable_in_source_option():
    registry = load_registry(entry_points=False, extra_plugins=[("sp", plugin_module("sp", ["my data"]))])
    assert registry.failed == [
        (
            "sp",
            "it registers a source named 'my data'; a source name may hold only "
            "letters, digits, '_', '.' and '-' (it is typed in --source NAME:key=value)",
        )
    ]


def test_two_plugins_claiming_one_source_is_an_error_naming_both():
    first, second = plugin_module("first", ["shared"]), plugin_module("second", ["shared", "other"])
    with pytest.raises(PluginError) as info:
        load_registry(entry_points=False, extra_plugins=[("first", first), ("second", second)])
    assert str(info.value) == (
        "two plugins register the source 'shared': 'first' ((registered in process)) and 'second' "
        "((registered in process)). Uninstall one, or block one with EAGLE3KIT_BLOCK_PLUGINS=second."
    )
    # also in non-strict mode: the user must choose
    with pytest.raises(PluginError):
        load_registry(entry_points=False, extra_plugins=[("first", first), ("second", second)], strict=False)


def test_a_plugin_claiming_a_builtin_source_names_both_distributions(fake_dist):
    fake_dist(
        "eagle3kit-ultra2",
        {"ultra2": "ultra2_plugin"},
        {"ultra2_plugin": "from eagle3kit import hookimpl, Source\n@hookimpl\ndef register_sources(register):\n"
                          "    register(Source(name='ultrachat', description='another ultrachat'))\n"},
    )
    with pytest.raises(PluginError) as info:
        load_registry()
    assert str(info.value) == (  # the built-in named first, and the other one's name to block
        "two plugins register the source 'ultrachat': 'ultrachat' (eagle3kit) and 'ultra2' (eagle3kit-ultra2). "
        "Uninstall one, or block one with EAGLE3KIT_BLOCK_PLUGINS=ultra2.")
    # blocking one of them resolves it
    assert load_registry(blocked=["ultra2"]).source("ultrachat").plugin == "ultrachat"


def test_plugins_can_be_blocked_by_name(monkeypatch):
    extra = [("first", plugin_module("first", ["a"])), ("second", plugin_module("second", ["b"]))]
    assert sorted(load_registry(entry_points=False, extra_plugins=extra, blocked=["second"]).sources) == ["a"]
    monkeypatch.setenv(BLOCK_ENV, " sharegpt , second")
    registry = load_registry(extra_plugins=extra)
    assert "sharegpt" not in registry.plugins and "second" not in registry.plugins
    assert {"ultrachat", "a"} <= set(registry.sources) and "sharegpt" not in registry.sources and "b" not in registry.sources
    assert registry.failed == []
    assert sorted(registry.blocked) == ["second", "sharegpt"]
    assert registry.blocked["sharegpt"].distribution == "eagle3kit"
    with pytest.raises(UserError) as info:
        registry.source("sharegpt")
    assert str(info.value) == (
        f"source 'sharegpt' is not loaded: its plugin 'sharegpt' (eagle3kit {eagle3kit.__version__}) is blocked by "
        "EAGLE3KIT_BLOCK_PLUGINS. Remove 'sharegpt' from EAGLE3KIT_BLOCK_PLUGINS to use it."
    )
    # a source whose plugin has another name: the blocked plugins are named as the possible providers
    with pytest.raises(UserError) as info:
        registry.source("b")
    assert str(info.value).startswith("unknown source 'b'. Known sources: ")
    assert str(info.value).endswith("or install the plugin that provides it. "
                                    "Blocked plugins, which may provide it: second, sharegpt.")


def test_a_plugin_name_taken_twice_skips_the_second():
    registry = load_registry(extra_plugins=[("ultrachat", plugin_module("dup", ["dup"]))])
    assert registry.failed == [("ultrachat", "another plugin, from eagle3kit, is already registered under this name; "
                                             "EAGLE3KIT_BLOCK_PLUGINS=ultrachat would block both")]
    assert registry.source("ultrachat").plugin_version == eagle3kit.__version__ and "dup" not in registry.sources


def test_unknown_source_lists_the_known_ones():
    registry = load_registry(entry_points=False, extra_plugins=[("u", ultrachat), ("g", sharegpt)])
    with pytest.raises(UserError) as info:
        registry.source("ultrachta")
    assert str(info.value) == (
        "unknown source 'ultrachta'. Known sources: sharegpt, ultrachat. "
        "Run `eagle3kit sources` to list them, or install the plugin that provides it."
    )
    empty = load_registry(entry_points=False)
    with pytest.raises(UserError) as info:
        empty.source("x")
    assert str(info.value).startswith("unknown source 'x'. Known sources: (none).")


# --------------------------------------------------------------------------- invalid sources, SystemExit, blocking
def invoke(*args, env=None):
    """The CLI in-process, seeing the built-in plugins and the fake ones (other installed plugins blocked)."""
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "400", **only_builtins_env(), **(env or {})},
                              catch_exceptions=False)


def sharegpt_mix(samples, tmp_path):
    return ("mix", "--source", f"sharegpt:path={samples / 'sharegpt_sample.json'},limit=5",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))


HOOKS = (
    "from eagle3kit import hookimpl, Source, Option, HubRepo\n"
    "@hookimpl\n"
    "def convert_to_unified(record):\n"
    "    return []\n"
    "@hookimpl\n"
    "def register_sources(register):\n"
)
COMMON = "(path, repo, split, files, limit, weight)"


@pytest.mark.parametrize(
    "sources, problem",
    [
        ([Source(name="s", description=None)], "source 's': description is a NoneType; pass a str"),
        ([Source(name="s", description="d", repos=("org/s",))], "source 's': repos[0] is a str; pass an eagle3kit.HubRepo"),
        ([Source(name="s", description="d", repos="org/s")], "source 's': repos is a str; pass a tuple of eagle3kit.HubRepo"),
        ([Source(name="s", description="d", options=("lang",))], "source 's': options[0] is a str; pass an eagle3kit.Option"),
        ([Source(name="s", description="d", options=(Option("limit", "mine"),))],
         f"source 's': option 'limit' is one every source accepts {COMMON}; give the source's own option another name"),
        ([Source(name="s", description="d", options=(Option("my-opt", "x"),))],
         "source 's': option name 'my-opt' is not a word of letters, digits and '_' (it is typed in --source NAME:key=value)"),
        ([Source(name="s", description="d", options=(Option("lang", "a"), Option("lang", "b")))],
         "source 's': option 'lang' is declared twice"),
        ([Source(name="s", description="d", options=(Option("lang", "a", "str"),))],
         "source 's': option 'lang' has a parse that is not callable"),
        (["s", "t", "s"], "it registers the source 's' twice"),
    ],
)
def test_a_plugin_registering_an_invalid_source_is_skipped(sources, problem):
    extra = [("bad", plugin_module("bad", sources)), ("good", plugin_module("good", ["g"]))]
    registry = load_registry(entry_points=False, extra_plugins=extra)
    assert registry.failed == [("bad", problem)]
    assert list(registry.sources) == ["g"] and list(registry.plugins) == ["good"] and not registry.pm.has_plugin("bad")
    with pytest.raises(PluginError) as info:
        load_registry(entry_points=False, extra_plugins=extra, strict=True)
    assert str(info.value) == f"plugin 'bad' failed to load: {problem}"


def test_source_lists_may_be_lists_and_are_stored_as_tuples():
    source = Source(name="s", description="d", repos=[HubRepo("org/s")], options=[Option("lang", "language")])
    registered = load_registry(entry_points=False, extra_plugins=[("p", plugin_module("p", [source]))]).source("s")
    assert registered.repos == (HubRepo("org/s"),) and registered.options == (Option("lang", "language"),)


def test_invalid_sources_of_installed_plugins_do_not_break_the_commands(fake_dist, samples, tmp_path):
    fake_dist("eagle3kit-strrepo", {"strrepo": "strrepo_plugin"},
              {"strrepo_plugin": HOOKS + "    register(Source(name='strrepo', description='d', repos=('org/strrepo',)))\n"})
    fake_dist("eagle3kit-optclash", {"optclash": "optclash_plugin"},
              {"optclash_plugin": HOOKS + "    register(Source(name='optclash', description='d', options=(Option('limit', 'mine'),)))\n"})
    fake_dist("eagle3kit-dup", {"myplug": "dup_plugin"},
              {"dup_plugin": HOOKS + "    register(Source(name='dup', description='d'))\n" * 2})
    problems = {
        "myplug": ("eagle3kit-dup", "it registers the source 'dup' twice"),
        "optclash": ("eagle3kit-optclash", f"source 'optclash': option 'limit' is one every source accepts {COMMON}; "
                                           "give the source's own option another name"),
        "strrepo": ("eagle3kit-strrepo", "source 'strrepo': repos[0] is a str; pass an eagle3kit.HubRepo"),
    }
    warnings = [
        f"eagle3kit: warning: plugin '{name}' failed to load and is skipped ({problem}). It comes from {dist} 1.0: "
        f"upgrade or uninstall it, or block it with EAGLE3KIT_BLOCK_PLUGINS={name}. "
        "Set EAGLE3KIT_STRICT_PLUGINS=1 to make this fatal."
        for name, (dist, problem) in sorted(problems.items())
    ]
    for command in ("plugins", "sources"):
        result = invoke(command)
        assert result.exit_code == 0, result.output
        assert result.stderr.splitlines() == warnings
        assert "sharegpt" in result.stdout and "ultrachat" in result.stdout
    assert "".join(f"{name}\tFAILED: {problem}\n" for name, (_, problem) in sorted(problems.items())) in invoke("plugins").stdout
    result = invoke(*sharegpt_mix(samples, tmp_path))
    assert result.exit_code == 0, result.output
    result = invoke("mix", "--source", f"optclash:path={samples / 'sharegpt_sample.json'},limit=5", "--cache-dir", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: source 'optclash' is not loaded: its plugin 'optclash' failed to load ({problems['optclash'][1]}). "
        "Upgrade or uninstall that plugin (`eagle3kit plugins` lists it)."
    )


def test_a_plugin_raising_systemexit_is_skipped(fake_dist, samples, tmp_path, capsys):
    fake_dist("eagle3kit-exiter", {"exiter": "exiter_plugin"}, {"exiter_plugin": "raise SystemExit('needs libfoo >= 2')\n"})

    @hookimpl
    def register_sources(register):
        raise SystemExit(3)

    quitter = types.ModuleType("quitter")
    quitter.register_sources = register_sources
    registry = load_registry(extra_plugins=[("quitter", quitter)])
    line = register_sources.__code__.co_firstlineno + 2
    quit_at = f" (at tests/test_plugins.py:{line} in register_sources)"
    assert registry.failed == [("exiter", "SystemExit: needs libfoo >= 2 (at site/exiter_plugin.py:1 in <module>)"), ("quitter", f"SystemExit: 3{quit_at}")]
    assert {"ultrachat", "sharegpt"} <= set(registry.sources)
    assert capsys.readouterr().err.splitlines() == [
        "eagle3kit: warning: plugin 'exiter' failed to load and is skipped (SystemExit: needs libfoo >= 2 (at site/exiter_plugin.py:1 in <module>)). It comes from "
        "eagle3kit-exiter 1.0: upgrade or uninstall it, or block it with EAGLE3KIT_BLOCK_PLUGINS=exiter. "
        "Set EAGLE3KIT_STRICT_PLUGINS=1 to make this fatal.",
        f"eagle3kit: warning: plugin 'quitter' failed to load and is skipped (SystemExit: 3{quit_at}). "
        "Set EAGLE3KIT_STRICT_PLUGINS=1 to make this fatal.",
    ]
    with pytest.raises(PluginError) as info:
        load_registry(strict=True)
    assert str(info.value) == "plugin 'exiter' failed to load: SystemExit: needs libfoo >= 2 (at site/exiter_plugin.py:1 in <module>)"
    for command in ("plugins", "sources"):
        result = invoke(command)
        assert result.exit_code == 0, result.output
        assert "plugin 'exiter' failed to load and is skipped (SystemExit: needs libfoo >= 2 (at site/exiter_plugin.py:1 in <module>))" in result.stderr
    assert "exiter\tFAILED: SystemExit: needs libfoo >= 2 (at site/exiter_plugin.py:1 in <module>)\n" in invoke("plugins").stdout
    result = invoke(*sharegpt_mix(samples, tmp_path))
    assert result.exit_code == 0, result.output


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed():
    @hookimpl
    def register_sources(register):
        raise KeyboardInterrupt

    module = types.ModuleType("interrupted")
    module.register_sources = register_sources
    with pytest.raises(KeyboardInterrupt):
        load_registry(entry_points=False, extra_plugins=[("interrupted", module)])


def test_blocked_plugins_are_listed_and_named_when_their_source_is_asked_for(samples, tmp_path):
    env = {BLOCK_ENV: f"sharegpt,{','.join(OTHER_PLUGINS)}"}
    result = invoke("plugins", env=env)
    assert result.exit_code == 0 and result.stderr == ""
    assert f"sharegpt\teagle3kit {eagle3kit.__version__}\tBLOCKED by EAGLE3KIT_BLOCK_PLUGINS\n" in result.stdout
    assert "sources: sharegpt" not in result.stdout and "ultrachat\teagle3kit" in result.stdout
    result = invoke("sources", env=env)
    assert result.exit_code == 0
    assert f"plugin sharegpt (eagle3kit {eagle3kit.__version__}) is blocked by EAGLE3KIT_BLOCK_PLUGINS: its sources " \
           "are not listed" in result.stdout
    result = invoke(*sharegpt_mix(samples, tmp_path), env=env)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: source 'sharegpt' is not loaded: its plugin 'sharegpt' (eagle3kit {eagle3kit.__version__}) is blocked "
        "by EAGLE3KIT_BLOCK_PLUGINS. Remove 'sharegpt' from EAGLE3KIT_BLOCK_PLUGINS to use it.\n"
    )


def test_a_blocked_name_that_matches_no_plugin_is_warned_about(capsys):
    extra = [("first", plugin_module("first", ["a"])), ("second", plugin_module("second", ["b"]))]
    registry = load_registry(entry_points=False, extra_plugins=extra, blocked=["secnod", "first"])
    assert sorted(registry.sources) == ["b"] and list(registry.blocked) == ["first"]
    assert capsys.readouterr().err == (
        "eagle3kit: warning: EAGLE3KIT_BLOCK_PLUGINS names 'secnod', but no plugin is called that "
        "(the plugins are: first, second); check the spelling.\n"
    )
    result = invoke("plugins", env={BLOCK_ENV: f"sharegtp,{','.join(OTHER_PLUGINS)}"})
    assert result.exit_code == 0
    assert result.stderr.startswith("eagle3kit: warning: EAGLE3KIT_BLOCK_PLUGINS names 'sharegtp', but no plugin is "
                                    "called that (the plugins are: ")
    assert "sharegpt, ultrachat" in result.stderr and "sharegpt\teagle3kit" in result.stdout


# --------------------------------------------------------------------------- routing
def test_records_go_only_to_the_plugin_that_owns_the_source():
    first, second = plugin_module("first", ["a"]), plugin_module("second", ["b"])
    registry = load_registry(entry_points=False, extra_plugins=[("first", first), ("second", second)])
    convert = converter_for(registry, "b", {})
    assert convert({"q": "Q", "a": "A"}) == [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]
    assert (first.calls, second.calls) == ([], ["b"])
    converter_for(registry, "a", {})({"q": "Q", "a": "A"})
    assert (first.calls, second.calls) == (["a"], ["b"])


def test_a_source_whose_plugin_has_no_converter():
    registry = load_registry(entry_points=False, extra_plugins=[("noconv", plugin_module("noconv", ["n"], convert=False))])
    with pytest.raises(PluginError) as info:
        converter_for(registry, "n", {})
    assert str(info.value) == (
        "plugin 'noconv' registers source 'n' but implements no convert_to_unified hook; "
        "add one decorated with @eagle3kit.hookimpl"
    )


def test_converter_passes_only_the_arguments_the_hook_asks_for():
    seen = []

    @hookimpl
    def convert_to_unified(options, source):
        seen.append((source, options))
        return []

    module = plugin_module("opt", ["o"], convert=False, convert_to_unified=convert_to_unified)
    registry = load_registry(entry_points=False, extra_plugins=[("opt", module)])
    convert = converter_for(registry, "o", {"limit": 3, "path": None})
    assert convert({"ignored": True}) == []
    assert seen == [("o", {"limit": 3, "path": None})]
    assert convert.argnames == ("options", "source")
    assert convert.options == (("limit", 3), ("path", None))


def test_converter_pickles_and_hashes_stably(registry):
    import datasets.fingerprint

    convert = converter_for(registry, "ultrachat", {"path": "x.jsonl", "limit": None, "weight": None})
    assert isinstance(convert, Converter)
    clone = pickle.loads(pickle.dumps(convert))
    assert clone == convert and clone.function is ultrachat.convert_to_unified
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert clone(record) == convert(record) == [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]
    again = converter_for(load_registry(), "ultrachat", {"limit": None, "weight": None, "path": "x.jsonl"})
    assert datasets.fingerprint.Hasher.hash(again) == datasets.fingerprint.Hasher.hash(convert)
    other = converter_for(registry, "ultrachat", {"path": "y.jsonl", "limit": None, "weight": None})
    assert datasets.fingerprint.Hasher.hash(other) != datasets.fingerprint.Hasher.hash(convert)


def test_option_declared_by_a_plugin_is_listed_with_the_source():
    source = Source(name="o", description="d", options=(Option("lang", "language", str, "en"),))
    registry = load_registry(entry_points=False, extra_plugins=[("p", plugin_module("p", [source]))])
    assert registry.source("o").options == (Option("lang", "language", str, "en"),)
    assert registry.source("o") == source  # plugin and version are filled in but not compared
    assert registry.source("o").plugin == "p"


def test_a_plugin_that_registers_no_source_says_why(capsys):
    undecorated = types.ModuleType("undecorated")
    undecorated.register_sources = lambda register: register(Source(name="u", description="d"))  # no @hookimpl
    returning = types.ModuleType("returning")
    returning.register_sources = hookimpl(lambda register: Source(name="r", description="d"))
    registry = load_registry(entry_points=False, extra_plugins=[("undecorated", undecorated), ("returning", returning)])
    assert registry.sources == {}
    assert capsys.readouterr().err.splitlines() == [
        "eagle3kit: warning: plugin 'undecorated' ((registered in process)) registers no source: its register_sources "
        "is not marked @hookimpl (from eagle3kit import hookimpl)",
        "eagle3kit: warning: plugin 'returning' ((registered in process)) registers no source: its register_sources "
        "returned a Source; call register(source) instead"]


def test_a_hub_repository_without_an_id_is_refused_when_the_plugin_loads(capsys):
    module = plugin_module("norepo", [Source(name="nr", description="d", repos=(HubRepo(None),))])
    registry = load_registry(entry_points=False, extra_plugins=[("norepo", module)])
    assert "nr" not in registry.sources
    assert ("source 'nr': repos[0] has repo_id None and split 'train'; both must be text"
            in capsys.readouterr().err)


def test_an_unknown_source_names_the_plugins_that_failed_to_load(fake_dist):
    fake_dist("eagle3kit-qa", {"qapairs": "qa_plugin"}, {"qa_plugin": "undefined_name\n"})  # it would register qa-single
    with pytest.raises(UserError) as info:
        load_registry().source("qa-single")
    assert str(info.value).endswith("Plugins that failed to load, which may provide it: qapairs (`eagle3kit plugins` "
                                    "shows why).")
