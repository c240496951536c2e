"""Correctness of the GPU path, run on the accelerator machine (CI has no GPU).

The flex-attention TTT (compiled, block-sparse, log-sum-exp merge) must give the same
loss and gradients as the eager reference that the CPU tests pin against a plain
implementation; checked here in fp32 and bf16 on random inputs, with and without
activation checkpointing. The flex run skips dead positions (``live_only``), the eager
one computes every position, so the check also covers the live-position bookkeeping.
Prints one JSON line per case and exits 1 on a mismatch. Without CUDA it is a dry run
of this script (fp32, forward only: uncompiled flex attention has no CPU backward).
Then the target side: packed features through the flex kernel against each tiny
target's own eager attention, for sliding windows, attention sinks and soft-capping.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eagle3kit.train.attention import PackedMask, doc_ids_from_positions  # noqa: E402
from eagle3kit.train.draft import DraftConfig, Eagle3Draft  # noqa: E402
from eagle3kit.train.ttt import TargetOutputs, ttt_loss  # noqa: E402


def case(dtype: torch.dtype, checkpoint: bool, dev: torch.device, lengths=(300, 129, 451, 144)) -> dict:
    torch.manual_seed(0)
    backward = dev.type == "cuda"
    c = DraftConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=32, intermediate_size=512,
                    rms_norm_eps=1e-6, vocab_size=1000, draft_vocab_size=300, max_position_embeddings=4096,
                    aux_layers=[1, 2, 3], target_hidden_size=256, target_num_layers=4, rope={"rope_theta": 10000.0})
    draft = Eagle3Draft(c).to(dev, dtype)
    draft.set_vocab(torch.arange(0, 900, 3))
    pos = torch.cat([torch.arange(n) for n in lengths]).to(dev)
    doc = doc_ids_from_positions(pos)
    t = pos.numel()
    g = torch.Generator(device=dev).manual_seed(1)
    tgt = TargetOutputs(torch.randn(1, t, 768, device=dev, generator=g, dtype=dtype),
                        torch.randn(1, t, 256, device=dev, generator=g, dtype=dtype),
                        torch.softmax(3 * torch.randn(t, 300, device=dev, generator=g), -1).to(dtype),
                        torch.rand(t, device=dev, generator=g) > 0.1)
    # answers in alternate 64-token spans, with holes: later steps skip the prompts
    loss_mask = (torch.rand(t, device=dev, generator=g) > 0.3) & ((pos // 64) % 2 == 1)
    results = {}
    for backend in ("eager", "flex"):  # eager runs every step on every position; flex on the live ones
        draft.zero_grad()
        with torch.set_grad_enabled(backward):
            loss, stats = ttt_loss(draft, tgt, pos, doc, loss_mask, PackedMask.build(doc, backend), ttt_length=5,
                                   checkpoint_steps=checkpoint and backend == "flex", live_only=backend == "flex")
        if backward:
            loss.backward()
        grads = {n: p.grad.float().clone() for n, p in draft.named_parameters()} if backward else {}
        results[backend] = (float(loss), grads)
    (l_e, g_e), (l_f, g_f) = results["eager"], results["flex"]
    rel = max((float((g_f[n] - g_e[n]).norm() / (g_e[n].norm() + 1e-12)) for n in g_e), default=0.0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    ok = abs(l_f - l_e) <= tol * max(1.0, abs(l_e)) and rel <= tol * 3
    return {"device": dev.type, "dtype": str(dtype), "checkpointing": checkpoint, "loss_eager": l_e,
            "loss_flex": l_f, "max_rel_grad_diff": rel if backward else None, "ok": ok}


def target_case(name: str, dev: torch.device) -> dict:
    """The target's packed features through eagle3kit's flex kernel (compiled on GPU) equal
    those of its own eager attention on each conversation alone: sliding windows (one
    mask per kind of layer), attention sinks (gpt-oss), soft-capping (Gemma 2). fp32."""
    import transformers

    from eagle3kit.train.attention import register_target_flex
    from eagle3kit.train.target import FrozenTarget

    small = dict(vocab_size=300, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, sliding_window=160)
    config = {
        "qwen3": lambda: transformers.Qwen3Config(**small, intermediate_size=64, use_sliding_window=True, max_window_layers=2),
        "gemma2": lambda: transformers.Gemma2Config(**small, intermediate_size=64, attn_logit_softcapping=0.05),
        "gptoss": lambda: transformers.GptOssConfig(**small, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
    }[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config).to(dev).eval()
    with torch.no_grad():
        for layer in reference.model.layers:
            if getattr(layer.self_attn, "sinks", None) is not None:
                layer.self_attn.sinks.normal_(0, 2)
    flexed = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config)).to(dev).eval()  # own config
    flexed.load_state_dict(reference.state_dict())
    impl = register_target_flex()
    if hasattr(flexed, "set_attn_implementation"):
        flexed.set_attn_implementation(impl)
    else:
        flexed.config._attn_implementation = impl
    lengths = (300, 129, 451, 144)
    pos = torch.cat([torch.arange(n) for n in lengths]).to(dev)
    doc = doc_ids_from_positions(pos)
    ids = torch.randint(0, 300, (pos.numel(),), device=dev, generator=torch.Generator(device=dev).manual_seed(2))
    target = FrozenTarget(flexed, [1, 2, 3], torch.arange(0, 300, 2))
    with torch.no_grad():
        packed = target.run(ids, pos, doc, PackedMask.build(doc, "flex"))
        err, start = 0.0, 0
        for n in lengths:
            out = reference(input_ids=ids[None, start : start + n], output_hidden_states=True)
            want = torch.cat([out.hidden_states[i] for i in (1, 2, 3)], -1)
            err = max(err, float((packed.aux[:, start : start + n] - want).abs().max()))
            start += n
    return {"device": dev.type, "target": name, "windows": {str(k): v for k, v in target.windows.items()},
            "max_abs_feature_diff": err, "ok": err < 1e-3}


def main() -> int:
    failed = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for dtype in (torch.float32, torch.bfloat16) if dev.type == "cuda" else (torch.float32,):
        for checkpoint in (False, True) if dev.type == "cuda" else (False,):
            r = case(dtype, checkpoint, dev)
            print(json.dumps(r), flush=True)
            failed |= not r["ok"]
    for name in ("qwen3", "gemma2", "gptoss"):
        r = target_case(name, dev)
        print(json.dumps(r), flush=True)
        failed |= not r["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
