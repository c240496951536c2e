"""``eagle3kit eval``: what a draft is worth, by real speculative decoding.

Chain drafting, as SGLang and vLLM run an EAGLE-3 chain: the target reads the prompt and
gives its next token and its fused features; the draft proposes ``steps`` tokens, one
after another, from those features and its own hidden states; the target verifies all of
them in one forward pass; the longest agreeing prefix plus the target's own next token
is kept. The draft then re-reads the accepted positions with the target's true features.

* Greedy (temperature 0): a proposal is accepted iff it is the target's argmax, so the
  output is token for token the target's greedy output (lossless).
* Trees (``--topk`` > 1; :class:`TreeDecoder`): the draft grows a tree the way SGLang
  does with ``--speculative-eagle-topk``, the target checks its best
  ``--num-draft-tokens`` nodes in one pass under a tree mask, the longest accepted path
  is kept. Chains are what the EAGLE-3 training objective measures; trees are how the
  paper's and the engines' acceptance lengths are usually reported.
* Sampling, two rules (``--acceptance``), both exact (the output follows the target's
  distribution):

  - ``rejection``, chains only (:func:`accept_chain`): the draft samples its proposals;
    accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), else sample from
    norm(max(0, p_i - q_i)) and stop; after a full acceptance sample the bonus token
    from p_{s+1}. The textbook rule, and the default for a chain.
  - ``target-only`` (:func:`accept_tree`): the draft proposes its top-k tokens and the
    target takes each with its own probability p(d). This is how SGLang (any tree) and
    vLLM (EAGLE chains) verify at temperature > 0, so it measures what a server gets;
    it is the rule for trees.

Reported: mean acceptance length tau (tokens per target verification pass, the EAGLE-3
paper's figure) with a bootstrap 95% interval over prompts, the acceptance rate at each
draft position, and the wall-clock speed-up over plain decoding of the same target in the
same run.

The package: :mod:`~eagle3kit.eval.acceptance` (the rules), :mod:`~eagle3kit.eval.decode`
(the decoders), :mod:`~eagle3kit.eval.run` (options and the run),
:mod:`~eagle3kit.eval.report` (figures and table), :mod:`~eagle3kit.eval.server`
(``--server``).
"""

from importlib import import_module
from typing import Any

#: the public names, from the module that defines each (imported on first use, so that
#: reading a report does not import torch)
_WHERE = {
    "accept_chain": "acceptance", "accept_greedy": "acceptance", "accept_tree": "acceptance",
    "Decoded": "decode", "DraftState": "decode", "SpeculativeDecoder": "decode", "TreeDecoder": "decode",
    "plain_decode": "decode", "sampling_probs": "decode",
    "bootstrap_interval": "report", "breakdown": "report", "source_of": "report", "summarize": "report",
    "EvalConfig": "run", "acceptance_rule": "run", "prompts_from_data": "run", "prompts_with_origins": "run",
    "run_eval": "run", "tree_size": "run",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
