"""Answer metrics: SQuAD-style token F1, answer-contains accuracy, and the kind of a wrong number."""

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


NUMBER_ANSWER_KINDS = ("exact", "another key's", "reordered", "one edit", "other")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def number_answer_kind(prediction: str, number: str, others: Iterable[str] = ()) -> str:
    """How ``prediction`` answers a question whose answer is ``number`` (one of
    ``NUMBER_ANSWER_KINDS``): it contains it, or its first number is one of ``others`` (the
    document's numbers of other keys), or has the same digits in another order, or is one
    digit inserted, dropped or changed away, or something else. Near misses mean the digits got
    through but not their exact sequence; another key's number, that they got through unbound."""
    if answer_contains(prediction, number):
        return "exact"
    found = re.search(r"\d+", prediction)
    if found is None:
        return "other"
    if found.group() in set(others) - {number}:
        return "another key's"
    if sorted(found.group()) == sorted(number):
        return "reordered"
    return "one edit" if edit_distance(found.group(), number) == 1 else "other"
