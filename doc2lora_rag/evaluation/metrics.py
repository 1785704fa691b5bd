"""Answer metrics: SQuAD-style token F1 and answer-contains accuracy."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, fold white space (as SQuAD scores)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str | Iterable[str]) -> float:
    """Best token-overlap F1 of ``prediction`` against any gold answer."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for answer in golds:
        expected = normalize_answer(answer).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
        elif common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def answer_contains(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when a normalised gold answer appears in the normalised prediction."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    predicted = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(a)} " in predicted for a in golds if normalize_answer(a)))
