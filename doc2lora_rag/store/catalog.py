"""The store's catalog in SQLite: one row per document, committed in one transaction.

Why SQLite rather than diskcache: a document's text, metadata, content hash, adapter
location and adapter checksums must become visible together or not at all, and SQLite gives
exactly that with one transaction per document. In WAL mode readers in other processes keep
reading a consistent snapshot while the single writer commits, and a process killed at any
instant leaves the last committed state. Every value is TEXT (JSON) or raw bytes, so nothing
is ever unpickled.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doc2lora_rag.errors import StoreError

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    adapter_dir TEXT NOT NULL UNIQUE,
    files TEXT NOT NULL,
    rank INTEGER NOT NULL,
    num_chunks INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    added_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_by_hash ON documents (content_hash);
CREATE TABLE IF NOT EXISTS route_cache (
    router TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (router, content_hash)
);
"""

_COLUMNS = (
    "id, content_hash, text, metadata, adapter_dir, files, rank, num_chunks, nbytes, "
    "added_at, updated_at"
)


@dataclass(frozen=True)
class StoredDocument:
    """A committed document: its text and metadata, and where its verified adapter lives."""

    id: str
    content_hash: str
    text: str
    metadata: dict[str, Any]
    adapter_dir: str
    files: dict[str, str] = field(repr=False)  # file name -> sha256
    rank: int
    num_chunks: int
    nbytes: int  # adapter bytes on disk
    added_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: tuple) -> StoredDocument:
        values = list(row)
        for index, column in ((3, "metadata"), (5, "files")):
            try:
                values[index] = json.loads(values[index])
            except (TypeError, ValueError):
                values[index] = None
            if not isinstance(values[index], dict):
                # SQLite keeps no checksums: a damaged row must name itself, not raise JSONDecodeError.
                raise StoreError(
                    f"the catalog row of document {values[0]!r} is damaged (its {column} is not a JSON "
                    "object); delete the document and add it again"
                )
        return cls(*values)

    def to_row(self) -> tuple:
        return (
            self.id, self.content_hash, self.text, json.dumps(self.metadata, sort_keys=True),
            self.adapter_dir, json.dumps(self.files, sort_keys=True), self.rank,
            self.num_chunks, self.nbytes, self.added_at, self.updated_at,
        )


class Catalog:
    """Typed access to the SQLite file; safe to share between threads of one process."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0):
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{path} is not a readable store catalog: {error}") from error
        version = self.get_meta("format_version")
        if version is None:
            with self.transaction(bump=False):
                if self.get_meta("format_version") is None:
                    self.set_meta("format_version", FORMAT_VERSION)
        elif version > FORMAT_VERSION:
            raise StoreError(
                f"store format {version} is newer than this library understands ({FORMAT_VERSION})"
            )

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self, *, bump: bool = True) -> Iterator[None]:
        """All statements inside commit together; ``bump`` marks the corpus as changed."""
        with self._lock:
            self._execute("BEGIN IMMEDIATE")
            try:
                yield
                if bump:
                    self._execute(
                        "INSERT INTO meta VALUES ('generation', '1') ON CONFLICT (key) "
                        "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                    )
                self._execute("COMMIT")
            except BaseException:
                # A Ctrl-C landing just after COMMIT finds nothing to roll back: the interrupt,
                # not "no transaction is active", is what the caller must see.
                if self._db.in_transaction:
                    self._execute("ROLLBACK")
                raise

    def _execute(self, sql: str, parameters: Iterable = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(parameters))
            except sqlite3.DatabaseError as error:
                raise StoreError(f"store catalog {self.path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- meta

    def get_meta(self, key: str) -> Any:
        row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return None if row is None else json.loads(row[0])
        except (TypeError, ValueError) as error:
            raise StoreError(f"store catalog {self.path}: its {key!r} entry is damaged ({error})") from error

    def set_meta(self, key: str, value: Any) -> None:
        self._execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, sort_keys=True)),
        )

    def generation(self) -> int:
        """A counter bumped by every committed change: routers rebuild when it moves."""
        return int(self.get_meta("generation") or 0)

    # ---------------------------------------------------------------- documents

    def count(self) -> int:
        return self._execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def ids(self) -> list[str]:
        return [r[0] for r in self._execute("SELECT id FROM documents ORDER BY added_at, id")]

    def get(self, doc_id: str) -> StoredDocument | None:
        row = self._execute(f"SELECT {_COLUMNS} FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return None if row is None else StoredDocument.from_row(row)

    def get_by_hash(self, content_hash: str) -> StoredDocument | None:
        row = self._execute(
            f"SELECT {_COLUMNS} FROM documents WHERE content_hash = ? LIMIT 1", (content_hash,)
        ).fetchone()
        return None if row is None else StoredDocument.from_row(row)

    def get_many(self, ids: list[str]) -> dict[str, StoredDocument]:
        rows = self._rows_of(_COLUMNS, ids)
        return {row[0]: StoredDocument.from_row(row) for row in rows}

    def all(self) -> list[StoredDocument]:
        rows = self._execute(f"SELECT {_COLUMNS} FROM documents ORDER BY added_at, id")
        return [StoredDocument.from_row(r) for r in rows]

    def adapter_dirs_of(self, ids: list[str]) -> dict[str, str]:
        """Adapter directory by id for the ids that exist, without parsing the rows' JSON, so a
        document whose row is damaged can still be found and deleted."""
        return dict(self._rows_of("id, adapter_dir", ids))

    def _rows_of(self, columns: str, ids: list[str]) -> list[tuple]:
        rows: list[tuple] = []
        for start in range(0, len(ids), 500):  # stay under SQLite's parameter limit
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows += self._execute(f"SELECT {columns} FROM documents WHERE id IN ({marks})", part).fetchall()
        return rows

    def adapter_dirs(self) -> set[str]:
        return {r[0] for r in self._execute("SELECT adapter_dir FROM documents")}

    def put(self, doc: StoredDocument) -> None:
        """Insert or replace one document (inside a transaction)."""
        self._execute(
            f"INSERT OR REPLACE INTO documents ({_COLUMNS}) VALUES ({','.join('?' * 11)})",
            doc.to_row(),
        )

    def set_metadata(self, doc_id: str, metadata: dict[str, Any]) -> None:
        self._execute(
            "UPDATE documents SET metadata = ?, updated_at = ? WHERE id = ?",
            (json.dumps(metadata, sort_keys=True), time.time(), doc_id),
        )

    def delete(self, doc_id: str) -> None:
        self._execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    # ---------------------------------------------------------------- routing data

    def route_cache_get(self, router: str, hashes: list[str]) -> dict[str, bytes]:
        """Router data (e.g. embeddings) by content hash, stored as raw bytes."""
        found: dict[str, bytes] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ",".join("?" * len(part))
            for content_hash, value in self._execute(
                f"SELECT content_hash, value FROM route_cache "
                f"WHERE router = ? AND content_hash IN ({marks})",
                [router, *part],
            ):
                found[content_hash] = bytes(value)
        return found

    def route_cache_put(self, router: str, values: dict[str, bytes]) -> None:
        with self.transaction(bump=False):
            for content_hash, value in values.items():
                self._execute(
                    "INSERT OR REPLACE INTO route_cache VALUES (?, ?, ?)",
                    (router, content_hash, sqlite3.Binary(value)),
                )

    def prune_route_cache(self) -> None:
        with self.transaction(bump=False):
            self._execute(
                "DELETE FROM route_cache WHERE content_hash NOT IN "
                "(SELECT content_hash FROM documents)"
            )
