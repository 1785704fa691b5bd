"""One lock per frozen model: hooks are attached to the shared model, so two threads must
not run it with different adapters (or read layer inputs) at the same time."""

from __future__ import annotations

import threading
import weakref

from torch import nn

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    with _guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock
