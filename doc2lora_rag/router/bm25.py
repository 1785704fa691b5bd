"""The default router: BM25 (bm25s) over document text, with scores normalised to [0, 1].

Normalisation: bm25s' Lucene variant gives each query term ``t`` at most ``idf(t)`` (as its
frequency in a document goes to infinity), so dividing a document's score by the sum of
``idf`` over the distinct query terms, unseen terms included, gives a score in [0, 1).
A document holding every query term once at average length scores ``1 / (1 + k1)`` (0.4);
one holding none scores 0. Unseen terms count, so a question mostly about words that no
document contains scores low everywhere, and is answered by the base model alone.
"""

from __future__ import annotations

import math
from collections import Counter

import bm25s
import numpy as np

from doc2lora_rag.router.base import Corpus, RouteCache, Router

DEFAULT_BM25_THRESHOLD = 0.15

# Lucene's English list (the one bm25s' "en" uses), plus question and auxiliary words: they
# fill questions and carry no topic, yet as unseen terms they would pull every score down.
_STOPWORD_TEXT = """
a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with
what which who whom whose when where why how many much did does do done was were has have had
been being can could would should may might must shall i you he she we me my your his her its
our us them about from than so also any some
"""
STOPWORDS = sorted(set(_STOPWORD_TEXT.split()))


class BM25Router(Router):
    """Lexical routing; rebuilt from the corpus text in well under a second per 10K paragraphs."""

    name = "bm25"

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_BM25_THRESHOLD,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | list[str] | None = None,
    ):
        self.threshold = threshold
        self.k1, self.b = k1, b
        self.stopwords = STOPWORDS if stopwords is None else stopwords
        self._ids: list[str] = []
        self._df: Counter[str] = Counter()
        self._index: bm25s.BM25 | None = None

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        return bm25s.tokenize(
            texts, stopwords=self.stopwords, return_ids=False, show_progress=False
        )

    def fit(self, corpus: Corpus, cache: RouteCache | None = None) -> None:
        self._ids = list(corpus.ids)
        if not corpus.ids:
            self._index, self._df = None, Counter()
            return
        tokens = self._tokens(list(corpus.texts))
        self._df = Counter(term for doc in tokens for term in set(doc))
        if not self._df:  # only stopwords and one-letter words: bm25s cannot index that
            self._index = None
            return
        index = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        index.index(tokens, show_progress=False)
        self._index = index

    @property
    def fitted_ids(self) -> list[str]:
        return self._ids

    def idf(self, term: str) -> float:
        """Lucene's idf, the one bm25s scores with (``df = 0`` for an unseen term)."""
        n, df = len(self._ids), self._df.get(term, 0)
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def scores(self, question: str) -> np.ndarray:
        scores = np.zeros(len(self._ids))
        if self._index is None:
            return scores
        terms = list(dict.fromkeys(self._tokens([question])[0]))
        known = [t for t in terms if t in self._df]
        if not known:
            return scores
        ceiling = sum(self.idf(t) for t in terms)
        raw = np.asarray(self._index.get_scores(known), dtype=np.float64)
        return np.clip(raw / ceiling, 0.0, 1.0)
