"""``Doc2LoRAIndex``: a knowledge index whose "vectors" are adapters.

Documents go in and each becomes a LoRA adapter in an on-disk store; a question is routed to
the most relevant documents and answered by the base model with their adapters attached
(rank-concatenated), instead of with their text stuffed into the prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.documents import (
    MAX_DOCUMENT_CHARS,
    DocumentInput,
    check_id,
    coerce_document,
    coerce_documents,
    derived_id,
)
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.errors import AdapterFormatError, InvalidDocumentError, StoreError, UnknownIdError, positive_int
from doc2lora_rag.router import Corpus, RouteHit, Router, check_filters, make_router, matches
from doc2lora_rag.store import AdapterStore, StoredDocument

DEFAULT_K = 3
# Training composes at most 3 chunk adapters; past that the sum stops answering.
DEFAULT_MAX_CHUNKS = 3


class Retrieved(NamedTuple):
    """One routed document as retrievers want it: ``(id, text, metadata, score)``."""

    id: str
    text: str
    metadata: dict[str, Any]
    score: float


@dataclass(frozen=True)
class Source:
    """A document whose adapter took part in an answer, with its routing score in [0, 1]."""

    id: str
    metadata: dict[str, Any]
    score: float


@dataclass
class Answer:
    """The answer text and where it came from.

    ``base_model_only`` is True when no document scored above the relevance threshold: the
    base model answered alone, with nothing from the index.
    """

    text: str
    sources: list[Source] = field(default_factory=list)
    adapter_ids: list[str] = field(default_factory=list)
    base_model_only: bool = False
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __str__(self) -> str:
        return self.text


class StreamingAnswer:
    """Iterate for the answer's pieces; ``sources`` etc. are known before the first piece
    (routing happens first) and ``text`` holds what has been streamed so far."""

    def __init__(self, pieces: Iterator[str], sources: list[Source], adapter_ids: list[str], base_model_only: bool):
        self._pieces = pieces
        self.sources = sources
        self.adapter_ids = adapter_ids
        self.base_model_only = base_model_only
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece


@dataclass(frozen=True)
class _Snapshot:
    """The corpus the router was fitted on, tagged with the store generation it reflects."""

    generation: int
    corpus: Corpus
    metadata: list[dict[str, Any]]


class _StoreRouteCache:
    """Lets a router keep per-document data (embeddings) in the store's catalog."""

    def __init__(self, store: AdapterStore, key: str):
        self.store, self.key = store, key

    def get(self, hashes: list[str]) -> dict[str, bytes]:
        return self.store.catalog.route_cache_get(self.key, hashes)

    def put(self, values: dict[str, bytes]) -> None:
        self.store.catalog.route_cache_put(self.key, values)


