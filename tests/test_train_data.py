"""Rendering and the loss mask (golden tests per template), truncation, packing, sharding
and the draft vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from eagle3kit.tiny import build_tokenizer
from eagle3kit.train.mask import assistant_spans, tokenize_conversation
from eagle3kit.train.packing import pack, shard_bins
from eagle3kit.train.vocab import choose_draft_vocab

TEXTS = ["What is two plus two?", "Two plus two is four.", "And three?", "Three plus two is five.",
         "Be brief.", "Hello there"] * 20

CONV = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "What is two plus two?"},
    {"from": "gpt", "value": "Two plus two is four."},
    {"from": "human", "value": "And three?"},
    {"from": "gpt", "value": "Three plus two is five."},
]

QWEN3_LIKE = (
    "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m['role'] == 'user' %}"
    "{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and loop.index0 > ns.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def masked_pieces(tokenizer, tokenized) -> list[str]:
    """The text of each run of loss-masked tokens."""
    pieces, current = [], []
    for token, m in zip(tokenized.input_ids, tokenized.loss_mask):
        if m:
            current.append(token)
        elif current:
            pieces.append(tokenizer.decode(current))
            current = []
    if current:
        pieces.append(tokenizer.decode(current))
    return pieces


@pytest.fixture(scope="module")
def llama3():
    return build_tokenizer(TEXTS, style="llama3", vocab_size=400)


@pytest.fixture(scope="module")
def chatml():
    return build_tokenizer(TEXTS, style="chatml", vocab_size=400)


def test_llama3_template_masks_exactly_the_answers_and_their_end_of_turn(llama3):
    t = tokenize_conversation(llama3, CONV, max_len=1000)
    assert masked_pieces(llama3, t) == ["Two plus two is four.<|eot_id|>", "Three plus two is five.<|eot_id|>"]
    text = llama3.decode(t.input_ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert not t.truncated and not t.cut_mid_turn


def test_chatml_template_masks_answers_not_the_newline_after_im_end(chatml):
    t = tokenize_conversation(chatml, CONV, max_len=1000)
    assert masked_pieces(chatml, t) == ["Two plus two is four.<|im_end|>", "Three plus two is five.<|im_end|>"]
    # the token right after the first answer's <|im_end|> (a newline) is not masked
    ids, mask = t.input_ids, t.loss_mask
    end = ids.index(chatml.convert_tokens_to_ids("<|im_end|>"), ids.index(chatml.convert_tokens_to_ids("<|im_start|>"), 8))
    first_answer_end = [i for i, (tok, m) in enumerate(zip(ids, mask)) if m and tok == chatml.convert_tokens_to_ids("<|im_end|>")][0]
    assert mask[first_answer_end + 1] == 0 and chatml.decode([ids[first_answer_end + 1]]) == "\n"
    assert end <= first_answer_end


def test_template_that_renders_the_last_turn_differently(chatml):
    chatml.chat_template = QWEN3_LIKE
    try:
        t = tokenize_conversation(chatml, CONV[1:], max_len=1000)
    finally:
        chatml.chat_template = None
    # the middle answer is plain; the final one carries the (empty) think block the model generates
    assert masked_pieces(chatml, t) == ["Two plus two is four.<|im_end|>",
                                        "<think>\n\n</think>\n\nThree plus two is five.<|im_end|>"]


def _with_template(tokenizer, template, conversation, **kwargs):
    from eagle3kit.train.template import with_template_kwargs

    saved = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        with_template_kwargs(tokenizer, kwargs)
        return masked_pieces(tokenizer, tokenize_conversation(tokenizer, conversation, max_len=1000))
    finally:
        tokenizer.chat_template = saved


#: Like Qwen 3's template: without thinking the generation prompt opens an empty think
#: block that the rendered answers lack; earlier answers lose their think block
QWEN3_THINKING = (
    "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m['role'] == 'user' %}"
    "{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- set c = m['content'] %}"
    "{%- if m['role'] == 'assistant' and loop.index0 < ns.last %}{%- set c = c.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}<|im_start|>{{ m['role'] }}\n{{ c }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
#: Like Phi-3's: the end-of-text token after the whole conversation
PHI3_LIKE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% else %}<|endoftext|>{% endif %}")
#: A prompt ending in a space, which byte-level BPE merges into the answer's first word
SPACED = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}Assistant: "
          "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")


def test_masks_of_templates_that_render_a_turn_otherwise_than_they_prompt_it(chatml):
    """Qwen 3 without thinking (the generation prompt's empty think block), kept reasoning
    (only the last turn keeps it), Phi-3 (end-of-text after the last turn only), and a
    token merged across the prompt's end: every answer and its end-of-turn marker."""
    conv = CONV[1:]
    assert _with_template(chatml, QWEN3_THINKING, conv, enable_thinking=False) == [
        "Two plus two is four.<|im_end|>", "Three plus two is five.<|im_end|>"]
    thought = [dict(m) for m in conv]
    thought[1]["value"] = "<think>\nAdd two and two.\n</think>\n\nTwo plus two is four."
    thought[3]["value"] = "<think>\nAdd three and two.\n</think>\n\nThree plus two is five."
    assert _with_template(chatml, QWEN3_THINKING, thought) == [
        "Two plus two is four.<|im_end|>", "<think>\nAdd three and two.\n</think>\n\nThree plus two is five.<|im_end|>"]
    assert _with_template(chatml, PHI3_LIKE, CONV) == ["Two plus two is four.<|end|>", "Three plus two is five.<|end|>"]
    merging = build_tokenizer(TEXTS + ["Assistant: Two", "Assistant: Three"] * 20, style="chatml", vocab_size=400)
    enc = merging("Assistant: Two", add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"][-1][0] < len("Assistant: ")  # " Two" is one token, starting in the prompt
    assert _with_template(merging, SPACED, conv) == [" Two plus two is four.<|im_end|>",
                                                     " Three plus two is five.<|im_end|>"]


def test_conversations_the_template_fails_on_are_counted_and_named(tmp_path, chatml):
    """One conversation a template refuses (Gemma's has no system role) does not stop the
    others; all of them failing does, with the template's reason."""
    import json

    from eagle3kit.errors import UserError
    from eagle3kit.train.data import load_tokenized

    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                 "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": i, "conversations": c}) + "\n" for i, c in (("sys", CONV), ("plain", CONV[1:]))))
    saved = chatml.chat_template
    chatml.chat_template = no_system
    try:
        t = load_tokenized(data, chatml, 1000, tmp_path / "cache")
        assert (t.conversations, len(t.dataset), t.failed, t.without_answer) == (2, 1, 1, 0)
        assert t.failed_examples == ["record sys: System role not supported"]
        data.write_text(json.dumps({"id": "sys", "conversations": CONV}) + "\n")
        with pytest.raises(UserError, match="failed on every conversation, e.g. record sys: System role not supported"):
            load_tokenized(data, chatml, 1000, tmp_path / "cache")
    finally:
        chatml.chat_template = saved


