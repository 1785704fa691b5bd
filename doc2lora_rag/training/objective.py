"""The student side of meta-training: batch layout and the distillation loss.

A student row is ``[left pad][question prompt][response][right pad]``. Prompts are
left-padded so every response starts at the same column; the logits that predict the
response are then simply the last ``R + 1`` positions minus one, and nothing else is
projected onto the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from doc2lora_rag.training.teacher import Target


@dataclass
class StudentBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    position_ids: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor  # [B, R] True on real response tokens
    topk_ids: torch.Tensor  # [B, R, k]
    topk_logprobs: torch.Tensor  # [B, R, k]

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[1]

    def to(self, device: torch.device) -> StudentBatch:
        return StudentBatch(*(t.to(device) for t in vars(self).values()))


def student_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[Target]) -> StudentBatch:
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    prompt_len = max(len(p) for p in prompt_ids)
    response_len = max(len(t.tokens) for t in targets)
    top_k = targets[0].topk_ids.shape[1]
    rows = len(prompts)
    ids = torch.full((rows, prompt_len + response_len), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    response_mask = torch.zeros(rows, response_len, dtype=torch.bool)
    topk_ids = torch.zeros(rows, response_len, top_k, dtype=torch.long)
    topk_logprobs = torch.zeros(rows, response_len, top_k)
    for row, (prompt, target) in enumerate(zip(prompt_ids, targets, strict=True)):
        n = len(target.tokens)
        ids[row, prompt_len - len(prompt) : prompt_len] = torch.tensor(prompt)
        ids[row, prompt_len : prompt_len + n] = target.tokens
        mask[row, prompt_len - len(prompt) : prompt_len + n] = True
        response_mask[row, :n] = True
        topk_ids[row, :n] = target.topk_ids
        topk_logprobs[row, :n] = target.topk_logprobs
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return StudentBatch(ids, mask, positions, response_mask, topk_ids, topk_logprobs)


def distillation_loss(logits: torch.Tensor, batch: StudentBatch) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k, per response token, averaged.

    The teacher's top-k probabilities are renormalised to sum to one; a one-hot gold target
    (k entries, one with log-prob 0) makes this the usual cross-entropy.
    """
    return distillation_losses(logits, batch)[0]


def distillation_losses(
    logits: torch.Tensor, batch: StudentBatch, first_token_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's token-averaged KL and each row's own (``[B]``), from one pass over the
    vocabulary: the per-row contrastive term needs both. ``first_token_weight`` counts each
    row's first response token that many times in both averages (every answer starts in
    column 0)."""
    weights = batch.response_mask.float()
    weights[:, 0] *= first_token_weight
    per_token = _token_kl(logits, batch) * weights
    return per_token.sum() / weights.sum().clamp(min=1), per_token.sum(-1) / weights.sum(-1).clamp(min=1)


def _token_kl(logits: torch.Tensor, batch: StudentBatch) -> torch.Tensor:
    """KL(teacher || student) at each response position: ``[B, R]`` (padding included)."""
    student = logits.float().log_softmax(-1).gather(-1, batch.topk_ids)
    teacher = batch.topk_logprobs.log_softmax(-1)
    teacher_p = teacher.exp()
    per_entry = torch.where(teacher_p > 0, teacher_p * (teacher - student), torch.zeros_like(student))
    return per_entry.sum(-1)


def response_logits(model, batch: StudentBatch) -> torch.Tensor:
    """Logits predicting each response token: ``[B, R, V]``, and only those are computed."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.response_length + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]
