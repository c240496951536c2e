"""``eagle3kit eval``: its options, the prompts, and the run (in process, or ``--server``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from eagle3kit.errors import UserError
from eagle3kit.eval.decode import SpeculativeDecoder, TreeDecoder, plain_decode
from eagle3kit.eval.report import active_filters, breakdown, finish, summarize
from eagle3kit.train.template import end_of_turn_ids
from eagle3kit.ui import UI, SilentUI


@dataclass
class EvalConfig:
    basepath: str
    draft_path: str | None
    data_path: str
    num_samples: int = 80
    max_new_tokens: int = 256
    steps: int = 6
    temperature: float = 0.0
    top_k: int = 0  # with temperature > 0: sample from the k most likely tokens only (0: all)
    top_p: float = 1.0  # with temperature > 0: nucleus sampling (1.0: off)
    seed: int = 0
    dtype: str = "auto"
    json_path: str | None = None
    no_baseline: bool = False
    topk: int = 1  # > 1: tree drafting, as SGLang's --speculative-eagle-topk
    acceptance: str | None = None  # at temperature > 0: rejection (chains) | target-only; None: rejection for a chain
    server: str | None = None  # measure a running SGLang / vLLM server instead (eagle3kit.eval.server)
    engine: str = "auto"  # sglang | vllm | auto
    timeout: float = 600.0  # seconds per server request
    chat_template_kwargs: dict | None = None  # template variables for the prompts, e.g. {"enable_thinking": False}
    target_tp: int = 1  # > 1: the target split over this many processes (torchrun), tensor parallel
    num_draft_tokens: int | None = None  # tree nodes the target checks per pass (with the root); default 1 + topk x steps, at most 64


def tree_size(cfg: EvalConfig) -> int | None:
    """Tokens per verification pass of tree drafting (root included), or None for a chain
    decoded with :class:`SpeculativeDecoder` (a chain verified by the target-only rule is
    a one-wide tree: ``steps + 1``)."""
    if cfg.topk == 1 and cfg.num_draft_tokens not in (None, cfg.steps + 1):
        raise UserError(f"--num-draft-tokens {cfg.num_draft_tokens} with --topk 1: a chain checks --steps + 1 = "
                        f"{cfg.steps + 1} tokens per pass (SGLang requires the same); set --steps "
                        f"{max(cfg.num_draft_tokens - 1, 1)} instead, or --topk > 1 for a tree")
    chain = cfg.topk == 1
    sampled = cfg.temperature > 0
    if cfg.acceptance not in (None, "rejection", "target-only"):
        raise UserError(f"--acceptance {cfg.acceptance!r}: rejection or target-only")
    if chain and not (sampled and cfg.acceptance == "target-only"):
        return None
    size = cfg.num_draft_tokens or min(1 + cfg.topk * cfg.steps, 64)
    if size < 2:
        raise UserError(f"--num-draft-tokens {size}: at least 2 (the root and one draft token)")
    if sampled and cfg.acceptance == "rejection":
        raise UserError("--acceptance rejection needs sampled proposals, one chain: a tree proposes the draft's top-k "
                        "tokens, which only the target-only rule verifies exactly; drop --acceptance, or use --topk 1")
    return size


def acceptance_rule(cfg: EvalConfig) -> str:
    """The acceptance rule a run uses: greedy, rejection or target-only."""
    if cfg.temperature == 0:
        return "greedy"
    return "rejection" if tree_size(cfg) is None else "target-only"


def prompts_with_origins(path: str, tokenizer, limit: int) -> tuple[list[list[int]], list[tuple[str, int]]]:
    """Up to ``limit`` prompts: each human turn of each conversation, with the conversation
    before it, rendered with the chat template and the generation prompt. Returns their
    token ids and, for each, its origin ``(record id, human turn)``."""
    from eagle3kit.train.data import read_unified
    from eagle3kit.train.template import to_messages

    prompts: list[list[int]] = []
    origins: list[tuple[str, int]] = []
    for record in read_unified(path):
        messages = to_messages(record["conversations"])
        turn = 0
        for i, message in enumerate(messages):
            if message["role"] != "user":
                continue
            text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=True)
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            origins.append((str(record["id"]), turn))
            turn += 1
            if len(prompts) >= limit:
                return prompts, origins
    if not prompts:
        raise UserError(f"{path}: holds no human turn to use as a prompt")
    return prompts, origins


def prompts_from_data(path: str, tokenizer, limit: int) -> list[list[int]]:
    """The token ids of :func:`prompts_with_origins`."""
    return prompts_with_origins(path, tokenizer, limit)[0]


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _split_target(tp: int):
    """``--target-tp``: this process's part of a target split over all ``tp`` processes
    (started by torchrun or the deepspeed launcher). Returns ``(mesh, device, rank)``."""
    from eagle3kit.train.distributed import init_distributed
    from eagle3kit.train.target_parallel import tensor_parallel_mesh

    rank, world, _, device = init_distributed()
    if world != tp:
        raise UserError(f"eval --target-tp {tp} runs as {tp} processes (torchrun --nproc_per_node {tp} -m eagle3kit "
                        f"eval ...); this is one of {world}")
    return tensor_parallel_mesh(world, tp, device), device, rank


def ignored_options(cfg: EvalConfig) -> list[str]:
    """Options given that this run does not use, each as a warning."""
    out = []
    if cfg.temperature == 0:
        given = [name for name, on in (("--acceptance", cfg.acceptance), ("--top-k", cfg.top_k),
                                       ("--top-p", cfg.top_p != 1.0)) if on]
        if given:
            out.append(f"{', '.join(given)} only apply with --temperature > 0; at 0 decoding is greedy")
    default = EvalConfig("", None, "")
    if cfg.server:  # options of in-process decoding, set away from their defaults
        given = [name for name, on in (
            ("--draft", cfg.draft_path), ("--steps", cfg.steps != default.steps), ("--topk", cfg.topk != 1),
            ("--num-draft-tokens", cfg.num_draft_tokens), ("--acceptance", cfg.acceptance),
            ("--dtype", cfg.dtype != default.dtype), ("--no-baseline", cfg.no_baseline),
            ("--seed", cfg.seed != default.seed), ("--target-tp", cfg.target_tp != 1)) if on]
        if given:
            out.append(f"with --server the server's own draft and drafting settings are measured; {', '.join(given)} "
                       f"{'is' if len(given) == 1 else 'are'} ignored")
    else:
        given = [text for text, on in ((f"--engine {cfg.engine}", cfg.engine != "auto"),
                                       (f"--timeout {cfg.timeout:g}", cfg.timeout != default.timeout)) if on]
        if given:
            out.append(f"{' and '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --server")
    return out


def template_difference(trained_with: dict[str, Any], kwargs: dict | None) -> str | None:
    """A warning when the prompts are rendered with other chat-template kwargs than the draft was
    trained with. eagle3kit's trainer records them (and ``step``) in the draft's config; a draft
    from elsewhere records neither, and nothing is said."""
    if "step" not in trained_with and "chat_template_kwargs" not in trained_with:
        return None
    trained, used = trained_with.get("chat_template_kwargs") or {}, kwargs or {}
    if trained == used:
        return None
    if not trained:
        return (f"the draft was trained without --chat-template-kwargs; these prompts are rendered with "
                f"'{json.dumps(used)}': drop them to measure it as trained")
    return (f"the draft was trained with --chat-template-kwargs '{json.dumps(trained)}'; these prompts are rendered "
            f"with {json.dumps(used)}: pass the same to measure it as trained")


def check_inputs(cfg: EvalConfig) -> None:
    """What can be checked before any model is loaded: the data file, and that the report
    can be written (a run of hours must not end in an unwritable ``--json``)."""
    import os

    data = Path(cfg.data_path)
    if not data.exists():
        raise UserError(f"--data {data}: no such file; give the test split a mix wrote (eagle3kit mix --out DIR "
                        "writes DIR/test.jsonl)")
    if cfg.json_path:
        folder = Path(cfg.json_path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--json {cfg.json_path}: cannot make its folder ({error.strerror}); choose another path")
        if not os.access(folder, os.W_OK):
            raise UserError(f"--json {cfg.json_path}: cannot write in {folder}; choose another path")


def _prompts(cfg: EvalConfig, tokenizer, ui: UI) -> tuple[list[list[int]], list[tuple[str, int]]]:
    """The prompts of ``--data`` and their origins, saying when there are fewer than asked."""
    prompts, origins = prompts_with_origins(cfg.data_path, tokenizer, cfg.num_samples)
    if len(prompts) < cfg.num_samples:
        ui.log(f"{cfg.data_path} holds {len(prompts)} prompts (human turns); --num-samples {cfg.num_samples} uses them all")
    return prompts, origins


def run_eval(cfg: EvalConfig, ui: UI | None = None) -> dict[str, Any]:
    """Decode ``num_samples`` prompts speculatively (and plainly, for the speed-up); report."""
    from eagle3kit.checkpoint import load_draft
    from eagle3kit.train.draft import default_aux_layers
    from eagle3kit.train.target import load_target_model, load_tokenizer

    ui = ui or UI()
    check_inputs(cfg)
    for warning in ignored_options(cfg):
        ui.warn(warning)
    if cfg.server:
        return _run_served(cfg, ui)
    if not cfg.draft_path:
        raise UserError("give --draft DRAFT (or --server URL to measure a running SGLang or vLLM server)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mesh = None
    if cfg.target_tp > 1:
        mesh, device, rank = _split_target(cfg.target_tp)
        if rank:  # every process decodes in step with the others; the first one reports
            ui, cfg = SilentUI(), replace(cfg, json_path=None)
    dtype = _dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(cfg.basepath, template_kwargs=cfg.chat_template_kwargs)
    draft = load_draft(cfg.draft_path, device=device, dtype=dtype)  # the small things first: a wrong path fails at once
    draft.eval()
    prompts, origins = _prompts(cfg, tokenizer, ui)
    model = load_target_model(cfg.basepath, device=device, dtype=dtype, attn_implementation="sdpa", tp_mesh=mesh)
    text = model.config.get_text_config()
    if draft.config.vocab_size != text.vocab_size:
        raise UserError(f"the draft was trained for a vocabulary of {draft.config.vocab_size} tokens, "
                        f"the target {cfg.basepath!r} has {text.vocab_size}: wrong target?")
    if text.hidden_size != draft.config.hidden_size or draft.config.target_hidden_size != text.hidden_size:
        raise UserError(f"the draft was trained for a target of hidden size {draft.config.target_hidden_size} (its own: "
                        f"{draft.config.hidden_size}), the target {cfg.basepath!r} has {text.hidden_size}: wrong target?")
    layers, recorded = text.num_hidden_layers, draft.config.target_num_layers
    if (recorded and recorded != layers) or any(not 0 <= i <= layers for i in draft.config.aux_layers or ()):
        raise UserError(f"the draft reads hidden states {draft.config.aux_layers} of a target with "
                        f"{recorded or 'more'} decoder layers, the target {cfg.basepath!r} has {layers}: wrong target?")
    if not draft.config.aux_layers:
        draft.config.aux_layers = default_aux_layers(layers)
        ui.warn(f"{cfg.draft_path} does not say which hidden states it was trained on; using "
                f"{draft.config.aux_layers} (EAGLE-3's default)")
    template_warning = template_difference(getattr(draft, "trained_with", {}), cfg.chat_template_kwargs)
    if template_warning:
        ui.warn(template_warning)
    eos = end_of_turn_ids(tokenizer, model)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    size = tree_size(cfg)
    if size is None:
        decoder = SpeculativeDecoder(model, draft, cfg.steps, eos, cfg.temperature, gen, cfg.top_k, cfg.top_p)
    else:
        decoder = TreeDecoder(model, draft, cfg.steps, eos, cfg.topk, size, cfg.temperature, gen, cfg.top_k, cfg.top_p)

    # warm up kernels and allocator once, outside the timings
    decoder.generate(prompts[0], min(8, cfg.max_new_tokens))
    if not cfg.no_baseline:
        plain_decode(model, prompts[0], min(8, cfg.max_new_tokens), eos, cfg.temperature, gen, cfg.top_k, cfg.top_p)

    spec, base = [], []
    with ui.progress("speculative decoding", total=len(prompts)) as task:
        for ids in prompts:
            spec.append(decoder.generate(ids, cfg.max_new_tokens))
            _sync(device)
            s = summarize(spec, cfg.steps)
            task.update(advance=1, tau=f"{s['tau']:.2f}")
    if not cfg.no_baseline:
        gen.manual_seed(cfg.seed)
        with ui.progress("plain decoding (baseline)", total=len(prompts)) as task:
            for ids in prompts:
                base.append(plain_decode(model, ids, cfg.max_new_tokens, eos, cfg.temperature, gen, cfg.top_k, cfg.top_p))
                _sync(device)
                task.update(advance=1)

    report = summarize(spec, cfg.steps)
    if not report["passes"]:
        raise UserError(f"no verification pass over {len(prompts)} prompts: every answer ended at its first token, "
                        f"which the prompt's own pass gives (--max-new-tokens {cfg.max_new_tokens}); give a larger "
                        "--max-new-tokens, or prompts the target answers at more length")
    report.update(breakdown(origins, [sum(r.produced) for r in spec], [r.passes for r in spec]))
    report.update({
        "tree_size": size,
        "acceptance_rule": acceptance_rule(cfg),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "prompts": len(prompts),
        "spec_seconds": sum(r.seconds for r in spec),
        "spec_tokens_per_s": sum(len(r.tokens) for r in spec) / max(sum(r.seconds for r in spec), 1e-9),
    })
    if base:
        base_seconds = sum(r.seconds for r in base)
        report["baseline_seconds"] = base_seconds
        report["baseline_tokens_per_s"] = sum(len(r.tokens) for r in base) / max(base_seconds, 1e-9)
        report["speedup"] = report["spec_tokens_per_s"] / report["baseline_tokens_per_s"]
        if cfg.temperature == 0:
            report["identical_to_greedy"] = sum(a.tokens == b.tokens for a, b in zip(spec, base))
    return finish(ui, report, cfg)


def _run_served(cfg: EvalConfig, ui: UI) -> dict[str, Any]:
    """``--server``: the same prompts, decoded by a running SGLang or vLLM server."""
    from eagle3kit.eval.server import served_acceptance
    from eagle3kit.train.target import load_tokenizer

    tokenizer = load_tokenizer(cfg.basepath, template_kwargs=cfg.chat_template_kwargs)
    prompts, origins = _prompts(cfg, tokenizer, ui)
    sampling = {"temperature": cfg.temperature, **active_filters(asdict(cfg))}
    report = served_acceptance(cfg.server, cfg.engine, prompts, cfg.max_new_tokens, sampling, cfg.timeout, ui)
    report.update(breakdown(origins, report.pop("per_prompt_produced"), report.pop("per_prompt_passes")))
    return finish(ui, report, cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