def test_spans_are_character_exact(llama3):
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Be brief."}]
    text, spans = assistant_spans(llama3, messages)
    assert [text[s:e] for s, e in spans] == ["Be brief.<|eot_id|>"]


def test_truncation_at_a_turn_boundary(llama3):
    full = tokenize_conversation(llama3, CONV, max_len=1000)
    first_end = [i for i, m in enumerate(full.loss_mask) if m]
    first_answer_end = next(i for i in range(len(first_end) - 1) if first_end[i + 1] != first_end[i] + 1) + 1
    t = tokenize_conversation(llama3, CONV, max_len=len(full.input_ids) - 1)
    assert t.truncated and not t.cut_mid_turn
    assert len(t.input_ids) == first_end[first_answer_end - 1] + 1  # ends right after the first <|eot_id|>
    assert masked_pieces(llama3, t) == ["Two plus two is four.<|eot_id|>"]
    assert t.input_ids == full.input_ids[: len(t.input_ids)]


def test_a_first_answer_too_long_is_cut_inside_it_and_counted(llama3):
    full = tokenize_conversation(llama3, CONV, max_len=1000)
    start = full.loss_mask.index(1)
    t = tokenize_conversation(llama3, CONV, max_len=start + 2)
    assert t.cut_mid_turn and len(t.input_ids) == start + 2 and sum(t.loss_mask) == 2


def test_no_template_is_a_clear_error(llama3):
    from eagle3kit.train.template import TemplateError

    saved, llama3.chat_template = llama3.chat_template, None
    try:
        with pytest.raises(TemplateError, match="no chat template"):
            tokenize_conversation(llama3, CONV, 100)
    finally:
        llama3.chat_template = saved


