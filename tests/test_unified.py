"""eagle3kit.unified: the clean-up rules, one test (at least) per rule, exact outputs.

Rules 1-5 are applied by :func:`clean_messages`; the role conversion of each built-in
source (its ``convert_to_unified`` hook) feeds it, so rule 1 is pinned through both.
Rule 6 (duplicates) lives in eagle3kit.mix and is tested in test_mix.py.
"""

from __future__ import annotations

import json

import pytest

from eagle3kit.errors import RecordError
from eagle3kit.sources import sharegpt, ultrachat
from helpers import G, H, S
from eagle3kit.unified import (
    KEPT,
    ROLE_MAP,
    STATUSES,
    TOO_SHORT,
    UNKNOWN_ROLE,
    clean_messages,
    conversation_json,
    conversation_key,
    record_json,
    validate_unified,
)


def m(role, value):
    return {"from": role, "value": value}




# --------------------------------------------------------------------------- rule 1: roles
def test_role_map_is_exactly_the_documented_one():
    assert ROLE_MAP == {
        "human": "human",
        "user": "human",
        "gpt": "gpt",
        "chatgpt": "gpt",
        "bing": "gpt",
        "bard": "gpt",
        "assistant": "gpt",
        "model": "gpt",
        "system": "system",
    }
    assert STATUSES == ("kept", "unknown_role", "too_short", "invalid")


def test_rule1_ultrachat_roles_user_assistant_system():
    record = {
        "prompt": "Hi",
        "prompt_id": "1",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    }
    raw = ultrachat.convert_to_unified(source="ultrachat", record=record)
    assert raw == [m("system", "Be kind."), m("user", "Hi"), m("assistant", "Hello!")]
    assert clean_messages(raw) == ([S("Be kind."), H("Hi"), G("Hello!")], KEPT)


@pytest.mark.parametrize("human", ["human", "user"])
@pytest.mark.parametrize("gpt", ["gpt", "chatgpt", "bing", "bard", "assistant", "model"])
def test_rule1_sharegpt_roles(human, gpt):
    record = {"id": "a", "conversations": [m("system", "Sys"), m(human, "Q1"), m(gpt, "A1"), m(human, "Q2"), m(gpt, "A2")]}
    raw = sharegpt.convert_to_unified(source="sharegpt", record=record)
    assert clean_messages(raw) == ([S("Sys"), H("Q1"), G("A1"), H("Q2"), G("A2")], KEPT)


def test_rule1_roles_compared_stripped_and_lower_cased():
    assert clean_messages([m(" Human ", "Q"), m("ChatGPT", "A")]) == ([H("Q"), G("A")], KEPT)


@pytest.mark.parametrize("role", ["tool", "function", "narrator", "", "users"])
def test_rule1_any_other_role_drops_the_conversation(role):
    assert clean_messages([m("human", "Q"), m("gpt", "A"), m(role, "x"), m("human", "Q2"), m("gpt", "A2")]) == (
        None,
        UNKNOWN_ROLE,
    )


def test_rule1_unknown_role_wins_even_where_the_conversation_would_be_cut_before_it():
    # the role check covers every message, also those after an alternation break
    assert clean_messages([m("human", "Q"), m("gpt", "A"), m("gpt", "again"), m("tool", "x")]) == (None, UNKNOWN_ROLE)


def test_rule1_ultrachat_unknown_role_is_dropped():
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "x"}, {"role": "assistant", "content": "A"}]}
    assert clean_messages(ultrachat.convert_to_unified(source="ultrachat", record=record)) == (None, UNKNOWN_ROLE)


# --------------------------------------------------------------------------- rule 2: strip
def test_rule2_values_are_stripped():
    raw = [m("system", "\n Sys \t"), m("human", "  Q one \n"), m("gpt", "\tA one  ")]
    assert clean_messages(raw) == ([S("Sys"), H("Q one"), G("A one")], KEPT)


def test_rule2_inner_white_space_is_kept():
    assert clean_messages([m("human", " a \n\n b "), m("gpt", "c  d")]) == ([H("a \n\n b"), G("c  d")], KEPT)


# --------------------------------------------------------------------------- rule 3: head
def test_rule3_system_at_position_0_is_kept_first():
    assert clean_messages([m("system", "S"), m("human", "Q"), m("gpt", "A")]) == ([S("S"), H("Q"), G("A")], KEPT)


def test_rule3_empty_system_at_position_0_is_dropped():
    assert clean_messages([m("system", "   "), m("human", "Q"), m("gpt", "A")]) == ([H("Q"), G("A")], KEPT)


def test_rule3_system_not_at_position_0_is_dropped():
    raw = [m("gpt", "Hello, how can I help?"), m("system", "S"), m("human", "Q"), m("gpt", "A")]
    assert clean_messages(raw) == ([H("Q"), G("A")], KEPT)


def test_rule3_messages_before_the_first_human_are_dropped():
    raw = [m("gpt", "Hi there"), m("gpt", "Anything?"), m("human", "Q"), m("gpt", "A")]
    assert clean_messages(raw) == ([H("Q"), G("A")], KEPT)


def test_rule3_system_kept_and_gpt_greeting_dropped():
    raw = [m("system", "S"), m("gpt", "Hello!"), m("human", "Q"), m("gpt", "A")]
    assert clean_messages(raw) == ([S("S"), H("Q"), G("A")], KEPT)


def test_rule3_system_later_in_the_conversation_cuts_it_there():
    # after the first human a system message breaks the alternation (rule 4)
    raw = [m("human", "Q1"), m("gpt", "A1"), m("system", "S"), m("human", "Q2"), m("gpt", "A2")]
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule3_no_human_at_all_is_too_short():
    assert clean_messages([m("system", "S"), m("gpt", "A")]) == (None, TOO_SHORT)


