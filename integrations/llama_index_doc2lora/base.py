"""``Doc2LoRAIndex`` as a LlamaIndex managed index: nodes in, adapters kept, answers out."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.chat_engine.types import BaseChatEngine, ChatMode
from llama_index.core.data_structs.data_structs import IndexDict
from llama_index.core.indices.base import BaseIndex
from llama_index.core.indices.managed.base import BaseManagedIndex
from llama_index.core.ingestion import run_transformations
from llama_index.core.schema import BaseNode, Document, MetadataMode, TransformComponent
from llama_index.core.storage.docstore.types import RefDocInfo
from llama_index.core.storage.storage_context import StorageContext
from llama_index.core.vector_stores.types import MetadataFilters

from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.index import Doc2LoRAIndex as CoreIndex
from doc2lora_rag.router import Router
from doc2lora_rag.store import AdapterStore
from langchain_doc2lora.runtime import core_index, open_index
from llama_index_doc2lora.llm import Doc2LoRALLM
from llama_index_doc2lora.query_engine import Doc2LoRAQueryEngine
from llama_index_doc2lora.retriever import REF_DOC_HASH, REF_DOC_ID, RESERVED_KEYS, Doc2LoRARetriever

logger = logging.getLogger(__name__)


class Doc2LoRAIndex(BaseManagedIndex):
    """A LlamaIndex index whose nodes are kept as LoRA adapters in an adapter store.

    Documents are split by the usual transformations (``Settings.transformations`` unless
    given); each node's text is read once by the hypernetwork. The store, not LlamaIndex's
    docstore, is the record: ``ref_doc_id`` and the source document's hash are kept in each
    node's metadata (reserved keys), so ``delete_ref_doc``, ``refresh_ref_docs`` and
    ``ref_doc_info`` work on a reloaded store too.

    ``store``: a directory (opened if it is a store, created if new or empty); ``None``
    gives a temporary store, deleted with this object, until :meth:`persist` copies it.
    ``index``: wrap an existing core index. ``embed_model`` is accepted for drop-in
    compatibility and ignored (routing reads text). Other keyword arguments (``engine``,
    ``router``, ``k``, ``threshold``, ...) go to :class:`doc2lora_rag.Doc2LoRAIndex`.
    """

    def __init__(
        self,
        nodes: Sequence[BaseNode] | None = None,
        *,
        index: CoreIndex | None = None,
        store: str | os.PathLike | None = None,
        engine: Doc2LoRA | None = None,
        router: str | Router = "bm25",
        transformations: list[TransformComponent] | None = None,
        storage_context: StorageContext | None = None,
        callback_manager: CallbackManager | None = None,
        show_progress: bool = False,
        embed_model: Any = None,
        **opts: Any,
    ) -> None:
        if index is not None and (store is not None or engine is not None or opts):
            raise ValueError("give either index= or store/engine/options, not both")
        self.core: CoreIndex = index if index is not None else open_index(self, store, engine, router, opts)
        super().__init__(
            index_struct=IndexDict(),
            storage_context=storage_context,
            callback_manager=callback_manager,
            transformations=transformations,
            show_progress=show_progress,
        )
        if nodes:
            self._insert(nodes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core!r})"

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        storage_context: StorageContext | None = None,
        show_progress: bool = False,
        callback_manager: CallbackManager | None = None,
        transformations: list[TransformComponent] | None = None,
        **kwargs: Any,
    ) -> Doc2LoRAIndex:
        """A new index (see the class options) holding ``documents``, split into nodes."""
        index = cls(
            storage_context=storage_context,
            show_progress=show_progress,
            callback_manager=callback_manager,
            transformations=transformations,
            **kwargs,
        )
        index._add_documents(documents)
        return index

    @classmethod
    def load(
        cls, persist_dir: str | os.PathLike, engine: Doc2LoRA | None = None, router: str | Router = "bm25", **opts: Any
    ) -> Doc2LoRAIndex:
        """Open a persisted index (a store directory); refuses a path that is not one."""
        return cls(index=CoreIndex.load(persist_dir, engine, router, **opts))

    def persist(self, persist_dir: str | os.PathLike) -> None:
        """Make ``persist_dir`` hold exactly this index, for :meth:`load`.

        The index's own store is always durable; for another directory (new, empty, or a
        store of the same model) the documents and their adapters are copied over, without
        rerunning the hypernetwork, and documents not in this index are removed there.
        """
        source = self.core.store
        target_path = Path(persist_dir)
        if target_path.exists() and target_path.resolve() == source.path.resolve():
            return
        recorded = source.fingerprints
        with AdapterStore(target_path) as target:
            if recorded is not None:
                target.bind(recorded["base_model_name"], recorded["base_fingerprint"], recorded["hypernet_fingerprint"])
            with target.writing():
                kept = set()
                for doc in source.documents():
                    kept.add(doc.id)
                    there = target.find(doc.id)
                    if there is not None and there.content_hash == doc.content_hash:
                        if there.metadata != doc.metadata:
                            target.set_metadata(doc.id, doc.metadata)
                        continue
                    adapter = source.load_adapter(doc.id)
                    target.put(doc.id, doc.text, doc.metadata, adapter, content_hash=doc.content_hash)
                stale = [i for i in target.ids() if i not in kept]
                if stale:
                    target.delete(stale)

    # ---------------------------------------------------------------- writing

    def _add_documents(self, documents: Sequence[Document]) -> list[str]:
        """Split documents into nodes and add them in one batch (the hypernetwork batches
        chunks across nodes); each node records its source document's id and hash."""
        hashes = {doc.id_: doc.hash for doc in documents}
        nodes = run_transformations(list(documents), self._transformations, show_progress=self._show_progress)
        return self._add_nodes(nodes, hashes)

    def _add_nodes(self, nodes: Sequence[BaseNode], hashes: dict[str, str] | None = None) -> list[str]:
        entries = []
        for node in nodes:
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if not text.strip():
                continue
            metadata = {k: v for k, v in node.metadata.items() if k not in RESERVED_KEYS}
            if node.ref_doc_id is not None:
                metadata[REF_DOC_ID] = node.ref_doc_id
                if hashes and node.ref_doc_id in hashes:
                    metadata[REF_DOC_HASH] = hashes[node.ref_doc_id]
            entries.append({"text": text, "metadata": metadata, "id": node.node_id})
        return self.core.add_documents(entries) if entries else []

    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        """Nodes inserted directly (``insert_nodes``) carry no source-document hash, so
        ``refresh_ref_docs`` treats their document as changed."""
        self._add_nodes(nodes)

    def insert(self, document: Document, **insert_kwargs: Any) -> None:
        """Split one document into nodes and add them."""
        self._add_documents([document])

    def _node_ids(self, ref_doc_id: str) -> list[str]:
        return [d.id for d in self.core.store.documents() if d.metadata.get(REF_DOC_ID) == ref_doc_id]

    def delete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Delete a source document's nodes and their adapters (a warning if none)."""
        ids = self._node_ids(ref_doc_id)
        if not ids:
            logger.warning("ref_doc_id %s not found, nothing deleted.", ref_doc_id)
            return
        self.core.delete(ids)

    def _delete_node(self, node_id: str, **delete_kwargs: Any) -> None:
        if node_id in self.core:
            self.core.delete([node_id])

    def update_ref_doc(self, document: Document, **update_kwargs: Any) -> None:
        """Replace a source document's nodes: the new ones are added before the old ones go,
        so an interruption never leaves the document missing."""
        old = self._node_ids(document.id_)
        new = set(self._add_documents([document]))
        stale = [i for i in old if i not in new]
        if stale:
            self.core.delete(stale)

    def refresh_ref_docs(self, documents: Sequence[Document], **update_kwargs: Any) -> list[bool]:
        """Insert new documents and update changed ones (by LlamaIndex's document hash);
        returns, per document, whether anything was done."""
        recorded: dict[str, set[Any]] = {}
        for doc in self.core.store.documents():
            ref = doc.metadata.get(REF_DOC_ID)
            if ref is not None:
                recorded.setdefault(ref, set()).add(doc.metadata.get(REF_DOC_HASH))
        done = []
        for document in documents:
            hashes = recorded.get(document.id_)
            if hashes is None:
                self.insert(document)
            elif hashes != {document.hash}:
                self.update_ref_doc(document)
            done.append(hashes != {document.hash})
        return done

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        """Source document id -> its node ids (and the first node's metadata)."""
        info: dict[str, RefDocInfo] = {}
        for doc in self.core.store.documents():
            ref = doc.metadata.get(REF_DOC_ID)
            if ref is None:
                continue
            if ref not in info:
                metadata = {k: v for k, v in doc.metadata.items() if k not in RESERVED_KEYS}
                info[ref] = RefDocInfo(node_ids=[], metadata=metadata)
            info[ref].node_ids.append(doc.id)
        return info

    # ---------------------------------------------------------------- querying

    def as_retriever(
        self,
        similarity_top_k: int | None = None,
        filters: MetadataFilters | dict[str, Any] | None = None,
        min_score: float | None = None,
        **kwargs: Any,
    ) -> Doc2LoRARetriever:
        """Routed nodes with their scores (see :class:`Doc2LoRARetriever`)."""
        return Doc2LoRARetriever(
            self,
            similarity_top_k=similarity_top_k,
            filters=filters,
            min_score=min_score,
            callback_manager=kwargs.get("callback_manager", self._callback_manager),
            verbose=kwargs.get("verbose", False),
        )

    def as_llm(self, **kwargs: Any) -> Doc2LoRALLM:
        """The base model with this index's adapters available (e.g. for a chat engine)."""
        return Doc2LoRALLM(index=self, **kwargs)

    def _llm_for(self, llm: Any) -> Any:
        """The LLM an engine of this index uses: by default this index's; an unbound
        :class:`Doc2LoRALLM` bound to this index; any other LLM as it is. A Doc2LoRALLM bound
        to another store is refused: it could not load this index's adapters."""
        if llm is None:
            return self.as_llm()
        if isinstance(llm, Doc2LoRALLM) and llm.index is None:
            return llm.model_copy(update={"index": self})
        if isinstance(llm, Doc2LoRALLM) and core_index(llm.index).store.path != self.core.store.path:
            raise ValueError(
                f"the llm is bound to the store {core_index(llm.index).store.path}, not this index's "
                f"{self.core.store.path}; pass an unbound Doc2LoRALLM or this index's as_llm()"
            )
        return llm

    def as_query_engine(self, llm: Any = None, **kwargs: Any) -> BaseQueryEngine:
        """Answers with the routed nodes' adapters attached and the nodes as sources.

        ``llm``: a :class:`Doc2LoRALLM` (an unbound one is bound to this index). Retriever
        options (``similarity_top_k``, ``filters``, ``min_score``), ``streaming`` and
        ``max_new_tokens`` are accepted. Another LLM than :class:`Doc2LoRALLM` cannot take
        adapters: it gets LlamaIndex's standard engine, with the node text in its prompt.
        """
        if llm is not None and not isinstance(llm, Doc2LoRALLM):
            return BaseIndex.as_query_engine(self, llm=llm, **kwargs)
        llm = self._llm_for(llm)
        retriever = self.as_retriever(
            similarity_top_k=kwargs.get("similarity_top_k"),
            filters=kwargs.get("filters"),
            min_score=kwargs.get("min_score"),
        )
        return Doc2LoRAQueryEngine(
            retriever,
            llm,
            streaming=kwargs.get("streaming", False),
            max_new_tokens=kwargs.get("max_new_tokens"),
            callback_manager=self._callback_manager,
        )

    def as_chat_engine(self, chat_mode: ChatMode = ChatMode.BEST, llm: Any = None, **kwargs: Any) -> BaseChatEngine:
        """LlamaIndex's chat engines, with the LLM chosen as for :meth:`as_query_engine` (not
        ``Settings.llm``): a bound :class:`Doc2LoRALLM` recognises the node text the engine
        puts in its prompt and attaches the nodes' adapters instead."""
        return BaseIndex.as_chat_engine(self, chat_mode, llm=self._llm_for(llm), **kwargs)
