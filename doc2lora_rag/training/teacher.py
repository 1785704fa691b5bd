"""Teacher pass: the base model answers with the document in context; its top-k log-probs
of every response token become the student's target. Cached on disk and reused across runs.

The cache is a diskcache whose values are safetensors bytes (never pickles): the key hashes
the base model fingerprint and dtype (bf16 and fp32 teachers answer differently), the
generation settings and the teacher's prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.loading import BaseModel
from doc2lora_rag.base_model.prompts import question_prompt
from doc2lora_rag.errors import AdapterFormatError
from doc2lora_rag.hypernetwork.chunking import token_budget_batches
from doc2lora_rag.training.data import QARecord


@dataclass
class Target:
    """Response tokens and, per token, the teacher's top-k token ids and log-probs."""

    tokens: torch.Tensor  # [R] int64, ends with EOS unless the answer was cut at max length
    topk_ids: torch.Tensor  # [R, k] int64
    topk_logprobs: torch.Tensor  # [R, k] float32

    def to_bytes(self) -> bytes:
        return save_tensors(
            {
                "tokens": self.tokens.contiguous(),
                "topk_ids": self.topk_ids.contiguous(),
                "topk_logprobs": self.topk_logprobs.to(torch.float16).contiguous(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Target:
        tensors = load_tensors(data)
        return cls(tensors["tokens"], tensors["topk_ids"], tensors["topk_logprobs"].float())

    @classmethod
    def gold(cls, tokens: list[int], top_k: int) -> Target:
        """A one-hot target for a known answer: cross-entropy in the same loss."""
        ids = torch.tensor(tokens, dtype=torch.long)
        topk_ids = torch.zeros(len(tokens), top_k, dtype=torch.long)
        topk_ids[:, 0] = ids
        logprobs = torch.full((len(tokens), top_k), float("-inf"))
        logprobs[:, 0] = 0.0
        return cls(ids, topk_ids, logprobs)

    @classmethod
    def for_answer(cls, tokenizer: PreTrainedTokenizerBase, answer: str, top_k: int = 1) -> Target:
        """The gold target of a known answer string, closed by end of turn."""
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        return cls.gold([*tokens, tokenizer.eos_token_id], top_k)


class _BytesOnlyDisk(diskcache.Disk):
    """diskcache storage that accepts and returns raw bytes only, so nothing is unpickled."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not isinstance(value, bytes):
            raise TypeError("the teacher cache stores bytes only")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise AdapterFormatError("teacher cache entry is a pickle; refusing to load it")
        return super().fetch(mode, filename, value, read)


class Teacher:
    """The base model answering greedily, with the document in context where it should."""

    def __init__(self, base: BaseModel, *, top_k: int = 16, max_new_tokens: int = 32):
        self.base, self.top_k, self.max_new_tokens = base, top_k, max_new_tokens

    def prompt(self, record: QARecord) -> str:
        context = record.context if record.teacher_sees_context else None
        return question_prompt(self.base.tokenizer, record.question, context)

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[Target]:
        tokenizer, model = self.base.tokenizer, self.base.model
        batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            eos_token_id=list(eos_ids),
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        out = model.generate(**batch.to(self.base.device), generation_config=config)
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :].cpu()
        logprobs = torch.stack(out.scores, dim=1).float().log_softmax(-1).cpu()  # [B, R, V]
        top = logprobs.topk(self.top_k, dim=-1)
        targets = []
        for row in range(len(prompts)):
            tokens = new_tokens[row].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            targets.append(
                Target(new_tokens[row, :end].clone(), top.indices[row, :end].clone(), top.values[row, :end].clone())
            )
        return targets


class TeacherCache:
    """Teacher targets on disk, keyed by base model, record and settings."""

    def __init__(self, directory: str | Path, teacher: Teacher):
        self.cache = diskcache.Cache(str(directory), disk=_BytesOnlyDisk)
        self.teacher = teacher
        self.settings = json.dumps(
            [model_fingerprint(teacher.base.model), str(teacher.base.dtype), teacher.top_k, teacher.max_new_tokens]
        )

    def key(self, record: QARecord) -> str:
        """Hash of exactly what the teacher sees: records whose teacher answers without their
        document (unrelated and general questions) share one entry per question."""
        return self._prompt_key(self.teacher.prompt(record))

    def _prompt_key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.settings}|{prompt}".encode()).hexdigest()

    def get(self, record: QARecord) -> Target | None:
        data = self.cache.get(self.key(record))
        return None if data is None else Target.from_bytes(data)

    def missing(self, records: Sequence[QARecord]) -> list[QARecord]:
        return [r for r in records if self.key(r) not in self.cache]

    def fill(self, records: Sequence[QARecord], *, token_budget: int = 4096, progress: bool = True) -> int:
        """Compute and store the targets of every record not cached yet; returns how many.
        Each batch is committed as it finishes, so an interrupted pass resumes where it was."""
        pending: dict[str, str] = {}  # key -> prompt; each prompt rendered once, duplicates dropped
        for record in records:
            prompt = self.teacher.prompt(record)
            key = self._prompt_key(prompt)
            if key not in pending and key not in self.cache:
                pending[key] = prompt
        keys, prompts = list(pending), list(pending.values())
        tokenizer = self.teacher.base.tokenizer
        lengths = [len(tokenizer.encode(p, add_special_tokens=False)) + self.teacher.max_new_tokens for p in prompts]
        bar = tqdm(total=len(keys), desc="teacher", unit="rec", disable=not progress)
        for batch in token_budget_batches(lengths, token_budget):
            targets = self.teacher.generate([prompts[i] for i in batch])
            broken = sum(bool(t.topk_logprobs.isnan().any()) for t in targets)
            if broken:  # stored, they would turn every step that samples them into NaN
                raise FloatingPointError(
                    f"the teacher gave NaN log-probs for {broken} of {len(batch)} records "
                    f"(base model dtype {self.teacher.base.dtype}; float32 avoids low-precision overflow)"
                )
            for index, target in zip(batch, targets, strict=True):
                self.cache.set(keys[index], target.to_bytes())
            bar.update(len(batch))
        bar.close()
        return len(keys)
