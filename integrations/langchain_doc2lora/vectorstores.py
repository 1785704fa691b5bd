"""``Doc2LoRAIndex`` as a LangChain vector store: the one line a RAG app swaps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.errors import UnknownIdError
from doc2lora_rag.index import Doc2LoRAIndex as CoreIndex
from doc2lora_rag.router import Router
from langchain_doc2lora.runtime import open_index


class Doc2LoRAIndex(VectorStore):
    """A LangChain ``VectorStore`` whose "vectors" are LoRA adapters.

    Every added document is read once by the hypernetwork and kept as an adapter in an
    adapter store; searches rank documents with the index's router (BM25 by default), so
    no embedding model is used: ``embedding`` is accepted for drop-in compatibility and
    ignored. Pair it with :class:`~langchain_doc2lora.ChatDoc2LoRA` bound to this index and
    the documents a chain retrieves reach the model as adapters instead of prompt text.

    ``store``: a directory to keep adapters in across runs (opened if it is a store,
    created if new or empty); ``None`` gives a temporary store deleted with this object,
    like an in-memory vector store. ``index``: wrap an existing core index instead.
    Other keyword arguments (``engine``, ``router``, ``k``, ``threshold``, ``cache_size``,
    ``batch_size``, ...) go to :class:`doc2lora_rag.Doc2LoRAIndex`.
    """

    def __init__(
        self,
        embedding: Embeddings | None = None,
        store: str | os.PathLike | None = None,
        *,
        index: CoreIndex | None = None,
        engine: Doc2LoRA | None = None,
        router: str | Router = "bm25",
        **opts: Any,
    ):
        if index is not None and (store is not None or engine is not None or opts):
            raise ValueError("give either index= or store/engine/options, not both")
        self.core: CoreIndex = index if index is not None else open_index(self, store, engine, router, opts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core!r})"

    @property
    def embeddings(self) -> Embeddings | None:
        """Always None: routing reads document text, not embeddings."""
        return None

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> Doc2LoRAIndex:
        """A new store (see the class options) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_documents(
        cls,
        documents: list[Document],
        embedding: Embeddings | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> Doc2LoRAIndex:
        """A new store (see the class options) holding ``documents`` under their own ids."""
        store = cls(embedding, **kwargs)
        store.add_documents(documents, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> Doc2LoRAIndex:
        """:meth:`from_texts` in an executor thread (ingest is CPU/GPU work)."""
        return await run_in_executor(None, lambda: cls.from_texts(texts, embedding, metadatas, ids=ids, **kwargs))

    @classmethod
    async def afrom_documents(
        cls,
        documents: list[Document],
        embedding: Embeddings | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> Doc2LoRAIndex:
        """:meth:`from_documents` in an executor thread."""
        return await run_in_executor(None, lambda: cls.from_documents(documents, embedding, ids=ids, **kwargs))

    # ---------------------------------------------------------------- documents

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Add or replace documents; returns their ids in order.

        ``ids`` (keyword) wins over each ``Document.id``; a document with neither gets the
        hash of its text as id. Text already stored under an id is not recomputed; new text
        under a known id replaces that document's adapter (upsert).
        """
        ids = kwargs.get("ids")
        if ids is not None and len(ids) != len(documents):
            raise ValueError(f"got {len(ids)} ids for {len(documents)} documents")
        return self.core.add_documents(list(documents), ids=ids)

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add or replace plain texts (see :meth:`add_documents`)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        documents = [
            Document(page_content=text, metadata=dict(metadatas[i]) if metadatas else {})
            for i, text in enumerate(texts)
        ]
        return self.add_documents(documents, ids=ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents and their adapters; unknown ids are skipped, ``None`` deletes all."""
        wanted = self.core.ids() if ids is None else [i for i in dict.fromkeys(ids) if i in self.core]
        if wanted:
            try:
                self.core.delete(wanted)
            except UnknownIdError:  # another process deleted one meanwhile: delete the rest
                self.core.delete([i for i in wanted if i in self.core])
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in the given order; unknown ids are skipped."""
        found = []
        for doc_id in dict.fromkeys(ids):
            stored = self.core.store.find(doc_id)
            if stored is not None:
                found.append(Document(id=stored.id, page_content=stored.text, metadata=stored.metadata))
        return found

    # ---------------------------------------------------------------- search

    def similarity_search_with_score(
        self,
        query: str,
        k: int | None = None,
        filter: dict[str, Any] | Callable[[Document], bool] | None = None,
        *,
        min_score: float = 0.0,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The top ``k`` documents (default: the index's ``k``) with their routing scores in
        [0, 1], best first.

        As with any LangChain vector store, no relevance threshold applies unless asked
        for: ``min_score`` (or the ``similarity_score_threshold`` retriever) sets one.
        ``filter``: a metadata dict (exact match on every key) or a predicate on Documents.
        Other keyword arguments (e.g. MMR's ``fetch_k``) are accepted and ignored.
        """
        k = self.core.k if k is None else k
        if k < 1:
            return []
        if callable(filter):
            hits = self.core.retrieve(query, k=max(1, len(self.core)), min_score=min_score)
            pairs = [(self._document(h), h.score) for h in hits]
            return [(d, s) for d, s in pairs if filter(d)][:k]
        hits = self.core.retrieve(query, k=k, filters=filter, min_score=min_score)
        return [(self._document(h), h.score) for h in hits]

    def similarity_search(
        self,
        query: str,
        k: int | None = None,
        filter: dict[str, Any] | Callable[[Document], bool] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The top ``k`` documents, best first (see :meth:`similarity_search_with_score`)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Routing scores are already relevance scores in [0, 1], higher is better."""
        return lambda score: score

    @staticmethod
    def _document(hit: Any) -> Document:
        return Document(id=hit.id, page_content=hit.text, metadata=dict(hit.metadata))
