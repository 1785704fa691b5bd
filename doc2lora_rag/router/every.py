"""Route to every document: for small corpora, where choosing is not worth the risk."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from doc2lora_rag.router.base import Corpus, RouteCache, RouteHit, Router


class AllRouter(Router):
    """Every (filter-allowed) document, each with score 1; ``k`` is ignored.

    Each document adds its rank to the combined adapter, so keep corpora small with it.
    """

    name = "all"

    def __init__(self, *, threshold: float = 0.0):
        self.threshold = threshold
        self._ids: list[str] = []

    def fit(self, corpus: Corpus, cache: RouteCache | None = None) -> None:
        self._ids = list(corpus.ids)

    @property
    def fitted_ids(self) -> list[str]:
        return self._ids

    def scores(self, question: str) -> np.ndarray:
        return np.ones(len(self._ids))

    def search(
        self,
        question: str,
        k: int | None,
        *,
        allowed: Sequence[bool] | np.ndarray | None = None,
        min_score: float | None = None,
    ) -> list[RouteHit]:
        return super().search(question, None, allowed=allowed, min_score=min_score)
