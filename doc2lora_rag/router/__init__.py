"""Routers choose which stored adapters answer a question: BM25, embeddings, or all."""

from __future__ import annotations

from typing import Any

from doc2lora_rag.router.base import Corpus, RouteCache, RouteHit, Router
from doc2lora_rag.router.bm25 import BM25Router
from doc2lora_rag.router.embedding import EmbeddingRouter, embeddings_available
from doc2lora_rag.router.every import AllRouter
from doc2lora_rag.router.filters import check_filters, matches

_NAMES = {
    "bm25": BM25Router,
    "embedding": EmbeddingRouter,
    "embeddings": EmbeddingRouter,
    "dense": EmbeddingRouter,
    "all": AllRouter,
}


def make_router(spec: str | Router = "bm25", **options: Any) -> Router:
    """A router by name (``"bm25"``, ``"embedding"``, ``"all"``) or the instance given."""
    if isinstance(spec, Router):
        if options:
            raise TypeError("router options apply only when the router is given by name")
        return spec
    try:
        kind = _NAMES[str(spec).lower()]
    except KeyError:
        raise ValueError(f"unknown router {spec!r}; choose one of {sorted(set(_NAMES))}") from None
    return kind(**options)


__all__ = [
    "AllRouter",
    "BM25Router",
    "Corpus",
    "EmbeddingRouter",
    "RouteCache",
    "RouteHit",
    "Router",
    "check_filters",
    "embeddings_available",
    "make_router",
    "matches",
]
