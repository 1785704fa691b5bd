"""Paired comparison of two ``doc2lora eval --json-out`` files.

On 40 questions a mean F1 moves by a few hundredths between two networks from the luck of the
draw alone. Scoring both networks on the same questions and looking at each question's
difference tells a change from that noise: the interval below is Student's t interval of the
mean paired difference (its spread is estimated from the same few questions, so the normal
quantile would make it too narrow: by 3% on 40 questions, by 15% on 10 needles), which is what a
shipping decision needs to read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

PASS_FAIL_METRICS = frozenset({"contains"})
"""Scores that are 1 or 0 per question: for these, which questions changed says more than a mean."""


@dataclass(frozen=True)
class Difference:
    """One score of one mode in one section, before and after, with the 95% interval of the
    mean per-question difference (``after - before`` +- ``half_width``)."""

    section: str
    mode: str
    metric: str
    before: float
    after: float
    half_width: float
    count: int
    gained: int | None = None
    lost: int | None = None

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return abs(self.delta) > self.half_width

    @property
    def sign_p(self) -> float | None:
        """Sign test p-value of ``gained`` against ``lost``, for pass/fail scores only."""
        return None if self.gained is None or self.lost is None else sign_test_p(self.gained, self.lost)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values`` (infinite for fewer than two: one value says
    nothing about the spread)."""
    if len(values) < 2:
        return math.inf
    mean = fmean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def t_95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom: bisection on
    P(|T| < t) in closed form for whole ``df`` (Abramowitz and Stegun 26.7.3-4; no SciPy)."""

    def central_mass(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        cos2, total = math.cos(theta) ** 2, 0.0
        if df % 2:  # odd: (2 / pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
            term = math.sin(theta) * math.cos(theta)
            for k in range(1, (df - 1) // 2 + 1):
                total += term
                term *= cos2 * 2 * k / (2 * k + 1)
            return 2 / math.pi * (theta + total)
        term = math.sin(theta)  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        for k in range(1, df // 2 + 1):
            total += term
            term *= cos2 * (2 * k - 1) / (2 * k)
        return total

    low, high = 0.0, 16.0
    while central_mass(high) < 0.95:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if central_mass(middle) < 0.95 else (low, middle)
    return (low + high) / 2


def paired_half_width(before: Sequence[float], after: Sequence[float]) -> float:
    """Half-width of the 95% t interval of the mean of ``after[i] - before[i]``."""
    if len(before) != len(after):
        raise ValueError(f"paired scores need equal lengths, got {len(before)} and {len(after)}")
    error = standard_error([a - b for a, b in zip(after, before, strict=True)])
    return error if math.isinf(error) else t_95(len(before) - 1) * error


def sign_test_p(gained: float, lost: float) -> float:
    """Two-sided exact sign test on paired pass/fail outcomes: the chance, if neither network
    were better, of a split at least as uneven as ``gained`` against ``lost`` among the items
    where they differ (ties carry no information and are left out). Counts may be whole floats."""
    if gained < 0 or lost < 0 or gained != int(gained) or lost != int(lost):
        raise ValueError(f"counts must be non-negative whole numbers, got {gained} and {lost}")
    gained, lost = int(gained), int(lost)  # sums of 0.0/1.0 scores arrive as floats
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def gained_and_lost(before: Sequence[float], after: Sequence[float]) -> tuple[int, int]:
    """Of paired pass/fail outcomes, how many passed only after (gained) and only before (lost)."""
    pairs = list(zip(before, after, strict=True))
    return sum(a > b for b, a in pairs), sum(b > a for b, a in pairs)


def compare_results(before: dict, after: dict) -> list[Difference]:
    """Every score that both evaluations kept per question, section by section, for the
    sections they share. Raises ``ValueError`` when they share none, or when a shared section
    asked different questions (another ``--limit`` or data file)."""
    try:
        old, new = _sections(before), _sections(after)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"not the JSON of doc2lora eval --json-out ({error!r})") from error
    shared = [name for name in old if name in new]
    if not shared:
        raise ValueError(
            "the two evaluations share no section with per-question scores "
            "(files written by older versions of doc2lora eval keep only means)"
        )
    differences: list[Difference] = []
    for section in shared:
        (old_keys, old_scores), (new_keys, new_scores) = old[section], new[section]
        if old_keys != new_keys:
            raise ValueError(f"{section}: the two evaluations asked different questions")
        for mode, metrics in old_scores.items():
            for metric, values in metrics.items():
                other = new_scores.get(mode, {}).get(metric)
                if other is None:
                    continue
                gained, lost = gained_and_lost(values, other) if metric in PASS_FAIL_METRICS else (None, None)
                differences.append(
                    Difference(
                        section=section,
                        mode=mode,
                        metric=metric,
                        before=fmean(values),
                        after=fmean(other),
                        half_width=paired_half_width(values, other),
                        count=len(values),
                        gained=gained,
                        lost=lost,
                    )
                )
    return differences


def _sections(results: dict) -> dict[str, tuple[list, dict[str, dict[str, list[float]]]]]:
    """Section name -> (what identifies its questions, mode -> metric -> per-question scores)."""
    sections: dict[str, tuple[list, dict[str, dict[str, list[float]]]]] = {}
    for name, report in results.get("qa", {}).items():
        if report.get("per_question"):
            sections[name] = (report["questions"], report["per_question"])
    general = results.get("general") or {}
    if general.get("per_question"):
        sections["general questions"] = (general["questions"], general["per_question"])
    # Needles are drawn from a seed, so the same seed, distractors, length and count are the same needles.
    drawn = [results.get("niah_seed"), results.get("niah_distractors")]
    for length, row in (results.get("niah") or {}).items():
        if row.get("per_needle"):
            hits = row["per_needle"]
            needles = [*drawn, len(hits.get("adapter", []))]
            sections[f"needles at {length} tokens"] = (needles, {mode: {"contains": v} for mode, v in hits.items()})
    return sections
