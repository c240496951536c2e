"""A tiny target model made on the spot: a BPE tokenizer with a chat template, and a small
Llama trained briefly on conversations so that its predictions are not noise.

Used by the README's main job (``eagle3kit demo``) and by the tests: everything runs on a
CPU in about a minute, with nothing downloaded. Saved with ``save_pretrained`` and loaded
back through the real ``from_pretrained`` path.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Iterable, Sequence

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(texts: Iterable[str], style: str = "llama3", vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on ``texts``, with a Llama-3 or ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = LLAMA3_SPECIALS if style == "llama3" else CHATML_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if style == "llama3":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                       pad_token="<|end_of_text|>")
        fast.chat_template = LLAMA3_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        fast.chat_template = CHATML_TEMPLATE
    return fast


def conversation_texts(conversations: Sequence[Sequence[dict]]) -> list[str]:
    return [m["value"] for c in conversations for m in c]


def tiny_llama_config(vocab_size: int, layers: int = 6, hidden: int = 128, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_qwen3_config(vocab_size: int, layers: int = 6, hidden: int = 128, **overrides):
    """A Qwen3-shaped config: heads wider than ``hidden / heads``, q/k norms, tied embeddings."""
    from transformers import Qwen3Config

    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=2 * hidden // 4, max_position_embeddings=8192,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


ARCHITECTURES = {"llama": ("LlamaForCausalLM", tiny_llama_config), "qwen3": ("Qwen3ForCausalLM", tiny_qwen3_config)}


def build_tiny_target(out_dir: str | Path, conversations: Sequence[Sequence[dict]], *, style: str = "llama3",
                      steps: int = 120, layers: int = 6, hidden: int = 128, seed: int = 0, batch_size: int = 16,
                      lr: float = 3e-3, vocab_size: int = 1024, progress=None, device: str = "cpu",
                      architecture: str = "llama") -> Path:
    """Train a tokenizer and a small model (``architecture``: llama or qwen3) on
    ``conversations`` (unified format); save both to ``out_dir``. Returns ``out_dir``.
    ``progress(step, loss)`` is called as it trains."""
    import torch
    import transformers

    from eagle3kit.train.template import to_messages

    torch.manual_seed(seed)
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(conversation_texts(conversations), style=style, vocab_size=vocab_size)
    rows = [tokenizer.apply_chat_template(to_messages(c), tokenize=True, add_generation_prompt=False) for c in conversations]
    rows = [r["input_ids"] if isinstance(r, dict) or hasattr(r, "keys") else r for r in rows]
    class_name, make_config = ARCHITECTURES[architecture]
    model = getattr(transformers, class_name)(make_config(len(tokenizer), layers=layers, hidden=hidden)).to(device)
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for step in range(steps):
        batch = [rows[rng.randrange(len(rows))] for _ in range(batch_size)]
        width = max(len(r) for r in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
        ids, labels = ids.to(device), labels.to(device)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step, float(loss.detach()))
    model.eval().to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
