"""``Doc2LoRAQueryEngine``: answer with the routed documents' adapters, not their text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle, QueryType

from llama_index_doc2lora.llm import Doc2LoRALLM
from llama_index_doc2lora.retriever import Doc2LoRARetriever


class Doc2LoRAQueryEngine(BaseQueryEngine):
    """Retrieve, then generate from the question alone with the retrieved nodes' adapters
    attached (rank-concatenated). The response keeps the nodes as ``source_nodes``;
    ``metadata`` has ``adapter_ids``, ``base_model_only`` (nothing relevant: the base model
    answered alone) and, without streaming, ``prompt_tokens``/``completion_tokens``."""

    def __init__(
        self,
        retriever: Doc2LoRARetriever,
        llm: Doc2LoRALLM,
        *,
        streaming: bool = False,
        max_new_tokens: int | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        self.retriever = retriever
        self.llm = llm
        self.streaming = streaming
        self.max_new_tokens = max_new_tokens
        super().__init__(callback_manager=callback_manager)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def retrieve(self, query_bundle: QueryType) -> list[NodeWithScore]:
        return self.retriever.retrieve(query_bundle)

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        nodes = self.retriever.retrieve(query_bundle)
        ids = [n.node.node_id for n in nodes]
        options: dict[str, Any] = {"adapter_ids": ids}
        if self.max_new_tokens:
            options["max_new_tokens"] = self.max_new_tokens
        metadata: dict[str, Any] = {"adapter_ids": ids, "base_model_only": not ids}
        if self.streaming:
            pieces = self.llm.stream_complete(query_bundle.query_str, **options)
            return StreamingResponse(
                response_gen=(p.delta for p in pieces if p.delta), source_nodes=nodes, metadata=metadata
            )
        result = self.llm.complete(query_bundle.query_str, **options)
        used = result.raw["adapter_ids"]  # a node deleted since retrieval has no adapter left
        metadata.update(adapter_ids=used, base_model_only=not used)
        metadata["prompt_tokens"] = result.raw["prompt_tokens"]
        metadata["completion_tokens"] = result.raw["completion_tokens"]
        return Response(response=result.text, source_nodes=nodes, metadata=metadata)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        """:meth:`_query` in a worker thread; a stream comes back as LlamaIndex's engines
        stream from ``aquery``: an ``AsyncStreamingResponse``."""
        response = await asyncio.to_thread(self._query, query_bundle)
        if isinstance(response, StreamingResponse):
            return AsyncStreamingResponse(
                response_gen=_in_threads(response.response_gen),
                source_nodes=response.source_nodes,
                metadata=response.metadata,
            )
        return response


async def _in_threads(pieces: Iterator[str]) -> AsyncIterator[str]:
    """A blocking stream's pieces, each generated in a worker thread (not on the event loop)."""
    done = object()
    while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
        yield piece
