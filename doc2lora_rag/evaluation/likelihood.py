"""How likely the model finds the gold answer: a finer signal than exact matches.

Answer-contains moves only once every token of an answer is right; the mean negative
log-likelihood of the gold answer tokens moves as soon as an adapter carries any of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.locking import model_lock
from doc2lora_rag.training.objective import response_logits, student_batch
from doc2lora_rag.training.teacher import Target


@torch.inference_mode()
def answer_nll(
    engine,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    contexts: Sequence[str | None] | None = None,
    adapters: Sequence[LoRAAdapter | None] | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Mean negative log-likelihood per answer token (end-of-turn included), one per question,
    with ``contexts[i]`` in the prompt or ``adapters[i]`` attached."""
    tokenizer, model = engine.tokenizer, engine.model
    contexts = contexts or [None] * len(questions)
    eos = tokenizer.eos_token_id
    result: list[float] = []
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        prompts = [engine.prompt(questions[i], contexts[i]) for i in rows]
        targets = [Target.gold([*tokenizer.encode(answers[i], add_special_tokens=False), eos], 1) for i in rows]
        batch = student_batch(tokenizer, prompts, targets).to(engine.base.device)
        row_adapters = None if adapters is None else [adapters[i] for i in rows]
        with model_lock(model), adapters_attached(model, row_adapters, per_row=True):
            logits = response_logits(model, batch)
        logprobs = logits.float().log_softmax(-1).gather(-1, batch.topk_ids[..., :1]).squeeze(-1)
        mask = batch.response_mask.float()
        result.extend((-(logprobs * mask).sum(-1) / mask.sum(-1)).tolist())
    return result
