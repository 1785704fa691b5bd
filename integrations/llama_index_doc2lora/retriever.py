"""``Doc2LoRARetriever``: routed documents as LlamaIndex nodes with their routing scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters

from doc2lora_rag.index import Retrieved

if TYPE_CHECKING:
    from llama_index_doc2lora.base import Doc2LoRAIndex

REF_DOC_ID = "ref_doc_id"
REF_DOC_HASH = "ref_doc_hash"
RESERVED_KEYS = (REF_DOC_ID, REF_DOC_HASH)
"""Metadata keys the index keeps for LlamaIndex's source-document bookkeeping."""


class Doc2LoRARetriever(BaseRetriever):
    """Routes a query to the index's documents (BM25 by default) and returns them as nodes.

    ``similarity_top_k`` defaults to the index's ``k``. ``min_score`` defaults to the
    router's relevance threshold, so the nodes returned are exactly the documents whose
    adapters answer; pass ``min_score=0`` for a plain top-k. ``filters``: a dict (exact
    match on each key) or ``MetadataFilters`` made of ``EQ`` filters joined by ``AND``.
    """

    def __init__(
        self,
        index: Doc2LoRAIndex,
        similarity_top_k: int | None = None,
        filters: MetadataFilters | dict[str, Any] | None = None,
        min_score: float | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self._index = index
        self.similarity_top_k = similarity_top_k
        self.filters = _as_dict(filters)
        self.min_score = min_score
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._index.core.retrieve(
            query_bundle.query_str, self.similarity_top_k, self.filters, min_score=self.min_score
        )
        return [NodeWithScore(node=to_node(hit), score=hit.score) for hit in hits]


def to_node(hit: Retrieved) -> TextNode:
    """A stored document as the node it came from (its source document as relationship)."""
    metadata = {k: v for k, v in hit.metadata.items() if k not in RESERVED_KEYS}
    node = TextNode(id_=hit.id, text=hit.text, metadata=metadata)
    ref = hit.metadata.get(REF_DOC_ID)
    if ref is not None:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
    return node


def _as_dict(filters: MetadataFilters | dict[str, Any] | None) -> dict[str, Any] | None:
    """Exact-match filters only: that is what the core index's router supports."""
    if filters is None or isinstance(filters, dict):
        return filters
    if filters.condition not in (None, FilterCondition.AND):
        raise NotImplementedError("only AND-joined metadata filters are supported")
    result = {}
    for item in filters.filters:
        if isinstance(item, MetadataFilters) or item.operator != FilterOperator.EQ:
            raise NotImplementedError("only exact-match (EQ) metadata filters are supported")
        result[item.key] = item.value
    return result
