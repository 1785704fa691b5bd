"""What every router does: pick the documents whose adapters should answer a question.

Routers score documents in [0, 1] so that one relevance threshold means the same thing
whichever router is used; below it a document is not attached at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RouteHit:
    """One routed document and its normalised relevance in [0, 1]."""

    id: str
    score: float


@dataclass(frozen=True)
class Corpus:
    """The routable documents, in a fixed order that masks and score arrays follow."""

    ids: list[str]
    texts: list[str]
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class RouteCache(Protocol):
    """Persistent per-document router data (bytes) keyed by content hash."""

    def get(self, hashes: list[str]) -> dict[str, bytes]: ...

    def put(self, values: dict[str, bytes]) -> None: ...


class Router(ABC):
    """Fit on a corpus snapshot, then answer ``search`` until the corpus changes."""

    name: str = "router"
    threshold: float = 0.0

    @abstractmethod
    def fit(self, corpus: Corpus, cache: RouteCache | None = None) -> None:
        """(Re)build from ``corpus``; called lazily after the store changed."""

    @abstractmethod
    def scores(self, question: str) -> np.ndarray:
        """Relevance of every corpus document to ``question``, each in [0, 1]."""

    def search(
        self,
        question: str,
        k: int | None,
        *,
        allowed: Sequence[bool] | np.ndarray | None = None,
        min_score: float | None = None,
    ) -> list[RouteHit]:
        """The best ``k`` allowed documents scoring at least the threshold, best first."""
        ids = self.fitted_ids
        if not ids:
            return []
        scores = np.asarray(self.scores(question), dtype=np.float64)
        keep = scores >= (self.threshold if min_score is None else min_score)
        if allowed is not None:
            keep &= np.asarray(allowed, dtype=bool)
        candidates = np.flatnonzero(keep)
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        if k is not None:
            order = order[:k]
        return [RouteHit(ids[i], float(scores[i])) for i in order]

    @property
    @abstractmethod
    def fitted_ids(self) -> list[str]:
        """Ids of the corpus the router was last fitted on."""