def test_pack_puts_every_sequence_in_exactly_one_bin():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 500, size=1000)
    bins = pack(lengths, 1024, seed=3)
    flat = np.concatenate(bins)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(lengths[b].sum() <= 1024 for b in bins)
    fill = lengths.sum() / (len(bins) * 1024)
    assert fill > 0.97  # best-fit packing wastes under 3% here
    again = pack(lengths, 1024, seed=3)
    assert [b.tolist() for b in again] == [b.tolist() for b in bins]
    other = pack(lengths, 1024, seed=4)
    assert [b.tolist() for b in other] != [b.tolist() for b in bins]


def test_pack_rejects_a_sequence_longer_than_a_row():
    from eagle3kit.errors import UserError

    with pytest.raises(UserError, match="--max-tokens"):
        pack(np.array([10, 2000]), 1024, 0)


def test_shards_are_disjoint_and_equal():
    bins = [np.array([i]) for i in range(23)]
    shards = [shard_bins(bins, r, 3, multiple=2) for r in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    seen = [int(b[0]) for s in shards for b in s]
    assert len(seen) == len(set(seen))


def test_draft_vocab_is_the_most_frequent_ids_sorted_with_ties_to_the_lower_id():
    counts = np.zeros(20, dtype=np.int64)
    counts[[3, 7, 11, 2, 15]] = [5, 9, 5, 1, 5]
    v = choose_draft_vocab(counts, 3)
    assert v.ids.tolist() == [3, 7, 11]  # 9, then the two lowest ids among the 5s
    assert v.d2t().tolist() == [3, 6, 9]
    assert v.coverage == pytest.approx(19 / 25)


def test_draft_vocab_with_fewer_distinct_tokens_says_so_and_adds_specials():
    counts = np.zeros(20, dtype=np.int64)
    counts[[4, 9]] = [3, 1]
    warnings = []
    v = choose_draft_vocab(counts, 8, special_ids=[0, 19], warn=warnings.append)
    assert v.ids.tolist() == [0, 4, 9, 19]
    assert "2 distinct answer tokens" in warnings[0] and "4 entries" in warnings[0]


def test_draft_vocab_keeps_every_answer_token_when_the_specials_do_not_all_fit():
    """Specials fill what is left after every token seen, in the order given; they never
    push out an answer token (here the most frequent one, id 500)."""
    counts = np.zeros(1000, dtype=np.int64)
    counts[[10, 500, 900]] = [1, 200, 3]
    v = choose_draft_vocab(counts, 4, special_ids=[990, 1, 2, 3, 500], warn=lambda m: None)
    assert v.ids.tolist() == [10, 500, 900, 990]
    assert v.coverage == 1.0


def test_tokenised_data_and_vocab_are_cached_by_content(tmp_path, llama3):
    import json

    from eagle3kit.train.data import load_tokenized
    from eagle3kit.train.vocab import load_or_build_draft_vocab

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "a", "conversations": CONV}) + "\n")
    first = load_tokenized(path, llama3, 256, tmp_path / "cache")
    again = load_tokenized(path, llama3, 256, tmp_path / "cache")
    assert first.fingerprint == again.fingerprint and first.masked_tokens == again.masked_tokens > 0
    v1 = load_or_build_draft_vocab(first, len(llama3), 4, llama3.all_special_ids, tmp_path / "cache", warn=lambda m: None)
    path.write_text(json.dumps({"id": "a", "conversations": CONV[:3]}) + "\n")
    changed = load_tokenized(path, llama3, 256, tmp_path / "cache")
    assert changed.fingerprint != first.fingerprint
    v2 = load_or_build_draft_vocab(changed, len(llama3), 4, llama3.all_special_ids, tmp_path / "cache", warn=lambda m: None)
    def distinct(conv):
        t = tokenize_conversation(llama3, conv, 256)
        return len({i for i, m in zip(t.input_ids, t.loss_mask) if m})

    assert (v1.distinct, v2.distinct) == (distinct(CONV), distinct(CONV[:3]))  # rebuilt, not the stale one
    assert len(list((tmp_path / "cache" / "draft_vocab").glob("*.json"))) == 2


