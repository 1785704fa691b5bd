"""The single-writer lock: one process writes a store at a time, readers never wait on it.

``fcntl.flock`` on a lock file is released by the kernel when its holder dies, so a killed
writer never leaves the store locked. Within a process the lock is re-entrant.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from doc2lora_rag.errors import StoreError


class WriterLock:
    """An exclusive, re-entrant, inter-process lock held while a store is being changed."""

    def __init__(self, path: Path, *, timeout: float = 60.0):
        self.path = path
        self.timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._descriptor: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; ``False`` if another process holds it."""
        if not self._thread_lock.acquire(blocking=False):
            return False
        if self._depth == 0 and not self._try_flock():
            self._thread_lock.release()
            return False
        self._depth += 1
        return True

    def acquire(self) -> None:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise StoreError(f"timed out after {self.timeout}s waiting for the store writer lock")
        if self._depth == 0:
            deadline = time.monotonic() + self.timeout
            while not self._try_flock():
                if time.monotonic() > deadline:
                    self._thread_lock.release()
                    raise StoreError(
                        f"another process is writing to the store ({self.path} is locked); "
                        f"gave up after {self.timeout}s"
                    )
                time.sleep(0.05)
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None
        self._thread_lock.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def _try_flock(self) -> bool:
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        return True