class Doc2LoRAIndex:
    """Add, update, delete and query documents held as adapters.

    ``store``: an :class:`AdapterStore`, a directory, or None for the per-user default store.
    ``engine``: a :class:`Doc2LoRA`, or None to load ``Doc2LoRA.from_pretrained()`` on first
    use (routing, ``get`` and ``retrieve`` never need it). ``router``: ``"bm25"`` (default),
    ``"embedding"``, ``"all"`` or a :class:`Router`. ``k``: adapters per question;
    ``threshold``: the router's minimum normalised score (None keeps the router's default);
    ``max_chunks``: a routed document with more chunks than this answers with the chunks that
    match the question best (None: all of them), and one with refined chunks answers with
    its best-matching chunk alone, since refined blocks do not sum; ``batch_size``: documents
    internalised together while ingesting. ``refine_on_query``: refine by that many gradient
    steps each chunk a question is answered from that is not refined yet, and keep it refined
    in the store (0, the default: never; see :meth:`refine`).
    """

    def __init__(
        self,
        store: AdapterStore | str | os.PathLike | None = None,
        engine: Doc2LoRA | None = None,
        router: str | Router = "bm25",
        *,
        k: int = DEFAULT_K,
        threshold: float | None = None,
        max_chunks: int | None = DEFAULT_MAX_CHUNKS,
        cache_size: int = 64,
        max_new_tokens: int = 128,
        batch_size: int = 32,
        max_chars: int | None = None,
        lock_timeout: float = 60.0,
        create: bool = True,
        refine_on_query: int = 0,
    ):
        # Settings are checked before the store folder is made: a bad one leaves nothing behind.
        self.k = positive_int(k, "k")
        self.max_chunks = None if max_chunks is None else positive_int(max_chunks, "max_chunks")
        self.max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
        self.refine_on_query = 0 if refine_on_query == 0 else positive_int(refine_on_query, "refine_on_query")
        self.max_chars = max_chars or (engine.max_chars if engine is not None else MAX_DOCUMENT_CHARS)
        if engine is not None:
            self._check_max_chars(engine)  # before the store is created
        if isinstance(store, AdapterStore):
            self.store = store
        else:
            self.store = AdapterStore(store, create=create, cache_size=cache_size, lock_timeout=lock_timeout)
        self.router = make_router(router, **({} if threshold is None else {"threshold": threshold}))
        self.batch_size = max(1, batch_size)
        self._engine: Doc2LoRA | None = None
        self._engine_lock = threading.Lock()
        # Held from fitting through searching: a refit in another thread between the two
        # would score the new corpus against the old one's ids and filter mask.
        self._snapshot_lock = threading.RLock()
        self._snapshot: _Snapshot | None = None
        if engine is not None:
            self._attach(engine)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_documents(
        cls,
        docs: Iterable[Any] | Any,
        store: AdapterStore | str | os.PathLike | None = None,
        engine: Doc2LoRA | None = None,
        router: str | Router = "bm25",
        *,
        ids: Sequence[str] | None = None,
        **opts: Any,
    ) -> Doc2LoRAIndex:
        """Open (or create) a store and add ``docs`` to it; bad documents are refused before
        the store is even created."""
        max_chars = opts.get("max_chars") or (engine.max_chars if engine is not None else MAX_DOCUMENT_CHARS)
        inputs = coerce_documents(docs, ids, max_chars=max_chars)
        index = cls(store, engine, router, **opts)
        index._ingest(inputs)
        return index

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        engine: Doc2LoRA | None = None,
        router: str | Router = "bm25",
        **opts: Any,
    ) -> Doc2LoRAIndex:
        """Open an existing store; refuses a path that is not one (StoreError)."""
        return cls(path, engine, router, create=False, **opts)

    @property
    def engine(self) -> Doc2LoRA:
        """The engine, loaded on first use and checked against the store's fingerprints."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._attach(Doc2LoRA.from_pretrained())
        return self._engine

    def _attach(self, engine: Doc2LoRA) -> None:
        self._check_max_chars(engine)
        self.store.bind(engine.base.name, engine.fingerprint, engine.hypernet.fingerprint)
        self._engine = engine

    def _check_max_chars(self, engine: Doc2LoRA) -> None:
        """Documents the index accepts but the engine refuses would fail mid-ingest."""
        if self.max_chars > engine.max_chars:
            raise ValueError(
                f"max_chars={self.max_chars:,} is over the engine's limit of {engine.max_chars:,}; "
                "raise engine.max_chars first"
            )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Doc2LoRAIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Doc2LoRAIndex(store={str(self.store.path)!r}, router={self.router.name!r}, documents={len(self)})"

    # ---------------------------------------------------------------- documents

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.store

    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, ids: str | Sequence[str]) -> list[StoredDocument]:
        """Stored documents by id, in order; an unknown id raises UnknownIdError."""
        return self.store.get(ids)

    def add_documents(self, docs: Iterable[Any] | Any, ids: Sequence[str] | None = None) -> list[str]:
        """Add documents and return their ids, in order.

        Every document is validated before anything is written. Without an id, a
        document's id is derived from its content hash. Text already stored under the id
        makes no new adapter (a metadata change is still recorded); changed text under a
        known id replaces that document's adapter.
        """
        return self._ingest(coerce_documents(docs, ids, max_chars=self.max_chars))

    def update(self, doc_id: str, doc: Any) -> str:
        """Replace an existing document. A plain string keeps the stored metadata."""
        check_id(doc_id)
        existing = self.store.find(doc_id)
        if existing is None:
            raise UnknownIdError(f"no document with id {doc_id!r} to update")
        new = coerce_document(doc, id=doc_id, max_chars=self.max_chars)
        if isinstance(doc, str | bytes | bytearray | memoryview):
            new = dataclasses.replace(new, metadata=existing.metadata)
        return self._ingest([new])[0]

    def delete(self, ids: str | Sequence[str]) -> None:
        """Delete documents and their adapters; an unknown id deletes nothing."""
        self.store.delete(ids)

    def _ingest(self, inputs: list[DocumentInput]) -> list[str]:
        planned: dict[str, DocumentInput] = {}
        order = []
        for item in inputs:
            doc_id = item.id if item.id is not None else derived_id(item.text)
            earlier = planned.get(doc_id)
            if earlier is not None and earlier.content_hash != item.content_hash:
                raise InvalidDocumentError(f"id {doc_id!r} is given twice with different text")
            planned[doc_id] = item
            order.append(doc_id)
        stored = self.store.catalog.get_many(list(planned))
        to_build, metadata_only = [], []
        for doc_id, item in planned.items():
            old = stored.get(doc_id)
            if old is None or old.content_hash != item.content_hash:
                to_build.append((doc_id, item))
            elif old.metadata != item.metadata:
                metadata_only.append((doc_id, item.metadata))
        for doc_id, metadata in metadata_only:
            self.store.set_metadata(doc_id, metadata)
        if to_build:
            engine = self.engine
            for start in range(0, len(to_build), self.batch_size):
                self._build(engine, to_build[start : start + self.batch_size])
        return order

    def _build(self, engine: Doc2LoRA, batch: list[tuple[str, DocumentInput]]) -> None:
        """Make the adapters of one batch (reusing any stored one for identical text), then
        commit each document on its own, so an interrupted ingest keeps the finished ones."""
        adapters: dict[str, LoRAAdapter] = {}
        for _doc_id, item in batch:
            twin = self.store.find_by_hash(item.content_hash)
            if twin is not None and item.content_hash not in adapters:
                # A damaged or vanished twin is no loss: the adapter is computed afresh.
                with contextlib.suppress(AdapterFormatError, UnknownIdError, StoreError):
                    adapters[item.content_hash] = self.store.load_adapter(twin.id)
        fresh = list({i.content_hash: i.text for _, i in batch if i.content_hash not in adapters}.items())
        if fresh:
            made = engine.internalize_many([text for _, text in fresh])
            adapters.update({h: a for (h, _), a in zip(fresh, made, strict=True)})
        with self.store.writing():
            for doc_id, item in batch:
                adapter = adapters[item.content_hash].tagged(id=doc_id, content_hash=item.content_hash)
                self.store.put(doc_id, item.text, item.metadata, adapter, content_hash=item.content_hash)

    # ---------------------------------------------------------------- routing

    def _current(self) -> _Snapshot:
        generation = self.store.generation()
        snapshot = self._snapshot
        if snapshot is not None and snapshot.generation == generation:
            return snapshot
        with self._snapshot_lock:
            if self._snapshot is None or self._snapshot.generation != generation:
                docs = self.store.documents()
                corpus = Corpus(
                    ids=[d.id for d in docs], texts=[d.text for d in docs], hashes=[d.content_hash for d in docs]
                )
                key = getattr(self.router, "cache_key", None)
                self.router.fit(corpus, cache=_StoreRouteCache(self.store, key) if key else None)
                self._snapshot = _Snapshot(generation, corpus, [d.metadata for d in docs])
            return self._snapshot

    def route(
        self,
        question: str,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        *,
        min_score: float | None = None,
    ) -> list[RouteHit]:
        """The documents whose adapters would answer ``question``, best first."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        filters = check_filters(filters)
        k = self.k if k is None else positive_int(k, "k")
        with self._snapshot_lock:
            snapshot = self._current()
            allowed = None if filters is None else [matches(m, filters) for m in snapshot.metadata]
            return self.router.search(question, k, allowed=allowed, min_score=min_score)

    def retrieve(
        self,
        question: str,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        *,
        min_score: float | None = None,
    ) -> list[Retrieved]:
        """Routed documents with their text: what a retriever integration returns."""
        hits = self.route(question, k, filters, min_score=min_score)
        docs = self.store.catalog.get_many([h.id for h in hits])
        return [Retrieved(h.id, docs[h.id].text, docs[h.id].metadata, h.score) for h in hits if h.id in docs]

    def adapter(self, ids: Sequence[str], question: str | None = None) -> LoRAAdapter | None:
        """The rank-concatenated adapter of these documents (None for no documents); with
        ``question``, a document of more than ``max_chunks`` chunks adds its best-matching
        chunks only, as :meth:`query` does."""
        loaded = (self.store.load_document(i) for i in ids)
        return _combine([a if question is None else self._focused(a, doc, question) for doc, a in loaded])

    def _focused(self, adapter: LoRAAdapter, doc: StoredDocument, question: str) -> LoRAAdapter:
        """The adapter, cut to its chunks that match ``question`` when it has too many (or to the
        best one when they are refined), with those chunks refined first under ``refine_on_query``."""
        refining = bool(self.refine_on_query)
        chosen, answering = self.engine.answering_chunks(
            adapter, doc.text, question, self.max_chunks, refining=refining
        )
        if self.refine_on_query:
            adapter = self._refine_chunks(doc, adapter, answering, self.refine_on_query, best_effort=True)[0]
        return adapter if chosen is None else adapter.select_chunks(chosen)

    # ---------------------------------------------------------------- refinement

    def refine(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        steps: int = 10,
        question: str | None = None,
    ) -> list[str]:
        """Refine stored adapters in place by ``steps`` gradient steps per chunk
        (``Doc2LoRA.refine``: seconds per chunk, where ingest took one forward pass) and return
        the ids whose adapter changed. Every document by default; with ``question``, only the
        chunks a query would answer from. Chunks already refined are skipped, so an interrupted
        run resumes; text, metadata and routing stay as they are."""
        steps = positive_int(steps, "steps")
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise ValueError("question must be a non-empty string")
        ids = self.ids() if ids is None else [ids] if isinstance(ids, str) else list(ids)
        self.store.get(ids)  # an unknown id refines nothing
        changed = []
        for doc_id in ids:
            try:
                doc, adapter = self.store.load_document(doc_id)
            except UnknownIdError:  # deleted since
                continue
            chunks = range(adapter.num_chunks)
            if question:
                chunks = self.engine.answering_chunks(adapter, doc.text, question, self.max_chunks, refining=True)[1]
            if self._refine_chunks(doc, adapter, chunks, steps)[1]:
                changed.append(doc_id)
        return changed

    def _refine_chunks(
        self, doc: StoredDocument, adapter: LoRAAdapter, chunks: Iterable[int], steps: int, *, best_effort: bool = False
    ) -> tuple[LoRAAdapter, bool]:
        """``adapter`` with ``chunks`` refined where they are not yet, and whether the store took
        it (not when the document was replaced or deleted meanwhile: the newer version wins).
        ``best_effort``: a store busy with another writer is warned about, not raised, so that
        a question still gets its answer."""
        missing = sorted(set(chunks) - adapter.refined_chunks)
        if not missing:
            return adapter, False
        refined = self.engine.refine(adapter, doc.text, steps=steps, chunks=missing)
        try:
            stored = self.store.replace_adapter(doc.id, refined, content_hash=doc.content_hash)
        except StoreError as error:
            if not best_effort:
                raise
            warnings.warn(f"the refined adapter of {doc.id!r} was not kept: {error}", stacklevel=2)
            stored = None
        return refined, stored is not None

    def _plan(
        self, question: str, k: int | None, filters: dict | None, min_score: float | None
    ) -> tuple[LoRAAdapter | None, list[Source]]:
        """Route, then load and combine the routed adapters; ids deleted meanwhile drop out,
        and a document replaced meanwhile answers with its new version throughout."""
        hits = self.route(question, k, filters, min_score=min_score)
        adapters, sources = [], []
        for hit in hits:
            try:
                doc, adapter = self.store.load_document(hit.id)
            except UnknownIdError:  # deleted by another process since routing
                continue
            adapters.append(self._focused(adapter, doc, question))
            sources.append(Source(hit.id, doc.metadata, hit.score))
        return _combine(adapters), sources

    # ---------------------------------------------------------------- answering

    def _budget(self, max_new_tokens: int | None) -> int:
        """The call's token budget: its own (0 is refused, not taken for "default") or the index's."""
        return self.max_new_tokens if max_new_tokens is None else positive_int(max_new_tokens, "max_new_tokens")

    def query(
        self,
        question: str,
        *,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        min_score: float | None = None,
    ) -> Answer:
        """Answer with the top-``k`` routed adapters attached, or the base model alone when
        no document passes the threshold (``Answer.base_model_only``)."""
        budget = self._budget(max_new_tokens)
        adapter, sources = self._plan(question, k, filters, min_score)
        completion = self.engine.complete(question, adapters=adapter, max_new_tokens=budget, stop=stop)
        return Answer(
            text=completion.text,
            sources=sources,
            adapter_ids=[s.id for s in sources],
            base_model_only=not sources,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )

    def stream(
        self,
        question: str,
        *,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        min_score: float | None = None,
    ) -> StreamingAnswer:
        """Like :meth:`query`, but the answer arrives piece by piece as it is generated."""
        budget = self._budget(max_new_tokens)
        adapter, sources = self._plan(question, k, filters, min_score)
        pieces = self.engine.stream(question, adapters=adapter, max_new_tokens=budget, stop=stop)
        return StreamingAnswer(pieces, sources, [s.id for s in sources], not sources)

    def query_batch(
        self,
        questions: Sequence[str],
        *,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        min_score: float | None = None,
    ) -> list[Answer]:
        """Answer many questions in one batched generation, each row with its own adapters."""
        if isinstance(questions, str):
            raise TypeError("query_batch takes a list of questions; use query for one")
        budget = self._budget(max_new_tokens)
        plans = [self._plan(q, k, filters, min_score) for q in questions]
        if not plans:
            return []
        adapters = [adapter for adapter, _ in plans]
        completions = self.engine.generate_batch(
            list(questions),
            adapters=None if all(a is None for a in adapters) else adapters,
            max_new_tokens=budget,
            stop=stop,
        )
        return [
            Answer(
                text=c.text,
                sources=sources,
                adapter_ids=[s.id for s in sources],
                base_model_only=not sources,
                finish_reason=c.finish_reason,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
            )
            for c, (_, sources) in zip(completions, plans, strict=True)
        ]


def _combine(adapters: list[LoRAAdapter]) -> LoRAAdapter | None:
    if not adapters:
        return None
    return adapters[0] if len(adapters) == 1 else LoRAAdapter.concat(adapters)
