"""``Doc2LoRA``: the engine that turns documents into adapters and answers with them."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.base_model.activations import layer_inputs, reading_dtype
from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.loading import DEFAULT_MODEL_NAME, BaseModel, load_base_model
from doc2lora_rag.base_model.prompts import ChatWrapper, question_prompt
from doc2lora_rag.documents import MAX_DOCUMENT_CHARS, validate_text
from doc2lora_rag.errors import IncompatibleModelError
from doc2lora_rag.generation.generate import Completion, complete, stream
from doc2lora_rag.hypernetwork.chunking import (
    DEFAULT_CHUNKING,
    check_chunking,
    chunk_texts,
    chunk_token_ids,
    pad_right,
    token_budget_batches,
)
from doc2lora_rag.hypernetwork.config import HypernetConfig
from doc2lora_rag.hypernetwork.model import HyperNetwork
from doc2lora_rag.router.chunks import best_chunks

SHIPPED_CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINT = SHIPPED_CHECKPOINTS / "smollm2-135m-instruct"

Adapters = LoRAAdapter | Sequence[LoRAAdapter] | None


class Doc2LoRA:
    """A frozen base model plus the hypernetwork that writes adapters for it."""

    def __init__(
        self,
        base: BaseModel,
        hypernet: HyperNetwork,
        *,
        max_chars: int = MAX_DOCUMENT_CHARS,
        chunking: str = DEFAULT_CHUNKING,
        refine_steps: int = 0,
        refine_by_ending: bool = False,
        refine_answer_words: int | None = None,
        refine_quote_words: int | None = None,
    ):
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, not {refine_steps}")
        for name, value in (("refine_answer_words", refine_answer_words), ("refine_quote_words", refine_quote_words)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, not {value}")
        if refine_answer_words is not None and refine_quote_words is not None:
            raise ValueError("give refine_answer_words or refine_quote_words, not both: they are two targets")
        self.base = base
        self.fingerprint = model_fingerprint(base.model)
        if hypernet.config.base_fingerprint != self.fingerprint:
            raise IncompatibleModelError(
                f"hypernetwork was made for {hypernet.config.base_model_name!r} "
                f"(fingerprint {hypernet.config.base_fingerprint}), not {base.name!r} "
                f"(fingerprint {self.fingerprint})"
            )
        self.hypernet = hypernet.to(base.device, base.dtype).eval()
        self.wrapper = ChatWrapper.for_tokenizer(base.tokenizer)
        self.max_chars = max_chars
        self.chunking = check_chunking(chunking)  # where chunks end: see hypernetwork/chunking.py
        self.token_budget = 8192  # chunk tokens per hypernetwork batch
        # Gradient steps on each new adapter after the hypernetwork wrote it (0: none), fitting
        # it to the document's own sentences for seconds per chunk (training/refine.py).
        self.refine_steps = refine_steps
        # How every refinement of this engine fits sentences unless a call says otherwise (``refine``).
        self.refine_by_ending = refine_by_ending
        self.refine_answer_words = refine_answer_words
        self.refine_quote_words = refine_quote_words
        self.reading_dtype = reading_dtype(base.model)
        # A long document's chunk texts, kept for the next question to it (``focus``): splitting
        # means tokenising the whole document, a tenth of answering at 32K tokens.
        self._chunk_texts = functools.lru_cache(maxsize=16)(self._split_chunk_texts)

    @classmethod
    def from_pretrained(
        cls,
        hypernet: str | os.PathLike | HyperNetwork | None = None,
        base_model: str | os.PathLike | BaseModel | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        chunking: str = DEFAULT_CHUNKING,
        refine_steps: int = 0,
        refine_by_ending: bool = False,
        refine_answer_words: int | None = None,
        refine_quote_words: int | None = None,
        **hypernet_options,
    ) -> Doc2LoRA:
        """Load the engine. ``None`` picks the embedded SmolLM2 default and its shipped
        hypernetwork (or a fresh, untrained one where none fits, with a warning). ``chunking``
        says where a long document's chunks end (``"sentences"`` or ``"tokens"``);
        ``refine_steps`` refines every new adapter by that many gradient steps; ``refine_by_ending``,
        ``refine_answer_words`` and ``refine_quote_words`` are how every refinement fits its
        sentences (``refine``)."""
        base = (
            base_model if isinstance(base_model, BaseModel) else load_base_model(base_model, device=device, dtype=dtype)
        )
        if isinstance(hypernet, HyperNetwork):
            network = hypernet
        elif hypernet is not None:
            network = HyperNetwork.from_pretrained(hypernet, base_fingerprint=model_fingerprint(base.model))
        elif base.name == DEFAULT_MODEL_NAME and (DEFAULT_CHECKPOINT / "hypernet_config.json").is_file():
            network = HyperNetwork.from_pretrained(DEFAULT_CHECKPOINT, base_fingerprint=model_fingerprint(base.model))
        else:
            warnings.warn(
                f"no trained hypernetwork for {base.name}: using a fresh one, whose adapters "
                "change nothing until it is trained (doc2lora train)",
                stacklevel=2,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                network = HyperNetwork(HypernetConfig.for_base_model(base, **hypernet_options))
        return cls(
            base,
            network,
            chunking=chunking,
            refine_steps=refine_steps,
            refine_by_ending=refine_by_ending,
            refine_answer_words=refine_answer_words,
            refine_quote_words=refine_quote_words,
        )

    @property
    def model(self):
        return self.base.model

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def config(self) -> HypernetConfig:
        return self.hypernet.config

    # ------------------------------------------------------------------ ingest

    def internalize(self, text: str | bytes, *, metadata: dict | None = None) -> LoRAAdapter:
        """Read a document once and return the adapter that holds it."""
        return self.internalize_many([text], metadata=[metadata or {}])[0]

    def internalize_many(
        self, texts: Sequence[str | bytes], *, metadata: Sequence[dict] | None = None
    ) -> list[LoRAAdapter]:
        """Internalise several documents, batching their chunks together for throughput."""
        if isinstance(texts, str | bytes | bytearray | memoryview):  # else one adapter per character
            raise TypeError("internalize_many takes a list of documents; use internalize for one")
        texts = [validate_text(t, max_chars=self.max_chars) for t in texts]
        metadata = list(metadata) if metadata is not None else [{} for _ in texts]
        if len(metadata) != len(texts):
            raise ValueError(f"got {len(metadata)} metadata dicts for {len(texts)} documents")
        adapters = self._read(texts, metadata)
        if self.refine_steps:
            adapters = [self.refine(adapter, text) for adapter, text in zip(adapters, texts, strict=True)]
        return adapters

    def refine(
        self,
        adapter: LoRAAdapter,
        text: str | bytes,
        *,
        steps: int | None = None,
        chunks: Sequence[int] | None = None,
        question: str | None = None,
        by_ending: bool | None = None,
        answer_words: int | None = None,
        quote_words: int | None = None,
    ) -> LoRAAdapter:
        """``adapter`` (made from ``text``) after ``steps`` (default: ``refine_steps``, else 10)
        gradient steps per chunk on completing the chunk's own sentences: seconds per chunk on
        a CPU instead of one forward pass (docs/engine.md, "Refinement"). ``chunks``: refine
        only these; the adapter's ``metadata["refined_chunks"]`` lists those refined so far.
        ``question``: the sentences that match it best are fitted at every step. ``by_ending``:
        a step fits at most one sentence of each ending, so sentences that end alike (filler,
        boilerplate) do not crowd out one that ends its own way. ``answer_words``: how many of
        a sentence's last words are its answer (default 2); ``quote_words``: instead, the answer
        is all of a sentence after its first ``quote_words`` words, which reaches facts in its
        middle (docs/engine.md, "Fitting whole sentences"). They default to the engine's
        ``refine_by_ending``, ``refine_answer_words`` and ``refine_quote_words`` (the two word
        counts as a pair), so the index refines that way too."""
        from doc2lora_rag.training.refine import refine_adapter

        self.check_adapters(adapter)
        steps = steps if steps is not None else self.refine_steps or 10
        texts = self._checked_chunk_texts(adapter, text)
        if answer_words is None and quote_words is None:  # the call names no target: the engine's
            answer_words, quote_words = self.refine_answer_words, self.refine_quote_words
        return refine_adapter(
            self,
            adapter,
            texts,
            steps=steps,
            chunks=chunks,
            question=question,
            by_ending=self.refine_by_ending if by_ending is None else by_ending,
            answer_words=answer_words,
            quote_words=quote_words,
        )

    @torch.inference_mode()
    def _read(self, texts: list[str], metadata: list[dict]) -> list[LoRAAdapter]:
        """The hypernetwork's adapters for validated texts: one forward pass over all chunks."""
        chunks, owner = [], []
        for doc_index, text in enumerate(texts):
            for chunk in chunk_token_ids(self.tokenizer, self.wrapper, text, self.config.chunk_size, self.chunking):
                chunks.append(chunk)
                owner.append(doc_index)
        per_chunk = self._chunk_factors(chunks)
        adapters = []
        for doc_index in range(len(texts)):
            mine = [per_chunk[i] for i, o in enumerate(owner) if o == doc_index]
            stacked = {
                name: (torch.cat([f[name][0] for f in mine]), torch.cat([f[name][1] for f in mine]))
                for name in self.config.target_modules
            }
            adapters.append(self._adapter(self.hypernet.assemble(stacked), len(mine), metadata[doc_index]))
        return adapters

    def _chunk_factors(self, chunks: list[list[int]]) -> list[dict]:
        """Hypernetwork output for each chunk, computed in token-budget batches."""
        results: list[dict | None] = [None] * len(chunks)
        pad_id = self.tokenizer.pad_token_id
        for batch in token_budget_batches([len(c) for c in chunks], self.token_budget):
            ids, mask = pad_right([chunks[i] for i in batch], pad_id)
            ids, mask = ids.to(self.base.device), mask.to(self.base.device)
            activations = layer_inputs(self.model, ids, mask, self.config.source_layers, self.reading_dtype)
            embeddings = self.model.get_input_embeddings()(ids) if self.config.pointer else None
            factors = self.hypernet(activations, mask, embeddings)
            for row, index in enumerate(batch):
                results[index] = {n: (a[row : row + 1], b[row : row + 1]) for n, (a, b) in factors.items()}
        return results

    def _adapter(self, factors: dict, num_chunks: int, metadata: dict, bias_rank: int | None = None) -> LoRAAdapter:
        return LoRAAdapter(
            factors=factors,
            layers=list(self.config.target_layers),
            module_paths=self.config.module_paths,
            base_model_name=self.base.name,
            base_fingerprint=self.fingerprint,
            hypernet_fingerprint=self.hypernet.fingerprint,
            num_chunks=num_chunks,
            chunking=self.chunking,
            metadata=dict(metadata),
            bias_rank=self.config.bias_rank if bias_rank is None else bias_rank,
        )

    def focus(self, adapter: LoRAAdapter, text: str, question: str, max_chunks: int) -> LoRAAdapter:
        """``adapter`` (made from ``text``) cut down to the ``max_chunks`` chunks that match
        ``question`` best; unchanged when it has no more chunks than that, or when no chunk
        shares a term with the question. Summing many chunk adapters drowns what one chunk
        holds, while the right chunk's adapter alone answers (``benchmarks/composition.py``)."""
        chosen = self.focus_chunks(adapter, text, question, max_chunks)
        return adapter if chosen is None else adapter.select_chunks(chosen)

    def focus_chunks(self, adapter: LoRAAdapter, text: str, question: str, max_chunks: int) -> list[int] | None:
        """The chunks :meth:`focus` keeps, or None when it keeps the adapter whole."""
        if adapter.num_chunks <= max_chunks:
            return None
        return best_chunks(question, self._checked_chunk_texts(adapter, text), max_chunks)

    def answering_chunks(
        self, adapter: LoRAAdapter, text: str, question: str, max_chunks: int | None, *, refining: bool = False
    ) -> tuple[list[int] | None, list[int]]:
        """The chunks ``question`` is answered from: those :meth:`focus` keeps (None: the whole
        adapter, also when ``max_chunks`` is None), and those worth refining for it, which are
        none when no chunk matches a document that is not answered whole. A document answered
        whole answers from its best-matching chunk alone once its chunks are refined or are to
        be (``refining``): each refined block is fitted alone, and their sum loses what each
        holds (docs/engine.md, "Refinement")."""
        whole = max_chunks is None or adapter.num_chunks <= max_chunks
        if whole and adapter.num_chunks > 1 and (refining or adapter.refined_chunks):
            max_chunks = 1
        elif whole:
            return None, list(range(adapter.num_chunks))
        chosen = self.focus_chunks(adapter, text, question, max_chunks)
        return chosen, chosen or []

    def _checked_chunk_texts(self, adapter: LoRAAdapter, text: str | bytes) -> tuple[str, ...]:
        """The chunk texts of ``text`` as ``adapter`` was made from them, one per chunk."""
        texts = self._chunk_texts(validate_text(text, max_chars=self.max_chars), adapter.chunking)
        if len(texts) != adapter.num_chunks:
            raise ValueError(f"the text splits into {len(texts)} chunks, the adapter has {adapter.num_chunks}")
        return texts

    def _split_chunk_texts(self, text: str, chunking: str) -> tuple[str, ...]:
        return tuple(chunk_texts(self.tokenizer, text, self.config.chunk_size, chunking))

    # ------------------------------------------------------------------ answer

    def check_adapters(self, adapters: Adapters | Sequence[LoRAAdapter | None]) -> None:
        """Refuse adapters made for another base model before they touch it."""
        items = [adapters] if isinstance(adapters, LoRAAdapter) else list(adapters or [])
        for adapter in items:
            if adapter is not None and adapter.base_fingerprint != self.fingerprint:
                raise IncompatibleModelError(
                    f"adapter was made for {adapter.base_model_name!r} "
                    f"(fingerprint {adapter.base_fingerprint}), not this base model ({self.fingerprint})"
                )

    def prompt(self, question: str, context: str | None = None) -> str:
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        return question_prompt(self.tokenizer, question, context)

    def generate(
        self,
        question: str,
        *,
        adapters: Adapters = None,
        context: str | None = None,
        max_new_tokens: int = 128,
        stop: Sequence[str] | None = None,
    ) -> str:
        """Answer ``question`` with adapters attached, or with ``context`` in the prompt, or
        with the base model alone."""
        return self.complete(
            question, adapters=adapters, context=context, max_new_tokens=max_new_tokens, stop=stop
        ).text

    def complete(
        self,
        question: str,
        *,
        adapters: Adapters = None,
        context: str | None = None,
        max_new_tokens: int = 128,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        """Like :meth:`generate`, returning token counts and the finish reason too."""
        self.check_adapters(adapters)
        return complete(
            self.base,
            [self.prompt(question, context)],
            adapters=adapters,
            max_new_tokens=max_new_tokens,
            stop=stop,
        )[0]

    def generate_batch(
        self,
        questions: Sequence[str],
        *,
        adapters: Sequence[LoRAAdapter | None] | None = None,
        contexts: Sequence[str | None] | None = None,
        max_new_tokens: int = 128,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        """Answer many questions in one batch; ``adapters[i]`` applies to question i only."""
        if adapters is not None and len(adapters) != len(questions):
            raise ValueError("give one adapter (or None) per question")
        self.check_adapters(adapters)
        contexts = contexts or [None] * len(questions)
        prompts = [self.prompt(q, c) for q, c in zip(questions, contexts, strict=True)]
        return complete(
            self.base,
            prompts,
            adapters=adapters,
            per_row=adapters is not None,
            max_new_tokens=max_new_tokens,
            stop=stop,
        )

    def stream(
        self,
        question: str,
        *,
        adapters: Adapters = None,
        context: str | None = None,
        max_new_tokens: int = 128,
        stop: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """Yield the answer piece by piece."""
        self.check_adapters(adapters)
        yield from stream(
            self.base,
            self.prompt(question, context),
            adapters=adapters,
            max_new_tokens=max_new_tokens,
            stop=stop,
        )
