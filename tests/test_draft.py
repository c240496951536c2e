"""The draft model's own pieces, against plain references of what the serving engines compute."""

from __future__ import annotations

import json

import pytest
import torch

from eagle3kit.checkpoint import load_draft, save_draft
from eagle3kit.train.draft import DraftConfig, Eagle3Draft, apply_rope, default_aux_layers


def engine_rope(x: torch.Tensor, positions: torch.Tensor, theta: float, rotary_dim: int) -> torch.Tensor:
    """vLLM's / SGLang's neox-style rotary embedding, written plainly: the first
    ``rotary_dim`` dimensions rotate in halves with frequencies theta^(-2i/rotary_dim), the
    rest pass through."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = positions.to(torch.float64)[:, None] * inv[None]
    cos, sin = angles.cos(), angles.sin()
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


@pytest.mark.parametrize("factor", [None, 0.75, 0.5])
def test_rotary_as_the_saved_config_declares_it(tmp_path, factor):
    """A target with ``partial_rotary_factor`` (Phi-4-mini 0.75, GLM-4 0.5): the draft
    rotates exactly the dimensions its config.json tells an engine to rotate
    (int(factor * head_dim)), in training and after reloading."""
    from transformers import Phi3Config

    extra = {} if factor is None else {"partial_rotary_factor": factor}
    target = Phi3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                        num_hidden_layers=6, vocab_size=100, max_position_embeddings=512, rope_theta=5000.0,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    draft = Eagle3Draft(DraftConfig.from_target(target, 20))
    draft.set_vocab(torch.arange(20) * 5)
    saved = json.loads((save_draft(draft, tmp_path / "draft") / "config.json").read_text())
    rotary_dim = int(saved.get("partial_rotary_factor", 1.0) * saved["head_dim"])
    assert rotary_dim == {None: 16, 0.75: 12, 0.5: 8}[factor]

    positions = torch.tensor([0, 1, 7, 100, 511])
    x = torch.randn(1, 4, len(positions), 16, dtype=torch.float64)
    expected = engine_rope(x, positions, 5000.0, rotary_dim)
    for model in (draft, load_draft(tmp_path / "draft", dtype=torch.float64)):
        cos, sin = model.rope(positions[None], x)
        torch.testing.assert_close(apply_rope(x, cos, sin), expected, rtol=0, atol=1e-4)  # frequencies in fp32, as served


def test_default_feature_layers_are_three_distinct_ones_the_engines_capture():
    """EAGLE-3's [2, N/2, N-3], and for targets too shallow for those to differ, three
    distinct indices in 1..N-1 (SGLang and vLLM capture each layer once); repeated
    --aux-layers are refused."""
    from transformers import LlamaConfig

    assert default_aux_layers(32) == [2, 16, 29] and default_aux_layers(7) == [2, 3, 4]
    for n in range(4, 80):
        ids = default_aux_layers(n)
        assert len(set(ids)) == 3 and all(0 < i < n for i in ids), n
    assert default_aux_layers(6) == [1, 3, 5] and default_aux_layers(4) == [1, 2, 3]
    target = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=6, intermediate_size=64, vocab_size=50)
    with pytest.raises(ValueError, match="capture each layer once"):
        DraftConfig.from_target(target, 10, [2, 3, 3])
    from eagle3kit.train.draft import unservable_aux_layers

    for unservable in ([5, 3, 1], [0, 3, 5], [1, 3, 6]):  # joined in another order; the embeddings; the last output
        assert unservable_aux_layers(unservable, 6) == (
            f"aux layers {unservable}: SGLang and vLLM capture the inputs of decoder layers 1..5 and join them in "
            "layer order, so give three increasing indices in that range")
    assert unservable_aux_layers([1, 2, 5], 6) is None
    assert all(unservable_aux_layers(default_aux_layers(n), n) is None for n in range(4, 80))
