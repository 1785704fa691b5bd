"""Pick the chunks of one long document that a question is about.

A document's adapter is the sum of its chunk adapters; past a few chunks the sum stops
answering (each chunk adds the part all chunks share), while the adapter of the right chunk
alone still does (``benchmarks/composition.py``). So a question to a long document is
answered with its best-matching chunks only, chosen by BM25 over the chunks' text.
"""

from __future__ import annotations

from collections.abc import Sequence

from doc2lora_rag.router.base import Corpus
from doc2lora_rag.router.bm25 import BM25Router


def best_chunks(question: str, chunk_texts: Sequence[str], k: int) -> list[int] | None:
    """Indices of the ``k`` chunks that match ``question`` best, in document order; None
    when no chunk shares a term with it (then no chunk is better than the others)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if len(chunk_texts) <= k:
        return list(range(len(chunk_texts)))
    router = BM25Router(threshold=0.0)
    ids = [str(i) for i in range(len(chunk_texts))]
    router.fit(Corpus(ids=ids, texts=list(chunk_texts), hashes=ids))
    scores = router.scores(question)
    if not scores.max() > 0:
        return None
    ranked = sorted(range(len(chunk_texts)), key=lambda i: (-scores[i], i))
    return sorted(i for i in ranked[:k] if scores[i] > 0)
