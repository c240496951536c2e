"""The frozen target model: fused features from three layers, and its next-token
distribution restricted to the draft vocabulary.

Loaded with ``AutoModelForCausalLM.from_pretrained``, frozen, in bf16 on GPU, outside the
DeepSpeed engine. Features are captured with hooks on the decoder layers (the input of
layer i is HF ``hidden_states[i]``), so the other layers' outputs are never kept. The
lm_head runs in row chunks: full-vocabulary logits exist only for one chunk at a time,
for the top-1 check, and only the draft-vocabulary columns are kept (softmaxed). Given
the loss mask, it runs only on the positions that can be labels (the tokens before an
answer token; :func:`eagle3kit.train.ttt.label_positions`): prompts cost no lm_head.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from eagle3kit.errors import UserError, first_line
from eagle3kit.hub import hub_kwargs, is_hub_id, unreachable_note
from eagle3kit.train.attention import (TARGET_FLEX, PackedMask, dense_doc_causal_mask, flex_block_mask,
                                       register_target_flex)
from eagle3kit.train.draft import text_config
from eagle3kit.train.ttt import TargetOutputs, label_positions


def _load_error(what: str, path: str, error: Exception) -> UserError:
    """A clear message for a target (or its tokenizer) that cannot be loaded from ``path``."""
    local = Path(path).expanduser()
    if local.is_file():
        reason = "it is a file, not a folder"
    elif not local.exists() and not is_hub_id(path, legacy=True):  # ./x, /x, ~/x, a/b/c
        reason = "no such folder"
    elif not local.exists() and "/" not in path:  # a mistyped folder, or a legacy Hub name (gpt2)
        reason = f"no such folder here, and as a Hugging Face Hub name: {first_line(error).rstrip('.')}"
    else:
        reason = first_line(error).rstrip(".")
    return UserError(f"cannot load {what} {path!r}: {reason}.{unreachable_note(path)} Give a local folder with "
                     "config.json, the tokenizer and weights, or a Hub id (set HF_TOKEN for gated models; "
                     "HF_HUB_OFFLINE=1 uses the local cache only).")


def damaged_weights(error: BaseException) -> bool:
    """Whether loading failed on a weights file that is cut short or damaged."""
    import pickle

    names = {kind.__name__ for kind in type(error).__mro__}
    return ("SafetensorError" in names or isinstance(error, pickle.UnpicklingError)
            or (isinstance(error, RuntimeError) and "PytorchStreamReader" in str(error)))


def load_tokenizer(path: str, chat: bool = True, template_kwargs: dict[str, Any] | None = None):
    """The target's tokenizer (``AutoTokenizer.from_pretrained``), with a clear error;
    ``chat``: it must have a chat template (every command renders conversations with it),
    rendered with ``template_kwargs`` (:func:`eagle3kit.train.data.with_template_kwargs`)."""
    from transformers import AutoTokenizer

    from eagle3kit.train.template import require_chat_template, with_template_kwargs

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs(path))
    except (OSError, ValueError) as error:
        raise _load_error("the tokenizer of", path, error) from None
    if chat:
        require_chat_template(tokenizer, path)
        with_template_kwargs(tokenizer, template_kwargs)
    return tokenizer


def load_target_model(path: str, *, device: torch.device, dtype: torch.dtype, attn_implementation: str | None = None,
                      tp_mesh=None):
    """``from_pretrained`` with a clear error when the model cannot be found or read.

    ``tp_mesh``: split the model over the mesh's ``"tp"`` ranks with transformers' tensor
    parallelism (:mod:`eagle3kit.train.target_parallel`)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, **hub_kwargs(path)}
    if attn_implementation == TARGET_FLEX:
        register_target_flex()
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if tp_mesh is not None:
        from eagle3kit.train.target_parallel import split_kwargs

        kwargs.update(split_kwargs(tp_mesh))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            kwargs["torch_dtype"] = kwargs.pop("dtype")
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except ValueError as error:  # a model without sdpa (gpt-oss): its own eager attention
            if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(error):
                raise
            kwargs["attn_implementation"] = "eager"
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as error:  # noqa: BLE001 - sorted below: what a user can fix is said, the rest raised
        if damaged_weights(error):
            raise UserError(f"cannot load the target model {path!r}: its weights cannot be read ({first_line(error)}); "
                            "a file is incomplete or damaged (an interrupted download or copy): fetch it "
                            "again") from None
        if not isinstance(error, (OSError, ValueError)):
            raise
        if tp_mesh is not None and "tp_plan" in str(error):
            raise UserError(f"cannot split the target {path!r} with --target-tp: {first_line(error)}") from None
        raise _load_error("the target model", path, error) from None
    if tp_mesh is None:
        model.to(device)
    else:
        from eagle3kit.train.target_parallel import check_split

        check_split(model, tp_mesh)
    model.eval()
    model.requires_grad_(False)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise UserError(f"{type(model).__name__}: cannot find its decoder layers (model.model.layers)")
    return layers


