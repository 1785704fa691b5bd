"""Context distillation: the per-document baseline that the hypernetwork replaces.

A fresh LoRA (same targets and rank as the hypernetwork's) is fitted by gradient descent so
that the base model without the document matches the base model with it, on a set of
questions about the document. Same KL objective as meta-training; seconds to minutes per
document instead of one forward pass.
"""

from __future__ import annotations

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.base_model.prompts import question_prompt
from doc2lora_rag.training.data import QARecord
from doc2lora_rag.training.fitting import fit_lora, fresh_lora
from doc2lora_rag.training.objective import student_batch
from doc2lora_rag.training.teacher import Teacher, TeacherCache


def context_distill(
    engine,
    text: str,
    questions: list[str],
    *,
    steps: int = 30,
    lr: float = 1e-3,
    rank: int | None = None,
    teacher: TeacherCache | None = None,
    seed: int = 0,
) -> LoRAAdapter:
    """Fit a LoRA for ``text`` from the teacher's answers to ``questions``."""
    if not questions:
        raise ValueError("context distillation needs at least one question")
    base, config = engine.base, engine.config
    rank = rank or config.rank
    records = [QARecord(text, q) for q in questions]
    if teacher is None:
        plain = Teacher(base)
        answers = plain.generate([plain.prompt(r) for r in records])
    else:
        teacher.fill(records, progress=False)
        answers = [teacher.get(r) for r in records]
    prompts = [question_prompt(base.tokenizer, q) for q in questions]
    batch = student_batch(base.tokenizer, prompts, answers).to(base.device)
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name, (in_features, out_features) in config.target_modules.items():
        a, b = fresh_lora(len(config.target_layers), rank, in_features, out_features, generator)
        factors[name] = (a.to(base.device).requires_grad_(), b.to(base.device).requires_grad_())
    paths = {name: [config.module_paths[name][layer] for layer in config.target_layers] for name in factors}
    fit_lora(base.model, paths, factors, [batch], steps=steps, lr=lr)
    fitted = {n: (a.detach(), b.detach()) for n, (a, b) in factors.items()}
    return engine._adapter(fitted, 1, {"method": "context_distillation"}, bias_rank=0)
