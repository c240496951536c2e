"""Small helpers shared by the test modules."""

from __future__ import annotations

from eagle3kit.ui import UI


class RecordingUI(UI):
    """A UI that keeps what it was told, for assertions."""

    def __init__(self):
        self.logs, self.warnings = [], []

    def log(self, message):
        self.logs.append(message)

    def warn(self, message):
        self.warnings.append(message)


def H(value):
    return {"from": "human", "value": value}


def G(value):
    return {"from": "gpt", "value": value}


def S(value):
    return {"from": "system", "value": value}


def windowed_configs():
    """Tiny random target configs whose attention is not plain causal: {name: make_config}."""
    import transformers

    small = dict(vocab_size=300, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    return {
        # layers 2, 3 slide a window of 5 (Qwen's use_sliding_window / max_window_layers)
        "qwen3": lambda: transformers.Qwen3Config(**small, intermediate_size=64, head_dim=16, use_sliding_window=True,
                                                  sliding_window=5, max_window_layers=2),
        # one window on every layer, no layer_types (Mistral v0.1, Phi-3)
        "mistral": lambda: transformers.MistralConfig(**small, intermediate_size=64, sliding_window=6),
        # alternating windows, attention and final logit soft-capping
        "gemma2": lambda: transformers.Gemma2Config(**small, intermediate_size=64, head_dim=8, sliding_window=4,
                                                    attn_logit_softcapping=0.01, final_logit_softcapping=0.05),
        # alternating windows, attention sinks, mixture of experts, no sdpa
        "gptoss": lambda: transformers.GptOssConfig(**small, intermediate_size=32, head_dim=8, sliding_window=4,
                                                    num_local_experts=4, num_experts_per_tok=2),
    }
