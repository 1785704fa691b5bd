"""Meta-training loop for the hypernetwork, readable top to bottom.

Each step: sample records -> chunk their documents (a curriculum of 1..K chunks) -> read the
chunks through the frozen base model (no gradients; cached in memory) -> the hypernetwork
writes one adapter per row -> the base model with those adapters answers the question alone
-> KL to the teacher's top-k (or cross-entropy to a gold answer) on response tokens only.

Sampling is stateless (seeded by step), so a resumed run continues the same trajectory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from doc2lora_rag.adapters.runtime import attached
from doc2lora_rag.base_model.activations import cpu_has_native_bf16, layer_inputs, reading_dtype
from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.loading import BaseModel, load_base_model
from doc2lora_rag.base_model.prompts import ChatWrapper, question_prompt
from doc2lora_rag.hypernetwork.chunking import check_chunking, pad_right, split_into_parts, token_budget_batches
from doc2lora_rag.hypernetwork.config import HypernetConfig
from doc2lora_rag.hypernetwork.model import HyperNetwork
from doc2lora_rag.training.data import QARecord, synthetic_fact_records
from doc2lora_rag.training.objective import (
    StudentBatch,
    distillation_loss,
    distillation_losses,
    response_logits,
    student_batch,
)
from doc2lora_rag.training.plots import plot_metrics
from doc2lora_rag.training.sources import load_sources
from doc2lora_rag.training.teacher import Target, Teacher, TeacherCache

PROBE_SEED = 424242  # held-out documents for the training probe; evaluation uses another seed
FIT_SKIP_STEPS = 5  # first steps left out of ``fit_schedule``'s timing (kernel and cache warm-up)
FIT_AFTER_STEPS = 20  # steps timed before ``fit_schedule`` sizes the schedule
MAX_NONFINITE_STEPS = 20  # consecutive non-finite losses before a run stops


@dataclass
class TrainConfig:
    """All knobs of a run; saved as ``train_config.json`` in the output directory."""

    out: str
    base_model: str | None = None
    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    l1_weight: float = 1e-4
    seed: int = 0
    # Each source: {"kind": squad|jsonl|synthetic|niah|unrelated|general|cloze, "weight": w,
    # "target": teacher|gold, ...}
    data: list[dict] = field(default_factory=lambda: [{"kind": "synthetic", "count": 2000, "target": "gold"}])
    chunk_curriculum: dict[str, float] = field(default_factory=lambda: {"1": 0.6, "2": 0.25, "3": 0.1, "4": 0.05})
    max_doc_tokens: int = 1024
    # Where a document's chunks end: "sentences" (nearest sentence start, as adapters are made
    # by default) or "tokens" (equal token counts, as the networks before this option were).
    chunking: str = "sentences"
    teacher_cache: str | None = None  # default: <out>/teacher-cache
    teacher_top_k: int = 16
    teacher_max_new_tokens: int = 32
    hypernet: dict = field(default_factory=dict)  # HypernetConfig options
    save_every: int = 100
    log_every: int = 10
    device: str | None = None
    # The frozen base model's dtype ("float32", "bfloat16"); None: bf16 on a GPU, fp32 on a CPU.
    base_dtype: str | None = None
    # "bfloat16": training steps run their matrix products in bf16 (autocast), the weights and
    # the optimizer staying fp32; about twice as fast on a CPU with native bf16. The probe
    # stays in the model's dtype, so its numbers compare across runs. None: no autocast.
    # "auto": bf16 where the hardware has it natively (see ``step_autocast_dtype``), else none.
    step_dtype: str | None = None
    activation_cache_items: int = 20000
    # False: start at once and skip records whose teacher targets are not cached yet (a
    # background teacher pass fills them in); the trajectory then depends on that pass.
    prefill_teacher: bool = True
    # Every ``probe_every`` steps (0: never), score held-out synthetic documents that no
    # training source contains: see ``Trainer.probe``.
    probe_every: int = 0
    probe_records: int = 48
    # The probe's documents: a data source spec like those in ``data``, drawn with the probe's
    # own seed (default: synthetic fact documents).
    probe_data: dict | None = None
    # More probes beside it, each logged as probe_<name or kind>_own, _gap, ...: e.g. SQuAD
    # training-split articles that every SQuAD source keeps out with ``held_out_articles``.
    extra_probes: list[dict] = field(default_factory=list)
    # Documents per source whose activations set the hypernetwork's input statistics.
    statistics_records: int = 16
    # Contrast: also answer each row with another document's adapter and add
    # weight * relu(margin - (loss_other - loss_own)). Without it a network can settle on
    # adapters that ignore their document (answer formats only), since document-dependent
    # output that does not help yet only adds noise; this term makes using the document pay.
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.5
    # True: the margin applies to each row whose answer comes from its document, averaged
    # over those rows, instead of to the batch's mean losses; a batch-wide gap is met by the
    # rows that already have one (synthetic facts) while others (SQuAD) keep none.
    contrastive_per_row: bool = False
    # True: the loss with another document's adapter is a fixed reference (no gradient), so
    # the margin can only be met by the own adapter answering better, not by spoiling others;
    # with ``contrastive_per_row`` it weights up each row whose adapter does not read yet.
    contrastive_own_only: bool = False
    # Start a new run from another run's hypernetwork weights (fresh optimizer and schedule).
    # Parts that the saved network lacks (e.g. a newly enabled pointer) start as in a fresh one.
    init_from: str | None = None
    # Weight of an auxiliary loss: from each chunk's latents, the hypernetwork's answer head
    # names the answer's tokens (scored against the base model's input embeddings). Adapters
    # only start to depend on their document once the cross-attention finds what matters in
    # it; this gives the attention that signal directly instead of only through the adapters.
    answer_weight: float = 0.0
    # How many times each answer's first token counts in the answer loss while training (the
    # probe stays unweighted, so its numbers compare across runs). Greedy answers to fact
    # questions are lost at their first token more often than anywhere else, and that token is
    # where the own document's adapter differs most from another's (benchmarks/answer_tokens.py).
    first_token_weight: float = 1.0

    def __post_init__(self) -> None:
        check_chunking(self.chunking)
        if not self.first_token_weight > 0:
            raise ValueError(f"first_token_weight must be positive, not {self.first_token_weight}")

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_autocast_dtype(choice: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training steps for ``TrainConfig.step_dtype`` (None: no autocast).

    "auto" picks bf16 where it is native: a CUDA GPU that supports it, a CPU with AVX512-BF16
    or AMX. A CPU without them emulates bf16 matrix products, which made a training step about
    12 times slower than fp32 on a 2-core AVX2 machine (docs/training.md), so asking for bf16
    there warns."""
    if choice is None:
        return None
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    dtype = getattr(torch, choice, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"step_dtype must be a floating-point dtype name or 'auto', not {choice!r}")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "step_dtype 'bfloat16' on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and "
            "many times slower than fp32; use 'auto' to take bf16 only where it is native",
            stacklevel=2,
        )
    return dtype


