"""How likely the model finds the gold answer: a finer signal than exact matches.

Answer-contains moves only once every token of an answer is right; the mean negative
log-likelihood of the gold answer tokens moves as soon as an adapter carries any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.locking import model_lock
from doc2lora_rag.training.objective import response_logits, student_batch
from doc2lora_rag.training.teacher import Target


@dataclass(frozen=True)
class AnswerTokens:
    """One gold answer read under teacher forcing, token by token (end of turn last): its
    log-probability and whether it was the model's greedy pick. Greedy decoding reproduces the
    answer exactly while every pick holds, so the first miss is where a greedy answer leaves it."""

    logprobs: list[float]
    picked: list[bool]

    @property
    def nll(self) -> float:
        return -sum(self.logprobs) / len(self.logprobs)

    @property
    def first_miss(self) -> int | None:
        """Index of the first token that was not the greedy pick; None when all were."""
        return next((i for i, hit in enumerate(self.picked) if not hit), None)


@torch.inference_mode()
def answer_tokens(
    engine,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    contexts: Sequence[str | None] | None = None,
    adapters: Sequence[LoRAAdapter | None] | None = None,
    batch_size: int = 8,
) -> list[AnswerTokens]:
    """Each gold answer (end-of-turn appended) read token by token, with ``contexts[i]`` in the
    prompt or ``adapters[i]`` attached."""
    tokenizer, model = engine.tokenizer, engine.model
    contexts = contexts or [None] * len(questions)
    eos = tokenizer.eos_token_id
    result: list[AnswerTokens] = []
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        prompts = [engine.prompt(questions[i], contexts[i]) for i in rows]
        targets = [Target.gold([*tokenizer.encode(answers[i], add_special_tokens=False), eos], 1) for i in rows]
        batch = student_batch(tokenizer, prompts, targets).to(engine.base.device)
        row_adapters = None if adapters is None else [adapters[i] for i in rows]
        with model_lock(model), adapters_attached(model, row_adapters, per_row=True):
            logits = response_logits(model, batch).float()
        gold = batch.topk_ids[..., 0]
        logprobs = logits.log_softmax(-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        picked = logits.argmax(-1) == gold
        for row, length in enumerate(batch.response_mask.sum(-1).tolist()):
            result.append(AnswerTokens(logprobs[row, :length].tolist(), picked[row, :length].tolist()))
    return result


def answer_nll(engine, questions: Sequence[str], answers: Sequence[str], **reading) -> list[float]:
    """Mean negative log-likelihood per answer token (end-of-turn included), one per question;
    ``reading`` takes ``answer_tokens``' options (``contexts``, ``adapters``, ``batch_size``)."""
    return [answer.nll for answer in answer_tokens(engine, questions, answers, **reading)]
