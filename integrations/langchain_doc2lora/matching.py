"""Recognise stored documents inside a prompt, so their adapters can replace their text.

In the canonical RAG chains the chat model only ever sees the prompt a template stuffed
with the retrieved documents' text. The stored documents are known exactly (the index
keeps their text and its SHA-256), so a prompt can be scanned for them: every occurrence of
a stored document's full text is cut out and that document's adapter is attached instead.

Framework-neutral: ``llama_index_doc2lora`` uses it too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from doc2lora_rag.index import Doc2LoRAIndex as CoreIndex

DEFAULT_MIN_CHARS = 32
"""Documents shorter than this are never recognised: a short text (a word, a name) may
appear in a question by coincidence, and its adapter would replace words the user wrote."""


@dataclass(frozen=True)
class _Entry:
    length: int
    digest: str
    doc_id: str


class StoredTextMatcher:
    """Finds the exact text of an index's stored documents inside prompts.

    Each stored document is keyed by its first ``min_chars`` characters; a prompt is scanned
    once, and a key hit is confirmed by the SHA-256 of the whole candidate span (the digest
    the store already keeps), so only exact, complete copies of a document count. A match
    must not start or end inside a word. The table is rebuilt when the store changes.
    """

    def __init__(self, index: CoreIndex, *, min_chars: int = DEFAULT_MIN_CHARS):
        if min_chars < 1:
            raise ValueError("min_chars must be positive")
        self.index = index
        self.min_chars = min_chars
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._table: dict[str, list[_Entry]] = {}

    def _current(self) -> dict[str, list[_Entry]]:
        generation = self.index.store.generation()
        if generation == self._generation:
            return self._table
        with self._lock:
            if generation != self._generation:
                table: dict[str, list[_Entry]] = {}
                seen: set[str] = set()
                for doc in self.index.store.documents():
                    if len(doc.text) < self.min_chars or doc.content_hash in seen:
                        continue  # equal text has an equal adapter: one id is enough
                    seen.add(doc.content_hash)
                    table.setdefault(doc.text[: self.min_chars], []).append(
                        _Entry(len(doc.text), doc.content_hash, doc.id)
                    )
                for entries in table.values():
                    entries.sort(key=lambda e: -e.length)  # the longest complete copy wins
                self._table, self._generation = table, generation
            return self._table

    def extract(self, text: str) -> tuple[str, list[str]]:
        """``text`` without the stored documents it contains, and their ids in order of
        first appearance. Text between removed documents that is only whitespace (the
        separators a template put there) goes too; other text is kept, joined by blank lines.
        Without a match, ``text`` comes back unchanged."""
        table = self._current()
        width = self.min_chars
        if not table or len(text) < width:
            return text, []
        pieces, found = [], []
        start = position = 0
        last = len(text) - width
        while position <= last:
            entries = table.get(text[position : position + width])
            hit = None
            if entries is not None:
                hit = next((e for e in entries if _confirmed(text, position, e)), None)
            if hit is None:
                position += 1
                continue
            pieces.append(text[start:position])
            if hit.doc_id not in found:
                found.append(hit.doc_id)
            position = start = position + hit.length
        if not found:
            return text, []
        pieces.append(text[start:])
        return "\n\n".join(p.strip() for p in pieces if p.strip()), found


    def extract_from_turns(self, turns: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
        """Chat turns ``(role, text)`` without the stored documents in their system and user
        text (assistant turns are the model's own words and stay as they are); a turn left
        empty is dropped. Also returns the ids found, minus any deleted since the scan."""
        kept, ids = [], []
        for role, text in turns:
            if role != "assistant":
                text, found = self.extract(text)
                ids.extend(i for i in found if i not in ids)
                if found and not text:
                    continue
            kept.append((role, text))
        return kept, [i for i in ids if i in self.index]


def _confirmed(text: str, start: int, entry: _Entry) -> bool:
    end = start + entry.length
    if end > len(text):
        return False
    if start > 0 and text[start - 1].isalnum() and text[start].isalnum():
        return False
    if end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
        return False
    return hashlib.sha256(text[start:end].encode("utf-8")).hexdigest() == entry.digest