def test_a_bad_or_empty_unified_file_is_named(tmp_path, llama3):
    from eagle3kit.errors import UserError
    from eagle3kit.train.data import load_tokenized

    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "conversations": []}\n{"id": "b", "conversations": [{"from": "bot", "value": "x"}]}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl line 2: message 0 must have 'from' human, gpt or system"):
        load_tokenized(path, llama3, 256, tmp_path / "cache")
    path.write_text("\n  \n")
    with pytest.raises(UserError, match=r"bad\.jsonl: holds no conversation \(the file is empty\)"):
        load_tokenized(path, llama3, 256, tmp_path / "cache")


NO_THINK = ("{% if enable_thinking is defined and enable_thinking is false %}<|im_start|>system\n/no_think<|im_end|>\n"
            "{% endif %}{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_template_kwargs_render_as_servers_pass_them_and_key_the_cache():
    """``with_template_kwargs`` bakes the variables into the template: every rendering
    (masks, prompts, regenerated turns) equals the original template given them as
    ``chat_template_kwargs``, and the tokenizer's fingerprint changes with them."""
    from eagle3kit.train.data import tokenizer_fingerprint
    from eagle3kit.train.template import to_messages, with_template_kwargs

    plain = build_tokenizer(TEXTS, style="chatml", vocab_size=400)
    plain.chat_template = NO_THINK
    baked = build_tokenizer(TEXTS, style="chatml", vocab_size=400)
    baked.chat_template = NO_THINK
    with_template_kwargs(baked, {"enable_thinking": False})
    messages = to_messages(CONV[1:])
    for prefix, gen in [(messages, False), (messages[:1], True), (messages[:3], True)]:
        assert (baked.apply_chat_template(prefix, tokenize=False, add_generation_prompt=gen)
                == plain.apply_chat_template(prefix, tokenize=False, add_generation_prompt=gen, enable_thinking=False))
    t = tokenize_conversation(baked, CONV[1:], max_len=1000)
    assert baked.decode(t.input_ids).startswith("<|im_start|>system\n/no_think<|im_end|>\n<|im_start|>user\n")
    assert masked_pieces(baked, t) == ["Two plus two is four.<|im_end|>", "Three plus two is five.<|im_end|>"]
    assert not plain.decode(tokenize_conversation(plain, CONV[1:], max_len=1000).input_ids).startswith("<|im_start|>system")
    assert tokenizer_fingerprint(baked) != tokenizer_fingerprint(plain)
    assert with_template_kwargs(plain, {}) is plain and plain.chat_template == NO_THINK


def test_template_kwargs_of_every_json_kind_reach_the_template():
    from eagle3kit.train.template import parse_template_kwargs, with_template_kwargs

    kwargs = parse_template_kwargs('{"s": "a \\"q\\" \u00e9\\n\U0001f600", "n": 3, "f": 0.5, "l": [1, "x", null], '
                                   '"d": {"k": true}, "no": false}')
    shown = "{{ s }}|{{ n }}|{{ f }}|{{ l }}|{{ d['k'] }}|{{ no }}|{{ l[2] is none }}"
    plain = build_tokenizer(TEXTS, style="chatml", vocab_size=400)
    plain.chat_template = shown
    expected = plain.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, **kwargs)
    assert expected == 'a "q" \u00e9\n\U0001f600|3|0.5|[1, \'x\', None]|True|False|True'  # past U+FFFF too
    with_template_kwargs(plain, kwargs)
    assert plain.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == expected
    named = build_tokenizer(TEXTS, style="chatml", vocab_size=400)
    named.chat_template = {"default": shown, "tool_use": "{{ n }}"}
    with_template_kwargs(named, {"n": 7})
    assert named.chat_template["tool_use"].endswith("{{ n }}") and "{% set n = 7 %}" in named.chat_template["default"]


@pytest.mark.parametrize("text, message", [
    ("[1]", "--chat-template-kwargs: give a JSON object of template variables"),
    ("{enable", "--chat-template-kwargs: not JSON (Expecting property name enclosed in double quotes at character 1)"),
    ('{"a b": 1}', "--chat-template-kwargs: 'a b' is not a template variable name"),
])
def test_bad_template_kwargs_are_named(text, message):
    from eagle3kit.errors import UserError
    from eagle3kit.train.template import parse_template_kwargs

    with pytest.raises(UserError) as info:
        parse_template_kwargs(text)
    assert str(info.value).startswith(message)
