"""Exact-match metadata filters: ``{"source": "faq.md", "year": 2024}``.

Values are compared after a JSON round trip, the same trip stored metadata took, so a
tuple in a filter matches the list that was stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def check_filters(filters: object) -> dict[str, Any] | None:
    """Normalise a filter mapping; ``None`` or ``{}`` means no filtering."""
    if filters is None:
        return None
    if not isinstance(filters, Mapping):
        raise TypeError(f"filters must be a mapping of metadata key -> value, not {filters!r}")
    try:
        normalised = json.loads(json.dumps(dict(filters), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TypeError(f"filter values must be JSON values: {error}") from error
    return normalised or None


def matches(metadata: Mapping[str, Any], filters: Mapping[str, Any] | None) -> bool:
    """True when every filter key is present in ``metadata`` with an equal value."""
    if not filters:
        return True
    return all(key in metadata and _same(metadata[key], value) for key, value in filters.items())


def _same(stored: Any, wanted: Any) -> bool:
    """Equal as JSON values: Python's ``True == 1`` would let a filter for ``true`` match ``1``."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(stored, list) and isinstance(wanted, list):
        return len(stored) == len(wanted) and all(map(_same, stored, wanted))
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return stored.keys() == wanted.keys() and all(_same(stored[k], wanted[k]) for k in stored)
    return stored == wanted