# --------------------------------------------------------------------------- rule 4: alternation
def test_rule4_cut_before_two_humans_in_a_row():
    raw = [m("human", "Q1"), m("gpt", "A1"), m("human", "Q2"), m("human", "Q3"), m("gpt", "A3")]
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule4_cut_before_two_gpts_in_a_row():
    raw = [m("human", "Q1"), m("gpt", "A1"), m("gpt", "A1 again"), m("human", "Q2"), m("gpt", "A2")]
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule4_cut_before_an_empty_value():
    raw = [m("human", "Q1"), m("gpt", "A1"), m("human", "Q2"), m("gpt", " \n "), m("human", "Q3"), m("gpt", "A3")]
    # cut before the empty answer -> [Q1, A1, Q2] -> trailing human dropped (rule 5)
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule4_cut_before_an_empty_question():
    raw = [m("human", "Q1"), m("gpt", "A1"), m("human", ""), m("gpt", "A2")]
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule4_empty_first_human_leaves_nothing():
    assert clean_messages([m("human", ""), m("gpt", "A"), m("human", "Q"), m("gpt", "A2")]) == (None, TOO_SHORT)


def test_rule4_long_alternating_conversation_is_kept_whole():
    raw = [m("human" if i % 2 == 0 else "gpt", f"v{i}") for i in range(10)]
    expected = [H(f"v{i}") if i % 2 == 0 else G(f"v{i}") for i in range(10)]
    assert clean_messages(raw) == (expected, KEPT)


# --------------------------------------------------------------------------- rule 5: length
def test_rule5_trailing_human_is_dropped():
    raw = [m("human", "Q1"), m("gpt", "A1"), m("human", "Thanks!")]
    assert clean_messages(raw) == ([H("Q1"), G("A1")], KEPT)


def test_rule5_a_single_human_is_too_short():
    assert clean_messages([m("human", "Q")]) == (None, TOO_SHORT)


def test_rule5_empty_conversation_is_too_short():
    assert clean_messages([]) == (None, TOO_SHORT)


def test_rule5_system_does_not_count_towards_the_length():
    assert clean_messages([m("system", "S"), m("human", "Q")]) == (None, TOO_SHORT)


def test_rule5_human_then_empty_answer_is_too_short():
    assert clean_messages([m("human", "Q"), m("gpt", "   ")]) == (None, TOO_SHORT)


# --------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "messages, problem",
    [
        ("text", "the converter returned str, expected a list of messages"),
        ({"from": "human"}, "the converter returned dict, expected a list of messages"),
        ([["human", "Q"]], "message 0 is list, expected an object with 'from' and 'value'"),
        ([m("human", "Q"), {"value": "A"}], "message 1 has no 'from'"),
        ([{"from": "human"}], "message 0 has no 'value'"),
        ([m("human", "Q"), m("gpt", 3)], "message 1 'value' is int, expected a string"),
        ([m(None, "Q")], "message 0 'from' is NoneType, expected a string"),
    ],
)
def test_malformed_messages_raise_record_error(messages, problem):
    with pytest.raises(RecordError) as info:
        clean_messages(messages)
    assert str(info.value) == problem


def test_the_input_is_not_modified():
    raw = [m("system", " S "), m("human", " Q "), m("gpt", " A ")]
    copy = json.loads(json.dumps(raw))
    clean_messages(raw)
    assert raw == copy


# --------------------------------------------------------------------------- serialisation
def test_conversation_json_is_canonical_and_keeps_unicode():
    conversation = [H("Grüße, 世界"), G('say "hi"\n')]
    assert conversation_json(conversation) == (
        '[{"from": "human", "value": "Grüße, 世界"}, {"from": "gpt", "value": "say \\"hi\\"\\n"}]'
    )


def test_record_json_is_one_unified_line():
    text = conversation_json([H("Q"), G("A")])
    line = record_json("ultrachat_7", text)
    assert line == '{"id": "ultrachat_7", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}'
    assert json.loads(line) == {"id": "ultrachat_7", "conversations": [H("Q"), G("A")]}


def test_conversation_key_is_16_bytes_equal_for_equal_conversations_only():
    a = conversation_key(conversation_json([H("Q"), G("A")]))
    assert len(a) == 16
    assert a == conversation_key(conversation_json([H("Q"), G("A")]))
    assert a != conversation_key(conversation_json([H("Q"), G("A ")]))
    assert a != conversation_key(conversation_json([S("s"), H("Q"), G("A")]))


# --------------------------------------------------------------------------- validate_unified
def test_validate_unified_returns_the_conversation():
    record = {"id": "x_0", "conversations": [S("s"), H("Q"), G("A")]}
    assert validate_unified(record, "f.jsonl line 1") == [S("s"), H("Q"), G("A")]


@pytest.mark.parametrize(
    "record, problem",
    [
        ([], "f.jsonl line 3: expected a JSON object, found list"),
        ({"id": "x"}, "f.jsonl line 3: 'conversations' must be a list of {'from', 'value'} messages"),
        ({"conversations": [{"from": "user", "value": "Q"}]}, "f.jsonl line 3: message 0 must have 'from' human, gpt or system"),
        ({"conversations": [H("Q"), {"from": "gpt"}]}, "f.jsonl line 3: message 1 must have a string 'value'"),
    ],
)
def test_validate_unified_names_where_and_what(record, problem):
    with pytest.raises(RecordError) as info:
        validate_unified(record, "f.jsonl line 3")
    assert str(info.value) == problem