class Trainer:
    def __init__(self, config: TrainConfig, base: BaseModel | None = None, *, progress: bool = True):
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # Launched by torchrun or accelerate (one process per device): data-parallel hypernetwork.
        self.distributed = "LOCAL_RANK" in os.environ
        self.rank = int(os.environ.get("RANK", "0"))
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.distributed:
            torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
            if device == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.base = base or load_base_model(
            config.base_model, device=device, dtype=getattr(torch, config.base_dtype) if config.base_dtype else None
        )
        self.device = self.base.device
        self.reading_dtype = reading_dtype(self.base.model)
        self.step_dtype = step_autocast_dtype(config.step_dtype, self.device)
        self.wrapper = ChatWrapper.for_tokenizer(self.base.tokenizer)
        self.sources = load_sources(config.data, self.base.tokenizer, seed=config.seed)
        self.teacher = TeacherCache(
            config.teacher_cache or self.out / "teacher-cache",
            Teacher(self.base, top_k=config.teacher_top_k, max_new_tokens=config.teacher_max_new_tokens),
        )
        self.hypernet, measure_inputs = self._load_or_create_hypernet()
        self.hypernet.to(self.device)
        self._activations: OrderedDict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        if measure_inputs:
            sample = [record for source in self.sources for record in source.records[: config.statistics_records]]
            documents = self.read_documents([(record, 1) for record in sample])
            self.hypernet.set_input_statistics([chunks[0][0] for chunks in documents])
        self.model = self.hypernet
        if self.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(self.hypernet)
        decay = [p for n, p in self.hypernet.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.hypernet.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.95),
        )
        self.step = 0
        self._probe_base: dict[tuple[str, ...], float] = {}  # the frozen model's loss per probe set
        self._resume_if_possible()

    # ------------------------------------------------------------------ setup

    def _load_or_create_hypernet(self) -> tuple[HyperNetwork, bool]:
        """The run's checkpointed hypernetwork, or a fresh one (second value True)."""
        checkpoint = self._checkpoint_dir()
        if (checkpoint / "hypernet_config.json").is_file():
            fingerprint = model_fingerprint(self.base.model)
            return HyperNetwork.from_pretrained(checkpoint, base_fingerprint=fingerprint), False
        options = {**self.config.hypernet, "answer_head": True} if self.config.answer_weight else self.config.hypernet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            network = HyperNetwork(HypernetConfig.for_base_model(self.base, **options))
        if self.config.init_from is None:
            return network, True
        saved = HyperNetwork.from_pretrained(self.config.init_from, base_fingerprint=model_fingerprint(self.base.model))
        try:
            missing, unexpected = network.load_state_dict(saved.state_dict(), strict=False)
        except RuntimeError as error:  # a tensor of another shape
            raise ValueError(f"{self.config.init_from} does not fit this hypernetwork config: {error}") from error
        # Parts that start as no-ops (zero gain, zero projection) may be new in this run.
        if unexpected or any(not name.startswith(("pointer.", "position.")) for name in missing):
            raise ValueError(f"{self.config.init_from} does not fit this hypernetwork config: {missing + unexpected}")
        return network, saved.config.source_layers != network.config.source_layers

    def _checkpoint_dir(self) -> Path:
        """``checkpoint/``, or ``checkpoint.old/`` where a save was cut short between its two
        renames (then it holds the last complete checkpoint, and nothing else does)."""
        final, old = self.out / "checkpoint", self.out / "checkpoint.old"
        return old if not final.exists() and (old / "trainer_state.json").is_file() else final

    def _resume_if_possible(self) -> None:
        checkpoint = self._checkpoint_dir()
        state_path = checkpoint / "trainer_state.json"
        if not state_path.is_file():
            return
        state = json.loads(state_path.read_text())
        tensors = load_file(checkpoint / "optimizer.safetensors", device=str(self.device))
        self.optimizer.load_state_dict(_unflatten_optimizer(state["optimizer"], tensors))
        self.step = state["step"]
        if self.rank == 0:
            _drop_metrics_after(self.out / "metrics.jsonl", self.step)

    def prepare_teacher(self) -> int:
        """Run the teacher over every record that needs one and is not cached yet."""
        records = [r for source in self.sources for r in source.records if source.target == "teacher"]
        return self.teacher.fill(records, progress=self.progress) if self.rank == 0 else 0

    # ------------------------------------------------------------------ one step

    def sample(self, step: int) -> list[tuple[QARecord, Target, int]]:
        """The batch of ``step``: records, their targets and chunk counts (stateless)."""
        rng = random.Random(f"{self.config.seed}-{step}-{self.rank}")
        weights = [s.weight for s in self.sources]
        curriculum = {int(k): v for k, v in self.config.chunk_curriculum.items()}
        batch = []
        for _ in range(1000 * self.config.batch_size):
            if len(batch) == self.config.batch_size:
                return batch
            source = rng.choices(self.sources, weights)[0]
            record = source.records[rng.randrange(len(source.records))]
            target = self.target(record, source.target)
            if target is None or len(target.tokens) == 0:
                continue
            chunks = rng.choices(list(curriculum), list(curriculum.values()))[0]
            batch.append((record, target, chunks))
        if len(batch) == self.config.batch_size:
            return batch
        raise RuntimeError("no trainable records: are the teacher targets cached? (prefill_teacher)")

    def target(self, record: QARecord, kind: str) -> Target | None:
        if kind == "gold":
            return Target.for_answer(self.base.tokenizer, record.answer, self.config.teacher_top_k)
        return self.teacher.get(record)

    def chunk_activations(self, record: QARecord, chunks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Source-layer activations ``[S, T, d]`` and token ids ``[T]`` of each of ``chunks``
        equal document parts."""
        return self.read_documents([(record, chunks)])[0]

    def read_documents(
        self, wanted: list[tuple[QARecord, int]], token_budget: int = 32768
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """``chunk_activations`` of many documents; the ones not cached yet are read together,
        in a few padded forward passes instead of one pass per document."""
        missing: dict[tuple[str, int], list[list[int]]] = {}
        for record, chunks in wanted:
            key = (record.context, chunks)
            if key not in self._activations and key not in missing:
                missing[key] = self._chunk_ids(record.context, chunks)
        pieces = [(key, piece) for key, chunk_ids in missing.items() for piece in chunk_ids]
        read: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {key: [] for key in missing}
        for batch in token_budget_batches([len(piece) for _, piece in pieces], token_budget):
            input_ids, mask = pad_right([pieces[i][1] for i in batch], self.base.tokenizer.pad_token_id)
            acts = layer_inputs(
                self.base.model,
                input_ids.to(self.device),
                mask.to(self.device),
                self.hypernet.config.source_layers,
                self.reading_dtype,
            )
            for row, i in enumerate(batch):
                key, piece = pieces[i]
                read[key].append((i, acts[:, row, : len(piece)].to(torch.bfloat16), torch.tensor(piece)))
        for key, found in read.items():  # batches go longest first: restore the chunk order
            self._activations[key] = [(acts, ids) for _, acts, ids in sorted(found, key=lambda item: item[0])]
        result = []
        for record, chunks in wanted:
            key = (record.context, chunks)
            self._activations.move_to_end(key)
            result.append(self._activations[key])
        while len(self._activations) > self.config.activation_cache_items:
            self._activations.popitem(last=False)
        return result

    def _chunk_ids(self, context: str, chunks: int) -> list[list[int]]:
        """The document's tokens in ``chunks`` parts of about equal size, each wrapped as the
        model reads it."""
        parts = split_into_parts(self.base.tokenizer, context, chunks, self.config.max_doc_tokens, self.config.chunking)
        return [self.wrapper.wrap(ids) for ids in parts]

    def loss(self, batch: list[tuple[QARecord, Target, int]], with_other: bool = False) -> tuple[torch.Tensor, dict]:
        """Answer loss with each row's own adapter; with the contrastive term in training, or
        ``with_other``, also with another document's adapter (``info["kl_other"]``)."""
        chunk_acts, owners = [], []
        documents = self.read_documents([(record, chunks) for record, _, chunks in batch])
        for row, chunks_of_row in enumerate(documents):
            for chunk in chunks_of_row:
                chunk_acts.append(chunk)
                owners.append(row)
        longest = max(ids.shape[0] for _, ids in chunk_acts)
        sources, _, width = chunk_acts[0][0].shape
        padded = torch.zeros(sources, len(chunk_acts), longest, width, device=self.device)
        ids = torch.full((len(chunk_acts), longest), self.base.tokenizer.pad_token_id, device=self.device)
        mask = torch.zeros(len(chunk_acts), longest, dtype=torch.bool, device=self.device)
        for i, (acts, chunk_ids) in enumerate(chunk_acts):
            padded[:, i, : acts.shape[1]] = acts.float()
            ids[i, : acts.shape[1]] = chunk_ids.to(self.device)
            mask[i, : acts.shape[1]] = True
        # The hypernetwork trains in fp32 (its master weights); the hooks cast to the model dtype.
        embeddings = None
        if self.hypernet.config.pointer:
            embeddings = self.base.model.get_input_embeddings()(ids).detach().float()
        chunk_factors, summary = self.model(padded, mask, embeddings, return_summary=True)
        rows = self.hypernet.assemble_per_row(chunk_factors, owners, len(batch))
        l1 = sum(a.abs().mean() + b.abs().mean() for a, b in chunk_factors.values())
        config = self.hypernet.config
        factors = {  # unbind, not a[i]: one backward op instead of one full-size zero fill per layer
            config.module_paths[name][layer]: (a_layer, b_layer)
            for name, (a, b) in rows.items()
            for layer, a_layer, b_layer in zip(config.target_layers, a.unbind(0), b.unbind(0), strict=True)
        }
        student = self._student([record for record, _, _ in batch], [target for _, target, _ in batch])
        with attached(self.base.model, factors):
            logits = response_logits(self.base.model, student)
        first = self.config.first_token_weight if self.model.training else 1.0
        kl, kl_rows = distillation_losses(logits, student, first)
        contrast = bool(self.config.contrastive_weight) and self.model.training
        loss = kl + self.config.l1_weight * l1
        info = {"kl": kl.detach().item(), "l1": l1.detach().item(), "tokens": int(student.response_mask.sum())}
        if self.config.answer_weight:
            answer = self._answer_loss(summary, owners, batch)
            loss = loss + self.config.answer_weight * answer
            info["answer"] = answer.detach().item()
        others = _other_rows([record.context for record, _, _ in batch]) if contrast or with_other else None
        if others is not None:
            swapped = {path: (a[others], b[others]) for path, (a, b) in factors.items()}
            reference_only = not contrast or self.config.contrastive_own_only
            grad = torch.is_grad_enabled() and not reference_only
            with attached(self.base.model, swapped), torch.set_grad_enabled(grad):
                logits_other = response_logits(self.base.model, student)
            kl_other, kl_other_rows = distillation_losses(logits_other, student, first)
            if contrast:
                loss = loss + self.config.contrastive_weight * self._shortfall(
                    kl, kl_other, kl_rows, kl_other_rows, [record for record, _, _ in batch])
            info["kl_other"] = kl_other.detach().item()
        if with_other:
            first_row: dict[str, int] = {}
            for row, (record, _, _) in enumerate(batch):
                first_row.setdefault(record.context, row)
            keep = [i for i, row in enumerate(owners) if first_row[batch[row][0].context] == row]
            info["spread"] = adapter_spread({name: (a[keep], b[keep]) for name, (a, b) in chunk_factors.items()})
        return loss, info

    def _shortfall(
        self,
        kl: torch.Tensor,
        kl_other: torch.Tensor,
        kl_rows: torch.Tensor,
        kl_other_rows: torch.Tensor,
        records: list[QARecord],
    ) -> torch.Tensor:
        """How far the answer loss with another document's adapter falls short of exceeding
        the own one's by the margin: on the batch means, or row by row over the rows whose
        answer comes from their document (``contrastive_per_row``)."""
        margin = self.config.contrastive_margin
        if not self.config.contrastive_per_row:
            return torch.relu(margin - (kl_other - kl))
        reading = torch.tensor([record.teacher_sees_context for record in records], device=kl_rows.device)
        if not reading.any():
            return kl * 0.0
        return torch.relu(margin - (kl_other_rows - kl_rows)[reading]).mean()

    def _answer_loss(
        self, summary: torch.Tensor, owners: list[int], batch: list[tuple[QARecord, Target, int]]
    ) -> torch.Tensor:
        """Negative log-likelihood of each row's answer tokens under its chunks' answer-head
        guesses (a mixture over the row's chunks: only one of them may hold the answer). Rows
        whose answer does not come from their document (unrelated questions) are left out."""
        if self.hypernet.answer_head is None:
            raise ValueError("answer_weight needs a hypernetwork with an answer head (start a new run)")
        vocabulary, special = self._answer_vocabulary
        log_probs = (self.hypernet.answer_head(summary) @ vocabulary.T).log_softmax(-1)  # [chunks, V]
        owner = torch.tensor(owners, device=log_probs.device)
        losses = []
        for row, (record, target, _) in enumerate(batch):
            tokens = sorted({t for t in target.tokens.tolist() if t not in special})
            if not tokens or not record.teacher_sees_context:
                continue
            chunks = log_probs[owner == row]
            mixture = chunks.logsumexp(0) - math.log(chunks.shape[0])
            losses.append(-mixture[tokens].mean())
        return torch.stack(losses).mean() if losses else summary.sum() * 0.0

    @functools.cached_property
    def _answer_vocabulary(self) -> tuple[torch.Tensor, set[int]]:
        """The frozen input embeddings in fp32 (the answer head's output space) and the special
        token ids that are no answer; converted once rather than every step."""
        weight = self.base.model.get_input_embeddings().weight.detach().float()
        return weight, set(self.base.tokenizer.all_special_ids)

    def _student(self, records: list[QARecord], targets: list[Target]) -> StudentBatch:
        """The questions alone (no document) with the target answers, on the device."""
        prompts = [question_prompt(self.base.tokenizer, record.question) for record in records]
        return student_batch(self.base.tokenizer, prompts, targets).to(self.device)

    @torch.no_grad()
    def probe(self, records: list[QARecord], name: str = "probe") -> dict[str, float]:
        """Answer loss on held-out records with each document's own adapter and with another
        document's adapter. Their difference (``<name>_gap``) is how much the adapters carry
        of their own document: zero while the network only learns answer formats."""
        self.model.eval()
        own, other, base, spread = [], [], [], []
        probe_key = tuple(r.key for r in records)
        known_base = self._probe_base.get(probe_key)
        for start in range(0, len(records) - 1, self.config.batch_size):
            rows = records[start : start + self.config.batch_size]
            if len(rows) < 2:
                break
            targets = [self.target(record, "gold") for record in rows]
            _, info = self.loss(list(zip(rows, targets, [1] * len(rows), strict=True)), with_other=True)
            if "kl_other" not in info:
                raise ValueError("the probe needs rows from at least two documents")
            own.append(info["kl"])
            other.append(info["kl_other"])
            spread.append(info["spread"])
            if known_base is None:  # the frozen model's loss never changes: measured once
                base.append(self.bare_loss(rows, targets))
        self.model.train()
        if known_base is None:
            known_base = self._probe_base[probe_key] = sum(base) / len(base)
        own_loss, other_loss = sum(own) / len(own), sum(other) / len(other)
        return {
            f"{name}_own": own_loss,
            f"{name}_other": other_loss,
            f"{name}_gap": other_loss - own_loss,
            f"{name}_base": known_base,
            f"{name}_spread": sum(spread) / len(spread),
        }

    @torch.no_grad()
    def bare_loss(self, records: list[QARecord], targets: list[Target]) -> float:
        """Answer loss of the base model without an adapter (and without the document)."""
        student = self._student(records, targets)
        return distillation_loss(response_logits(self.base.model, student), student).item()

    def probe_set(self, spec: dict | None = None) -> list[QARecord]:
        """Held-out documents (a seed no training source uses) of the source ``spec`` names;
        by default ``config.probe_data``, else synthetic facts."""
        spec = spec or self.config.probe_data
        if spec is None:
            return synthetic_fact_records(self.config.probe_records, seed=PROBE_SEED)
        spec = {**spec, "seed": PROBE_SEED, "target": "gold"}
        # A file source (SQuAD's train split) gives the same documents whatever the seed:
        # only documents that no training source holds make a held-out probe.
        trained = {record.context for source in self.sources for record in source.records}
        held_out = [r for r in load_sources([spec], self.base.tokenizer)[0].records if r.context not in trained]
        if not held_out:
            raise ValueError("every probe_data document is also a training document: the probe needs held-out ones")
        return held_out[: self.config.probe_records]

    def probe_sets(self) -> dict[str, list[QARecord]]:
        """The main probe and ``config.extra_probes``, by the prefix of their metrics."""
        probes = {"probe": self.probe_set()}
        for spec in self.config.extra_probes:
            name = f"probe_{spec.get('name', spec['kind'])}"
            if name in probes:
                raise ValueError(f"two probes are named {name!r}: give one a 'name'")
            probes[name] = self.probe_set(spec)
        return probes

    # ------------------------------------------------------------------ loop

    def train(self, until: int | None = None, minutes: float | None = None, fit_schedule: bool = False) -> Path:
        """Train to ``config.steps``, or stop early (checkpointed) at step ``until`` or once
        ``minutes`` of wall-clock time are spent (a rented machine's time budget).

        ``fit_schedule`` (with ``minutes``): time the first steps, then set ``config.steps`` so
        the learning rate finishes its decay as the time runs out, instead of stopping at a
        high learning rate part-way through a schedule sized for another machine."""
        config = self.config
        if fit_schedule and minutes is None:
            raise ValueError("fit_schedule needs a time budget (minutes)")
        requested_until = until
        until = config.steps if until is None else min(until, config.steps)
        deadline = None if minutes is None else time.monotonic() + 60 * minutes
        if config.prefill_teacher:
            self.prepare_teacher()
        self._write_config()
        metrics_path = self.out / "metrics.jsonl"
        bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        self.model.train()
        started, done_here, nonfinite = time.perf_counter(), 0, 0
        timing_from = started
        probes = self.probe_sets() if config.probe_every else {}
        while self.step < until:
            lr = learning_rate(config, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self._step_precision():
                loss, info = self.loss(self.sample(self.step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.hypernet.parameters(), config.grad_clip)
            if torch.isfinite(grad_norm):  # the same on every rank: gradients are all-reduced
                self.optimizer.step()
                nonfinite = 0
            else:  # one bad batch must not poison the weights; a run of them stops the run
                nonfinite += 1
                info["skipped"] = 1
                if nonfinite >= MAX_NONFINITE_STEPS:
                    raise FloatingPointError(f"{nonfinite} non-finite gradients in a row at step {self.step}")
            self.hypernet._fingerprint = None
            self.step += 1
            done_here += 1
            if done_here == FIT_SKIP_STEPS:
                timing_from = time.perf_counter()
            if fit_schedule and done_here == FIT_SKIP_STEPS + FIT_AFTER_STEPS:
                seconds_per_step = (time.perf_counter() - timing_from) / FIT_AFTER_STEPS
                config.steps = self.step + max(1, int(0.97 * (deadline - time.monotonic()) / seconds_per_step))
                until = config.steps if requested_until is None else min(requested_until, config.steps)
                bar.total = config.steps
                self._write_config()
            if deadline is not None and time.monotonic() >= deadline:
                until = self.step
            rate = done_here / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", steps_per_h=f"{3600 * rate:.0f}")
            probe_due = bool(probes) and (self.step % config.probe_every == 0 or self.step == until)
            if self.rank == 0 and (self.step % config.log_every == 0 or self.step == until or probe_due):
                row = {
                    "step": self.step,
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "steps_per_hour": 3600 * rate,
                    "time": time.time(),
                    **info,
                }
                if probe_due:
                    for name, records in probes.items():
                        row.update(self.probe(records, name))
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
            if self.rank == 0 and (self.step % config.save_every == 0 or self.step == until):
                self.save()
        bar.close()
        return self.out / "checkpoint"

    def _step_precision(self) -> contextlib.AbstractContextManager:
        if self.step_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.step_dtype)

    def _write_config(self) -> None:
        (self.out / "train_config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))

    def save(self) -> None:
        """Checkpoint atomically: write beside, then rename over the previous one."""
        final = self.out / "checkpoint"
        tmp = self.out / "checkpoint.partial"
        self.hypernet.save_pretrained(tmp)
        layout, tensors = _flatten_optimizer(self.optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, "optimizer": layout}))
        old = self.out / "checkpoint.old"
        if final.exists():
            if old.exists():  # left by a save cut short while removing it: it would block the rename
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
        plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")


def adapter_spread(chunk_factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    """How much the documents' adapters differ, relative to what they share: the RMS distance
    of each chunk's delta ``B @ A`` from the mean delta, over the mean's norm (all modules and
    layers together). Near zero, every document gets about the same adapter.

    Computed from the Gram matrix of the deltas, ``<B_n A_n, B_m A_m> = sum((B_n^T B_m) *
    (A_n A_m^T))``, so no full-size delta is ever formed. A ``[N, L, r, in]``, B ``[N, L, out, r]``.
    """
    gram = 0.0
    for a, b in chunk_factors.values():
        a, b = a.detach().float(), b.detach().float()
        gram = gram + (torch.einsum("nlor,mlos->nmlrs", b, b) * torch.einsum("nlri,mlsi->nmlrs", a, a)).sum((2, 3, 4))
    mean_sq = gram.sum() / gram.shape[0] ** 2
    if mean_sq <= 0:
        return 0.0
    spread_sq = (gram.diagonal().mean() - mean_sq).clamp(min=0)
    return float((spread_sq / mean_sq).sqrt())


def _other_rows(contexts: list[str]) -> list[int] | None:
    """For each row, the next row (cyclically) with another document; None if there is none."""
    result = []
    for index, context in enumerate(contexts):
        other = next((j % len(contexts) for j in range(index + 1, index + len(contexts))
                      if contexts[j % len(contexts)] != context), None)
        if other is None:
            return None
        result.append(other)
    return result


def _flatten_optimizer(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Optimizer state as JSON layout + named tensors (safetensors has nothing to execute)."""
    tensors, layout = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        layout["state"][str(index)] = {}
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
                layout["state"][str(index)][name] = "tensor"
            else:
                layout["state"][str(index)][name] = value
    return layout, tensors


def _drop_metrics_after(path: Path, step: int) -> None:
    """Forget the rows logged past the checkpoint a run resumes from (and a row cut short by
    the stop): the resumed run logs those steps again, and the plot wants each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept))


def _unflatten_optimizer(layout: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for index, values in layout["state"].items():
        state[int(index)] = {
            name: tensors[f"{index}.{name}"] if value == "tensor" else value for name, value in values.items()
        }
    return {"param_groups": layout["param_groups"], "state": state}
