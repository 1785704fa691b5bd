"""What the before/after example apps share, so that each pair differs only in the swap."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent

DATA = Path(__file__).parent / "data"
QUESTIONS = [
    "Who was the last resident keeper of Harrow Point Lighthouse?",
    "How long does the crossing of the Vell Ferry Service take?",
    "Who bred the Glassblower pear?",
]
MAX_TOKENS = 32


def hashed_words(text: str) -> list[float]:
    """Lower-cased words hashed into 512 buckets, L2-normalised: crude, but deterministic."""
    vector = [0.0] * 512
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha1(word.encode()).hexdigest(), 16) % 512] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class HashedWordsEmbedding(Embeddings):
    """LangChain face of :func:`hashed_words`, so nothing is downloaded."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [hashed_words(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return hashed_words(text)


class HashedWordsLlamaEmbedding(BaseEmbedding):
    """LlamaIndex face of :func:`hashed_words`, so nothing is downloaded."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return hashed_words(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return hashed_words(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return hashed_words(text)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(doc.page_content for doc in docs)


class PromptTokens(BaseEventHandler):
    """Adds up the prompt tokens the model reports for each LlamaIndex call."""

    total: int = 0

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent) and event.response is not None:
            self.total += event.response.raw.get("prompt_tokens", 0)
