"""Chat templates: unified conversations as chat messages, the target's own template
(required; rendered with ``--chat-template-kwargs`` where given), and the tokens that end
an answer."""

from __future__ import annotations

import json
from typing import Any, Sequence

from eagle3kit.errors import UserError

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
class TemplateError(UserError):
    """The chat template renders a conversation in a way the mask cannot be derived from."""


#: Tokens that end an assistant turn in common chat templates (used when they exist).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                      "<|eom_id|>", "</s>")


def end_of_turn_ids(tokenizer, model=None) -> list[int]:
    """The token ids that end an answer: the tokenizer's and the model's generation eos,
    and the end-of-turn markers of common templates that this vocabulary has."""
    ids: list[int] = []

    def add(value):
        if isinstance(value, int):
            if value not in ids:
                ids.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)

    add(tokenizer.eos_token_id)
    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            add(vocab[token])
    return ids


def to_messages(conversation: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Unified ``{"from", "value"}`` entries -> chat-template ``{"role", "content"}`` messages."""
    return [{"role": ROLES[m["from"]], "content": m["value"]} for m in conversation]


def require_chat_template(tokenizer, name: str | None = None) -> None:
    """Raise :class:`TemplateError` for a tokenizer without a chat template (a base model's)."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = name or getattr(tokenizer, "name_or_path", "")
        raise TemplateError(f"the tokenizer of {name!r} has no chat template; use an instruct/chat model, or set "
                            "chat_template in its tokenizer_config.json")


def _jinja_literal(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # jinja decodes escapes like Python: characters past U+FFFF go as they are
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_jinja_literal(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_jinja_literal(v, where)}" for k, v in value.items()) + "}"
    raise UserError(f"{where}: cannot pass {type(value).__name__} values to a chat template")


def parse_template_kwargs(text: str | None, where: str = "--chat-template-kwargs") -> dict[str, Any]:
    """``'{"enable_thinking": false}'`` -> a dict of chat-template variables (as SGLang and
    vLLM take ``chat_template_kwargs``), with a clear error for anything else."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not JSON ({error.msg} at character {error.pos}); give an object such as "
                        "'{\"enable_thinking\": false}'") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: give a JSON object of template variables, such as '{{\"enable_thinking\": false}}'")
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise UserError(f"{where}: {key!r} is not a template variable name")
        _jinja_literal(value, where)
    return kwargs


def with_template_kwargs(tokenizer, kwargs: dict[str, Any] | None):
    """Make the chat template render as if ``kwargs`` were passed on every call (Qwen 3's
    ``enable_thinking``, for example): each becomes a ``{% set %}`` at the template's head.

    Every rendering then agrees (the loss mask's prefixes, evaluation prompts, regenerated
    turns), and the tokenizer's fingerprint, which holds the template, keys the caches."""
    if not kwargs:
        return tokenizer
    head = "".join(f"{{% set {key} = {_jinja_literal(value, '--chat-template-kwargs')} %}}"
                   for key, value in kwargs.items())
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates
        tokenizer.chat_template = {name: head + text for name, text in template.items()}
    else:
        tokenizer.chat_template = head + template
    return tokenizer


def render(tokenizer, messages, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
