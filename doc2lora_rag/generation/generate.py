"""Greedy generation with adapters attached: batched, per-row adapters, stop strings, streaming."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.loading import BaseModel
from doc2lora_rag.base_model.locking import model_lock
from doc2lora_rag.errors import positive_int


@dataclass
class Completion:
    """One generated answer with the token counts a caller may bill or log."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


def _generation_config(base: BaseModel, max_new_tokens: int) -> GenerationConfig:
    positive_int(max_new_tokens, "max_new_tokens")
    eos = base.model.generation_config.eos_token_id
    if eos is None:
        eos = base.tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=base.tokenizer.pad_token_id,
    )


def stop_strings(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list, made once where a call comes in: one string is one stop string,
    not a list of one-letter ones."""
    return [stop] if isinstance(stop, str) else list(stop or ())


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = min((i for s in stop or () if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _StopStrings(StoppingCriteria):
    """Stops a row once its *generated* text contains a stop string.

    transformers' own stop-string check also looks at the prompt, so a stop string that
    straddles the end of the chat prompt (``"\n\n"`` after ``"assistant\n"``) would end the
    answer after one token; this one decodes only what was generated.
    """

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer, self.stop, self.prompt_length = tokenizer, list(stop), prompt_length
        # row -> tokens it had generated when a stop string appeared: the batch pads a
        # stopped row while other rows go on, and those pads are not the row's tokens.
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(s in text for s in self.stop) for text in texts]
        for row in (row for row, hit in enumerate(done) if hit):
            self.stopped_at.setdefault(row, input_ids.shape[1] - self.prompt_length)
        return torch.tensor(done, device=input_ids.device)


def _criteria(tokenizer, stop: Sequence[str], prompt_length: int, *extra) -> StoppingCriteriaList:
    criteria = [_StopStrings(tokenizer, stop, prompt_length)] if stop else []
    return StoppingCriteriaList([*criteria, *extra])


class _Cancelled(StoppingCriteria):
    """Stops a background generation once the reader has what it wants."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        # On the ids' device: transformers ORs it with a tensor there (a CUDA one on a GPU).
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def complete(
    base: BaseModel,
    prompts: Sequence[str],
    *,
    adapters: LoRAAdapter | Sequence[LoRAAdapter | None] | None = None,
    per_row: bool = False,
    max_new_tokens: int = 128,
    stop: str | Sequence[str] | None = None,
) -> list[Completion]:
    """Answer a batch of chat-formatted prompts greedily.

    ``per_row=True`` means ``adapters[i]`` applies to ``prompts[i]`` only (``None`` = none);
    otherwise the given adapters (rank-concatenated) apply to every row.
    """
    tokenizer, stop = base.tokenizer, stop_strings(stop)
    batch = tokenizer(
        list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(base.device)
    config = _generation_config(base, max_new_tokens)
    prompt_length = batch["input_ids"].shape[1]
    criteria = _criteria(tokenizer, stop, prompt_length)
    stops = criteria[0] if stop else None
    with model_lock(base.model), adapters_attached(base.model, adapters, per_row=per_row):
        output = base.model.generate(**batch, generation_config=config, stopping_criteria=criteria)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    eos_ids = set(config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
    completions = []
    for row, tokens in enumerate(new_tokens.tolist()):
        if stops is not None and row in stops.stopped_at:
            tokens = tokens[: stops.stopped_at[row]]
        ended = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
        used = tokens if ended is None else tokens[:ended]
        text, stopped = cut_at_stop(tokenizer.decode(used, skip_special_tokens=True), stop)
        completions.append(
            Completion(
                text=text.strip(),
                prompt_tokens=int(batch["attention_mask"][row].sum()),
                completion_tokens=len(used) if ended is None else ended + 1,
                finish_reason="stop" if stopped or ended is not None else "length",
            )
        )
    return completions


def stream(
    base: BaseModel,
    prompt: str,
    *,
    adapters: LoRAAdapter | Sequence[LoRAAdapter] | None = None,
    max_new_tokens: int = 128,
    stop: str | Sequence[str] | None = None,
) -> Iterator[str]:
    """Yield the answer in pieces as it is generated; a stop string ends it early."""
    tokenizer, stop = base.tokenizer, stop_strings(stop)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(base.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = _generation_config(base, max_new_tokens)
    held_back = max((len(s) for s in stop), default=1) - 1
    cancelled = _Cancelled()
    failure: list[BaseException] = []

    def run() -> None:
        # The worker owns the model while it generates: a reader that abandons the stream
        # cannot leave the lock held or the hooks attached.
        try:
            with model_lock(base.model), adapters_attached(base.model, adapters), torch.inference_mode():
                base.model.generate(
                    **batch,
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=_criteria(tokenizer, stop, batch["input_ids"].shape[1], cancelled),
                )
        except BaseException as error:  # re-raised in the reading thread below
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text, sent = "", 0
    try:
        for piece in streamer:
            text += piece
            visible, stopped = cut_at_stop(text, stop)
            limit = len(visible) if stopped else max(sent, len(visible) - held_back)
            if limit > sent:
                yield visible[sent:limit]
                sent = limit
            if stopped:
                return
        if failure:
            raise failure[0]
        if len(text) > sent:
            yield text[sent:]
    finally:
        cancelled.event.set()
        worker.join()