@torch.no_grad()
def draft_head_from_target(model, draft_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where the draft's output head starts: the target's lm_head rows of the draft
    vocabulary, and the per-channel scale of its final norm as the norm acts (``weight``
    for Llama's RMS norm, ``1 + weight`` for Gemma's), read off by normalising a constant
    vector; ``None`` for a norm with a bias (not an RMS norm), which the draft's cannot copy."""
    weight = model.get_output_embeddings().weight.detach()
    if hasattr(weight, "full_tensor"):  # split over a tensor-parallel group: gather it
        weight = weight.full_tensor()
    rows = weight[draft_ids.to(weight.device)].float().cpu()
    norm = getattr(model.get_decoder(), "norm", None)
    weight = getattr(norm, "weight", None)
    if norm is None or weight is None or getattr(norm, "bias", None) is not None:
        return rows, None
    x = torch.full((1, weight.shape[-1]), 1e3, dtype=weight.dtype, device=weight.device)  # x / rms(x) = 1 (eps negligible)
    return rows, norm(x)[0].float().cpu()


def attention_windows(config) -> dict[str | None, int | None]:
    """The sliding window of each kind of attention layer of a target (``None``: none).

    ``{None: w}``: every layer is alike (Llama: no window; Mistral v0.1, Phi-3: window w
    on every layer). Otherwise keyed by the config's ``layer_types`` (gpt-oss, Gemma 2/3,
    Qwen 2/3 with ``use_sliding_window``), whose models take one mask per kind. Layers of
    another kind (linear or chunked attention, sparse indexers) cannot be packed this
    way: a clear error, not silently wrong features."""
    c = text_config(config)
    window = getattr(c, "sliding_window", None)
    if getattr(c, "use_sliding_window", True) is False:
        window = None
    if isinstance(window, int) and window <= 0:
        window = None
    types = getattr(c, "layer_types", None)
    if not types:
        return {None: window}
    kinds: dict[str | None, int | None] = {}
    for kind in sorted(set(types)):
        if kind == "full_attention":
            kinds[kind] = None
        elif kind == "sliding_attention":
            kinds[kind] = window
        else:
            raise UserError(f"the target has {kind!r} layers: packed training supports full and sliding-window "
                            "attention only (targets like Llama, Qwen, Mistral, Gemma, gpt-oss)")
    return kinds


def position_dependent_rope(config: Any) -> tuple[str, int] | None:
    """``(rope type, original length)`` for a target whose rope frequencies depend on the
    longest position of the input (dynamic NTK; longrope, as Phi-3-128k): transformers takes
    that maximum over a whole packed row. None for the others."""
    c = text_config(config)
    params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    kind = params.get("rope_type") or params.get("type") if isinstance(params, dict) else None
    if kind not in ("dynamic", "longrope"):
        return None
    original = (params.get("original_max_position_embeddings") or getattr(c, "original_max_position_embeddings", None)
                or c.max_position_embeddings)
    return kind, int(original)


class FrozenTarget:
    """Runs the target on packed rows and returns :class:`TargetOutputs`."""

    def __init__(self, model, aux_layers: list[int], draft_ids: torch.Tensor, logits_chunk: int = 2048) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.num_layers = len(self.layers)
        self.aux_layers = list(aux_layers)
        if any(not 0 <= i <= self.num_layers for i in self.aux_layers):  # callers check first, with a message
            raise ValueError(f"hidden-state indices {self.aux_layers} of a target with {self.num_layers} layers")
        self.logits_chunk = logits_chunk
        self.device = next(model.parameters()).device
        self.embed_tokens = model.get_input_embeddings()
        self.lm_head = model.get_output_embeddings()
        self.attn_implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        c = text_config(model.config)
        self.final_softcap = getattr(c, "final_logit_softcapping", None)  # Gemma 2: c tanh(z / c)
        # what some output heads do to the logits: Granite divides by logits_scaling, Cohere multiplies by logit_scale
        self.logit_multiplier = (1.0 / float(getattr(c, "logits_scaling", None) or 1.0)) * float(getattr(c, "logit_scale", None) or 1.0)
        self.set_draft_vocab(draft_ids)

    @cached_property
    def windows(self) -> dict[str | None, int | None]:
        """:func:`attention_windows` of the target (read when a packed mask is first made,
        so that decoding, which uses the model's own masks, works for any target)."""
        return attention_windows(self.model.config)

    def set_draft_vocab(self, draft_ids: torch.Tensor) -> None:
        vocab = self.lm_head.weight.shape[0]
        self.draft_ids = draft_ids.to(self.device, torch.long)
        self.t2d = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.t2d[self.draft_ids] = True

    def attention_mask(self, doc_ids: torch.Tensor, packed: PackedMask | None = None):
        """The document-causal mask of a packed row in the form the target's attention
        takes: one mask, or one per kind of layer where some layers slide a window shorter
        than the longest conversation (``{"full_attention": ..., "sliding_attention": ...}``;
        a longer window changes nothing, and the packed mask serves every layer)."""
        windows = dict(self.windows)
        if any(w is not None for w in windows.values()):
            longest = int(torch.bincount(doc_ids).max())  # the farthest a query looks back is longest - 1
            windows = {kind: (w if w is not None and w < longest else None) for kind, w in windows.items()}
        masks: dict[int | None, Any] = {}
        for w in set(windows.values()):
            masks[w] = self._mask(doc_ids, packed if w is None else None, w)
        if None in windows:  # one layout for every layer
            return masks[windows[None]]
        if len(masks) == 1:
            return next(iter(masks.values()))
        return {kind: masks[w] for kind, w in windows.items()}

    def _mask(self, doc_ids: torch.Tensor, packed: PackedMask | None, window: int | None):
        impl = self.attn_implementation
        if impl in ("flex_attention", TARGET_FLEX):
            if packed is not None and packed.block is not None:
                return packed.block
            return flex_block_mask(doc_ids, window=window)
        if packed is not None and packed.dense is not None:
            allowed = packed.dense
        else:
            allowed = dense_doc_causal_mask(doc_ids, window)
        return self.dense_mask(allowed)

    def dense_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """A (queries, keys) bool matrix as the target's sdpa or eager attention takes it:
        (1, 1, Q, K), bool for sdpa, additive (0 or the dtype's minimum) for eager."""
        allowed = allowed[None, None]
        if self.attn_implementation == "sdpa":
            return allowed
        dtype = self.embed_tokens.weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)

    @contextmanager
    def capturing(self):
        """While open, each forward pass of the model leaves the hidden states the fused
        features are made of in the yielded dict (read them with :meth:`fused`). Index i
        is the input of decoder layer i; the last index is the last layer's output, before
        the final norm."""
        captured: dict[int, torch.Tensor] = {}

        def grab_input(index):
            def hook(module, args, kwargs):
                captured[index] = args[0] if args else kwargs["hidden_states"]
            return hook

        def grab_output(index):
            def hook(module, args, kwargs, output):
                captured[index] = output[0] if isinstance(output, tuple) else output
            return hook

        hooks = []
        for index in set(self.aux_layers):
            if index < self.num_layers:
                hooks.append(self.layers[index].register_forward_pre_hook(grab_input(index), with_kwargs=True))
            else:
                hooks.append(self.layers[-1].register_forward_hook(grab_output(index), with_kwargs=True))
        try:
            yield captured
        finally:
            for h in hooks:
                h.remove()

    def fused(self, captured: dict[int, torch.Tensor]) -> torch.Tensor:
        """The fused features (1, T, 3H) from what :meth:`capturing` caught."""
        return torch.cat([captured[i] for i in self.aux_layers], dim=-1)

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the target on a (1, T) row: returns ``(aux (1, T, 3H), last_hidden (1, T, H))``."""
        with self.capturing() as captured:
            out = self.model.get_decoder()(input_ids=input_ids, position_ids=position_ids,
                                           attention_mask=attention_mask, use_cache=False)
        return self.fused(captured), out.last_hidden_state

    @torch.no_grad()
    def restricted_probs(self, last_hidden: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, H) -> softmax over the draft vocabulary (T, Vd), and top-1-in-draft-vocab (T,)."""
        n = last_hidden.shape[0]
        probs = torch.empty(n, self.draft_ids.numel(), dtype=out_dtype, device=last_hidden.device)
        in_vocab = torch.empty(n, dtype=torch.bool, device=last_hidden.device)
        for s in range(0, n, self.logits_chunk):
            logits = self.lm_head(last_hidden[s : s + self.logits_chunk])
            if self.logit_multiplier != 1.0:
                logits = logits * self.logit_multiplier
            if self.final_softcap:
                logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
            in_vocab[s : s + self.logits_chunk] = self.t2d[logits.argmax(-1)]
            probs[s : s + self.logits_chunk] = torch.softmax(logits.index_select(-1, self.draft_ids).float(), -1).to(out_dtype)
        return probs, in_vocab

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, position_ids: torch.Tensor, doc_ids: torch.Tensor,
            packed: PackedMask | None = None, probs_dtype: torch.dtype | None = None,
            loss_mask: torch.Tensor | None = None) -> TargetOutputs:
        """Everything the TTT loss needs from the target for one packed row (T,).

        With ``loss_mask`` the distributions are computed only where they can be labels
        (``label_row`` maps positions to them; ``in_vocab`` is False elsewhere)."""
        ids, pos = input_ids[None], position_ids[None]
        aux, last = self.features(ids, pos, self.attention_mask(doc_ids, packed))
        embeds = self.embed_tokens(ids)
        dtype = probs_dtype or last.dtype
        if loss_mask is None:
            probs, in_vocab = self.restricted_probs(last[0], dtype)
            return TargetOutputs(aux=aux, embeds=embeds, probs=probs, in_vocab=in_vocab)
        where = label_positions(loss_mask).nonzero().squeeze(-1)
        probs, some_in_vocab = self.restricted_probs(last[0].index_select(0, where), dtype)
        in_vocab = torch.zeros(ids.shape[1], dtype=torch.bool, device=ids.device)
        in_vocab[where] = some_in_vocab
        label_row = torch.full((ids.shape[1],), -1, dtype=torch.long, device=ids.device)
        label_row[where] = torch.arange(where.numel(), device=ids.device)
        return TargetOutputs(aux=aux, embeds=embeds, probs=probs, in_vocab=in_vocab, label_row=label_row)
