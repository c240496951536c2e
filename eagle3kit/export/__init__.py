"""Export a draft for SGLang, vLLM or the vLLM speculators format, and check a draft folder.

``eagle3kit export DRAFT_DIR --to sglang|vllm|speculators --out OUT`` and
``eagle3kit export --check DIR``.

What each engine loads (read from their published loaders; see :mod:`eagle3kit.checkpoint`
for the layout the trainer saves):

* **SGLang** ``LlamaForCausalLMEagle3``: a flat Llama config with
  ``architectures: ["LlamaForCausalLMEagle3"]``, ``num_hidden_layers: 1`` and a
  ``draft_vocab_size`` key. Weight names are looked up as given, then with ``model.`` in
  front; a name that matches neither is dropped *silently* (so ``layers.0.*`` keys leave
  the decoder layer random). ``q/k/v_proj`` and ``gate/up_proj`` are fused at load,
  ``d2t`` becomes ``hot_token_id = arange + d2t``, ``t2d`` is skipped, ``embed_tokens`` is
  replaced by the target's. The feature layers come from the nested
  ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang adds one); ``norm_before_residual``
  is not read (always norm after the residual).
* **vLLM** ``--speculative-config '{"method": "eagle3", "model": OUT, ...}'``: the same
  folder. ``d2t`` becomes ``draft_id_to_target_id``, ``t2d`` is skipped, every name
  without ``lm_head`` gets ``model.`` in front and ``midlayer.`` becomes ``layers.0.``;
  an unknown name raises ``KeyError`` (so ``model.``-prefixed keys and ``fc.bias`` break
  it), a missing one goes unnoticed. The feature layers come from the top-level
  ``eagle_aux_hidden_state_layer_ids`` (HF ``hidden_states`` indices, used as is).
* **speculators** (``vllm serve OUT``): a config with no top-level ``model_type``, a
  ``speculators_model_type``, a nested Llama ``transformer_layer_config`` and a
  ``speculators_config`` naming the verifier (the target vLLM serves) and a greedy
  proposal; weights named ``layers.0.*``. vLLM defaults ``norm_before_residual`` to true
  when the key is absent, so it is always written.

:func:`check_draft` names every problem it finds (as :class:`Problem`), for one engine or,
without a format, for whichever the folder's layout says; the exporters run it on their
own output and refuse to write a broken export.

The package, by what each module does (nothing here imports torch or rich at module level;
those are imported when a function needs them, so the CLI starts fast):

* :mod:`~eagle3kit.export.folder`: reading a draft folder and the target's config; the
  format constants (:data:`FORMATS`, :data:`MARKER`, ...) and the config helpers the
  others share.
* :mod:`~eagle3kit.export.problem`: :class:`Problem`, one error or warning.
* :mod:`~eagle3kit.export.check_weights`: tensor checks (shapes, dtypes, NaN/Inf, d2t/t2d)
  and the weight names each engine accepts.
* :mod:`~eagle3kit.export.check_config`: ``config.json`` checks for each engine (the
  speculators fields too) and against the target's config.
* :mod:`~eagle3kit.export.check`: :func:`check_draft`, the above for one engine or for
  SGLang and vLLM together.
* :mod:`~eagle3kit.export.write`: :func:`export_draft` and :func:`speculators_config`,
  converting and writing one format.
* :mod:`~eagle3kit.export.card`: :func:`model_card` (the export's ``README.md``: target,
  serve command, shapes, training, acceptance from an eval report) and :func:`serve_hint`.
* :mod:`~eagle3kit.export.commands`: :func:`check_command`, :func:`export_command` and
  :func:`push_folder` (``--push-to-hub``), what the CLI runs (they print with rich).
"""

from __future__ import annotations

from eagle3kit.export.folder import (ARCHITECTURE, ENGINE, FORMATS, LAYER_CONFIG_KEYS, MARKER, SHORT_CONTEXT,
                                     SPECULATORS_ARCHITECTURE, SPECULATORS_VERSION, VLLM_ARCHITECTURES, DraftFolder,
                                     flat_config, is_speculators_config, read_folder, read_target_config)
from eagle3kit.export.problem import Problem
from eagle3kit.export.check import check_draft
from eagle3kit.export.write import export_draft, speculators_config
from eagle3kit.export.card import model_card, serve_hint
from eagle3kit.export.commands import check_command, export_command, push_folder

__all__ = [
    "ARCHITECTURE", "ENGINE", "FORMATS", "LAYER_CONFIG_KEYS", "MARKER", "SHORT_CONTEXT", "SPECULATORS_ARCHITECTURE",
    "SPECULATORS_VERSION", "VLLM_ARCHITECTURES", "DraftFolder", "Problem", "check_command", "check_draft",
    "export_command", "export_draft", "flat_config", "is_speculators_config", "read_folder", "read_target_config",
    "model_card", "push_folder", "serve_hint", "speculators_config",
]
