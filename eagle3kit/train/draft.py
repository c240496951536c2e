"""The EAGLE-3 draft network and its configuration.

::

    h0   = fc(cat(f_low, f_mid, f_high))                  3H_target -> H, no bias
    x    = cat(input_layernorm(embed(token)), hidden_norm(h))      width 2H, embedding first
    h'   = h + o_proj(attn(q_proj(x), k_proj(x), v_proj(x)))        residual on h
    h''  = h' + mlp(post_attention_layernorm(h'))                   -> next step's h
    logits = lm_head(norm(h''))                                     H -> draft vocabulary

The token embedding is the target's (frozen, never saved). Sizes, RMS epsilon and rope
settings come from the target's config, so positions the target serves (its
``max_position_embeddings``, its rope scaling) are positions the draft knows.

Attention is not computed here: :meth:`Eagle3Draft.layer` takes an ``attend`` function,
so the training-time test (:mod:`eagle3kit.train.ttt`) and speculative decoding
(:mod:`eagle3kit.eval`) each bring their own mask and cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURE = "LlamaForCausalLMEagle3"
#: The rope keys copied from the target config (legacy and transformers-5 spellings).
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor")


def text_config(config: Any) -> Any:
    """The language model's part of a target config (multimodal configs nest it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def unservable_aux_layers(aux: list[int], num_layers: int) -> str | None:
    """Why SGLang and vLLM could not serve a draft trained on hidden states ``aux`` of a
    ``num_layers``-layer target, or None: they capture the inputs of decoder layers
    1..N-1, each once, and join them in layer order."""
    if aux != sorted(set(aux)) or not all(0 < i < num_layers for i in aux):
        return (f"aux layers {aux}: SGLang and vLLM capture the inputs of decoder layers 1..{num_layers - 1} and join "
                "them in layer order, so give three increasing indices in that range")
    return None


