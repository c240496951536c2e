"""Starting a run from an existing draft (``eagle3kit train --init-draft``): one eagle3kit
trained, or a published one (SGLang/EAGLE or speculators layout, a folder or a Hub id),
fine-tuned on new data with a fresh optimizer.

The draft keeps its own shapes and vocabulary (its lm_head rows are its ``d2t``); it must
have been trained for this target (same hidden size for the fused features, same
vocabulary) and on the same feature layers. Positions follow the target, as for a new
draft: a published draft that says ``max_position_embeddings: 2048`` is given the
target's limit and rope settings, with a warning where the rope differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from eagle3kit.errors import UserError
from eagle3kit.train.draft import DraftConfig, Eagle3Draft, default_aux_layers, text_config

#: Sizes the run takes from the starting draft rather than from the target.
OWN_SIZES = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
             "rms_norm_eps", "hidden_act", "draft_vocab_size")


def continued_config(start: DraftConfig, target_config: Any, aux_layers: list[int] | None, target_model: str,
                     source: str, warn: Callable[[str], None]) -> DraftConfig:
    """The run's :class:`DraftConfig` for a draft ``start`` (read from ``source``) on a target.

    Raises :class:`UserError` when the draft cannot work with this target."""
    from eagle3kit.export.folder import _rope_of

    c = text_config(target_config)
    if start.vocab_size != c.vocab_size:
        raise UserError(f"--init-draft {source}: trained for a vocabulary of {start.vocab_size:,} tokens, the target "
                        f"has {c.vocab_size:,}: it is a draft for another model")
    if start.target_hidden_size != c.hidden_size:
        raise UserError(f"--init-draft {source}: its fc takes features of width {start.target_hidden_size:,} "
                        f"(3 x {start.target_hidden_size:,}), the target's hidden size is {c.hidden_size:,}: "
                        "it is a draft for another model")
    if start.hidden_size != c.hidden_size:
        raise UserError(f"--init-draft {source}: hidden size {start.hidden_size:,}, the target's is {c.hidden_size:,}; "
                        "the draft reads the target's token embeddings, so they must agree")
    aux = list(start.aux_layers) or None
    if aux and aux_layers and list(aux_layers) != aux:
        raise UserError(f"--init-draft {source} was trained on hidden states {aux}, not --aux-layers "
                        f"{','.join(map(str, aux_layers))}: its fc expects those layers; drop --aux-layers")
    if not aux:
        aux = list(aux_layers) if aux_layers else default_aux_layers(c.num_hidden_layers)
        if not aux_layers:
            warn(f"--init-draft {source} does not say which hidden states it was trained on; using {aux} "
                 "(EAGLE-3's default); give --aux-layers if it was trained on others")
    try:
        fresh = DraftConfig.from_target(target_config, start.draft_vocab_size, aux, target_model=target_model)
    except ValueError as error:
        raise UserError(f"--init-draft {source}: {error}") from None
    if _rope_of(start.rope) != _rope_of(fresh.rope):
        warn(f"--init-draft {source} was trained with rope {_rope_of(start.rope)[:2]}, the target uses "
             f"{_rope_of(fresh.rope)[:2]} (theta, scaling): training continues with the target's, which is what "
             "the engines serve it with")
    if start.max_position_embeddings < fresh.max_position_embeddings:
        warn(f"--init-draft {source} says max_position_embeddings {start.max_position_embeddings:,}; the run uses "
             f"the target's {fresh.max_position_embeddings:,} (a short limit collapses acceptance on long prompts)")
    return dataclasses.replace(fresh, **{k: getattr(start, k) for k in OWN_SIZES})


def continue_from(start: Eagle3Draft, target_config: Any, aux_layers: list[int] | None, target_model: str,
                  source: str, warn: Callable[[str], None]) -> Eagle3Draft:
    """The draft ``start`` (read by :func:`~eagle3kit.checkpoint.load_draft` from ``source``)
    rebuilt with the run's configuration, its weights and vocabulary loaded (fp32, CPU)."""
    config = continued_config(start.config, target_config, aux_layers, target_model, source, warn)
    draft = Eagle3Draft(config)
    draft.load_state_dict(start.state_dict())
    return draft
