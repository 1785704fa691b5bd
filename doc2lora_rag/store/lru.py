"""An in-memory LRU of loaded adapters, so hot documents skip disk, hashing and parsing."""

from __future__ import annotations

import threading
from collections import OrderedDict

from doc2lora_rag.adapters.lora import LoRAAdapter


class AdapterLRU:
    """Adapters by document id, each tagged with the directory it came from.

    The tag makes a stale entry (the document was replaced by another process) a miss
    rather than a wrong answer. ``capacity=0`` disables caching.
    """

    def __init__(self, capacity: int = 64):
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str, LoRAAdapter]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, doc_id: str, tag: str) -> LoRAAdapter | None:
        with self._lock:
            item = self._items.get(doc_id)
            if item is None or item[0] != tag:
                self.misses += 1
                return None
            self._items.move_to_end(doc_id)
            self.hits += 1
            return item[1]

    def put(self, doc_id: str, tag: str, adapter: LoRAAdapter) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[doc_id] = (tag, adapter)
            self._items.move_to_end(doc_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def discard(self, doc_id: str) -> None:
        with self._lock:
            self._items.pop(doc_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._items