def default_aux_layers(num_layers: int) -> list[int]:
    """HF ``output_hidden_states`` indices of the three fused features: low, middle, high.

    Index i is the input of decoder layer i (index 0 = the embeddings), which is what
    SGLang and vLLM capture on the target's side at serving time. The engines capture each
    layer once, so a repeated index could not be served: a target too shallow for these
    three to differ (fewer than 7 layers) gets three distinct ones spread over 1..N-1.
    """
    ids = [2, num_layers // 2, num_layers - 3]
    if len(set(ids)) < 3 and num_layers >= 4:
        ids = [1, num_layers // 2, num_layers - 1]
    return ids


@dataclass
class DraftConfig:
    """Everything that fixes the draft's shapes and positions. Saved as ``config.json``."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    vocab_size: int
    draft_vocab_size: int
    max_position_embeddings: int
    aux_layers: list[int]
    target_hidden_size: int
    target_num_layers: int
    rope: dict[str, Any] = field(default_factory=dict)
    hidden_act: str = "silu"
    torch_dtype: str = "bfloat16"
    target_model: str = ""

    @classmethod
    def from_target(cls, target_config: Any, draft_vocab_size: int, aux_layers: list[int] | None = None,
                    target_model: str = "") -> "DraftConfig":
        """The draft configuration for a target's ``transformers`` config."""
        c = text_config(target_config)
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        layers = c.num_hidden_layers
        aux = list(aux_layers) if aux_layers else default_aux_layers(layers)
        if len(aux) != 3 or not all(0 <= i <= layers for i in aux):
            raise ValueError(f"aux layers {aux}: need three hidden-state indices in 0..{layers}")
        if aux_layers and len(set(aux)) < 3:
            raise ValueError(f"aux layers {aux}: SGLang and vLLM capture each layer once, so the three must differ")
        raw = c.to_dict()
        rope = {k: raw[k] for k in ROPE_KEYS if raw.get(k) is not None}
        act = getattr(c, "hidden_act", "silu")
        return cls(
            hidden_size=c.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=c.intermediate_size,
            rms_norm_eps=getattr(c, "rms_norm_eps", 1e-6),
            vocab_size=c.vocab_size,
            draft_vocab_size=draft_vocab_size,
            max_position_embeddings=c.max_position_embeddings,
            aux_layers=aux,
            target_hidden_size=c.hidden_size,
            target_num_layers=layers,
            rope=rope,
            hidden_act=act if act in ("silu", "gelu", "gelu_pytorch_tanh", "relu") else "silu",
            target_model=target_model,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DraftConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def rotary_dim(self) -> int:
        """How many leading dimensions of each head are rotated: ``head_dim`` times the
        target's ``partial_rotary_factor`` (Phi-4-mini 0.75, GLM-4 0.5), as the engines do."""
        factor = self.rope.get("partial_rotary_factor")
        if factor is None and isinstance(self.rope.get("rope_parameters"), dict):
            factor = self.rope["rope_parameters"].get("partial_rotary_factor")
        return int(self.head_dim * float(factor)) if factor is not None else self.head_dim

    def rotary_config(self):
        """A ``LlamaConfig`` carrying only what the rotary embedding needs: frequencies for
        the rotated dimensions (``head_dim`` = :attr:`rotary_dim`, no partial factor, which
        ``LlamaRotaryEmbedding`` would not apply)."""
        from transformers import LlamaConfig

        rope = {k: v for k, v in self.rope.items() if k != "partial_rotary_factor"}
        if isinstance(rope.get("rope_parameters"), dict):
            rope["rope_parameters"] = {k: v for k, v in rope["rope_parameters"].items() if k != "partial_rotary_factor"}
        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.rotary_dim,
            max_position_embeddings=self.max_position_embeddings,
            **rope,
        )


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, c: DraftConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(2 * c.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, c: DraftConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.act = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu}.get(c.hidden_act, lambda x: F.gelu(x, approximate="tanh"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    """The one decoder layer, whose attention reads the embedding and the hidden state."""

    def __init__(self, c: DraftConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.mlp = MLP(c)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: (B, heads, T, D); ``cos``/``sin``: (B, T, R), R <= D: the first R dimensions
    are rotated (neox style, halves), the rest pass unchanged (partial rotary)."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos.unsqueeze(1) + rotate_half(rot) * sin.unsqueeze(1), rest), dim=-1)


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Eagle3Draft(nn.Module):
    """The trainable draft: ``fc``, ``midlayer``, ``norm``, ``lm_head``; ``d2t``/``t2d`` buffers."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.config = config
        self.fc = nn.Linear(3 * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = MidLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        # Not a registered submodule: DeepSpeed's bf16 cast must not round its fp32
        # frequencies (the serving engines compute them in fp32).
        self.__dict__["rotary"] = LlamaRotaryEmbedding(config.rotary_config())

    def set_vocab(self, draft_ids: torch.Tensor) -> None:
        """Install the draft vocabulary: ``draft_ids`` are target ids sorted ascending."""
        draft_ids = draft_ids.to(torch.long).cpu()
        if draft_ids.numel() != self.config.draft_vocab_size:
            raise ValueError(f"{draft_ids.numel()} draft ids for a draft vocabulary of {self.config.draft_vocab_size}")
        self.d2t.copy_(draft_ids - torch.arange(draft_ids.numel()))
        t2d = torch.zeros(self.config.vocab_size, dtype=torch.bool)
        t2d[draft_ids] = True
        self.t2d.copy_(t2d)

    @property
    def draft_ids(self) -> torch.Tensor:
        """Target id of each draft-vocabulary entry (``arange + d2t``)."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def rope(self, position_ids: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, T, rotary_dim) for ``position_ids`` (B, T), in ``like``'s dtype."""
        rotary = self.rotary
        if rotary.inv_freq.device != like.device:
            rotary.to(like.device)  # stays fp32
        return rotary(like, position_ids)

    def layer(self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              attend: Attend, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """One pass of the decoder layer. ``embeds``, ``hidden``: (B, T, H) -> (B, T, H).

        ``outputs``: indices along T of the positions whose output is wanted (then the
        result is (B, len(outputs), H)). Every position still gives its key and value;
        only those positions run the query, the attention, ``o_proj`` and the MLP."""
        m = self.midlayer
        a = m.self_attn
        b, t, _ = hidden.shape
        x = torch.cat((m.input_layernorm(embeds), m.hidden_norm(hidden)), dim=-1)
        k = a.k_proj(x).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(b, t, a.kv_heads, a.head_dim).transpose(1, 2)
        k = apply_rope(k, cos, sin)
        if outputs is not None:
            x, hidden = x.index_select(1, outputs), hidden.index_select(1, outputs)
            cos, sin = cos.index_select(1, outputs), sin.index_select(1, outputs)
        n = x.shape[1]
        q = apply_rope(a.q_proj(x).view(b, n, a.heads, a.head_dim).transpose(1, 2), cos, sin)
        o = attend(q, k, v)  # (B, heads, n, D)
        h = hidden + a.o_proj(o.transpose(1, 2).reshape(b, n, a.heads * a.head_dim))
        return h + m.mlp(m.post_attention_layernorm(h))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a servable draft holds (no embeddings, no target weight)."""
        return dict(self.state_dict())
