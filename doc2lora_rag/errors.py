"""Typed errors, so callers can tell bad input from a broken store from a model mismatch."""

from __future__ import annotations


class Doc2LoRAError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidDocumentError(Doc2LoRAError, ValueError):
    """A document is empty, not text, binary, undecodable or too large."""


class IncompatibleModelError(Doc2LoRAError):
    """An adapter, hypernetwork or store was made for another base model or hypernetwork."""


class AdapterFormatError(Doc2LoRAError):
    """An adapter or checkpoint on disk is missing, malformed or tampered with."""


class UnknownIdError(Doc2LoRAError, KeyError):
    """An id names no stored document or adapter."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "unknown id"


class StoreError(Doc2LoRAError):
    """The adapter store cannot be opened, is busy with another writer, or is not a store."""


def positive_int(value: object, name: str) -> int:
    """``value`` if it is a whole number of at least 1 (``True`` is not one), else a ValueError
    that names the setting."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return value
