"""The in-process backend: batched Hugging Face ``generate`` (torch is imported when it is made)."""

from __future__ import annotations

import itertools
from typing import Any

from eagle3kit.errors import UserError
from eagle3kit.regenerate.answers import Answer, Failure, opened_in_prompt, shape_answer
from eagle3kit.regenerate.config import RegenConfig
from eagle3kit.regenerate.recorder import Event, Recorder
from eagle3kit.regenerate.records import Item, prompt_messages
from eagle3kit.ui import UI


class HFBackend:
    """Batched ``generate`` in this process."""

    name = "transformers"

    def __init__(self, cfg: RegenConfig, ui: UI) -> None:
        import torch

        from eagle3kit.train.target import load_target_model, load_tokenizer

        self.cfg, self.ui, self.torch = cfg, ui, torch
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if cfg.dtype != "auto":
            dtype = getattr(torch, cfg.dtype)
        elif device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        tokenizer = load_tokenizer(cfg.basepath, template_kwargs=cfg.chat_template_kwargs)
        vocab = tokenizer.get_vocab()
        if "<|channel|>" in vocab and "<|return|>" in vocab:  # before the weights load
            raise UserError(f"{cfg.basepath!r} answers in the harmony format (gpt-oss): an analysis message, then the "
                            "answer in a final channel, which this backend does not parse; serve the model with vLLM "
                            "or SGLang and pass --server URL")
        ui.log(f"loading {cfg.basepath} on {device} ({str(dtype).replace('torch.', '')})")
        self.model = load_target_model(cfg.basepath, device=device, dtype=dtype)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer, self.device, self.dtype = tokenizer, device, dtype
        self.eos_ids = self._end_of_turn_ids()
        if not self.eos_ids:
            raise UserError(f"{cfg.basepath!r}: the tokenizer names no end-of-sequence token; cannot tell when an answer ends")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        self.cut_by_context = 0  # prompts that had less room left than --max-new-tokens
        self.max_batch = cfg.batch_size
        name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        self.description = {"device": name, "dtype": str(dtype).replace("torch.", ""),
                            "eos_token_ids": self.eos_ids}

    def _end_of_turn_ids(self) -> list[int]:
        from eagle3kit.train.template import end_of_turn_ids

        return end_of_turn_ids(self.tokenizer, self.model)

    def run(self, items: list[Item], recorder: Recorder) -> None:
        torch = self.torch
        torch.manual_seed(self.cfg.seed)
        rounds = max((len(it.turns) for it in items), default=0)
        for k in range(rounds):
            active = [it for it in items if it.failure is None and it.next_turn == k < len(it.turns)]
            if not active:
                continue
            prompts, failed = [], []
            for it in active:
                messages = prompt_messages(it, [a.text for a in it.answers], k)
                try:
                    text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                except Exception as error:  # jinja errors such as "roles must alternate"
                    failed.append(Event(it, k, failure=Failure(f"chat template: {error}")))
                    continue
                prompts.append((it, text))
            ids = self.tokenizer([t for _, t in prompts], add_special_tokens=False)["input_ids"] if prompts else []
            jobs = []
            for (it, text), row in zip(prompts, ids):
                room = self.cfg.max_new_tokens if not self.context else min(self.cfg.max_new_tokens,
                                                                            self.context - len(row))
                if room < 1:
                    failed.append(Event(it, k, failure=Failure(
                        f"the prompt has {len(row)} tokens, the model's whole context of {self.context} tokens")))
                else:  # an answer is cut where the context ends (and marked truncated), as a server cuts it
                    self.cut_by_context += room < self.cfg.max_new_tokens
                    jobs.append((it, row, opened_in_prompt(text), room))
            if failed:
                recorder.record(failed)
            jobs.sort(key=lambda j: -len(j[1]))  # longest first: an out-of-memory shows at once
            at = 0
            while at < len(jobs):  # a batch shares one token budget: prompts near the context go with their like
                batch = list(itertools.takewhile(lambda j: j[3] == jobs[at][3], jobs[at: at + self.max_batch]))
                at += len(batch)
                recorder.record(self._generate(batch, k))
        if self.cut_by_context:
            self.ui.warn(f"{self.cut_by_context} prompt(s) left less than --max-new-tokens {self.cfg.max_new_tokens} "
                         f"in the model's {self.context}-token context: their answers end where the context does "
                         "(marked truncated)")

    def _generate(self, batch: list[tuple[Item, list[int], bool, int]], k: int) -> list[Event]:
        torch = self.torch
        try:
            return self._generate_batch(batch, k)
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                return [Event(batch[0][0], k, failure=Failure(
                    f"out of memory generating for a {len(batch[0][1])}-token prompt"))]
            self.max_batch = max(1, len(batch) // 2)
            self.ui.warn(f"out of memory with {len(batch)} prompts per batch; going on with {self.max_batch}")
            half = len(batch) // 2
            return self._generate(batch[:half], k) + self._generate(batch[half:], k)

    def _generate_batch(self, batch: list[tuple[Item, list[int], bool, int]], k: int) -> list[Event]:
        torch, cfg = self.torch, self.cfg
        width = max(len(row) for _, row, _, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, row, _, _) in enumerate(batch):
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        sampling = cfg.temperature > 0
        options: dict[str, Any] = dict(max_new_tokens=batch[0][3], do_sample=sampling,
                                       eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        if sampling:  # OpenAI semantics: temperature and top-p, no top-k
            options.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **options)
        new = out[:, width:].tolist()
        eos = set(self.eos_ids)
        events = []
        for (it, _, opened, _), row in zip(batch, new):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            truncated = end is None
            tokens = row if truncated else row[:end]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            events.append(Event(it, k, answer=Answer(shape_answer(text, None, cfg.reasoning, opened), truncated,
                                                     len(tokens) + (0 if truncated else 1))))
        return events
