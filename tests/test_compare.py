"""Paired comparison of two evaluations (``doc2lora compare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from doc2lora_rag.cli import app
from doc2lora_rag.evaluation.compare import compare_results, paired_half_width, sign_test_p, t_95


def _evaluation(f1: list[float], questions: list[str] | None = None, needles: list[float] | None = None) -> dict:
    questions = questions or [f"q{i}?" for i in range(len(f1))]
    results: dict = {
        "qa": {
            "squad-validation": {
                "scores": {"adapter": {"f1": sum(f1) / len(f1)}},
                "questions": questions,
                "per_question": {"adapter": {"f1": f1}},
            }
        },
        "niah": {},
    }
    if needles is not None:
        results["niah"]["1024"] = {"adapter": sum(needles) / len(needles), "per_needle": {"adapter": needles}}
    return results


def test_half_width_is_the_t_interval_of_the_mean_difference() -> None:
    before, after = [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]
    # differences 1, 0, 1, 0: mean 0.5, sample variance 1/3; t quantile with 3 degrees of freedom
    assert paired_half_width(before, after) == pytest.approx(3.182446 * math.sqrt((1 / 3) / 4))
    assert paired_half_width([0.2, 0.4], [0.3, 0.5]) == pytest.approx(0.0)  # the same shift everywhere
    assert paired_half_width([1.0], [0.0]) == math.inf
    with pytest.raises(ValueError, match="equal lengths"):
        paired_half_width([1.0, 0.0], [1.0])


def test_t_quantile_matches_the_tables_and_tends_to_the_normal() -> None:
    # Student's t, two-sided 95%: 1, 2, 9 (10 needles), 39 (40 questions), 119 degrees of freedom
    table = {1: 12.7062, 2: 4.3027, 9: 2.2622, 39: 2.0227, 119: 1.9801}
    assert {df: round(t_95(df), 4) for df in table} == table
    assert t_95(100_000) == pytest.approx(1.959964, abs=1e-4)  # the standard normal's quantile


def test_sign_test_matches_the_binomial_tails() -> None:
    # 11 against 2 of 13: 2 * (1 + 13 + 78) / 2**13; an even split is no evidence at all
    assert sign_test_p(11, 2) == pytest.approx(2 * 92 / 8192)
    assert sign_test_p(2, 11) == sign_test_p(11, 2)
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(6, 0) == pytest.approx(2 / 64) and sign_test_p(5, 0) > 0.05
    assert sign_test_p(11.0, 2.0) == sign_test_p(11, 2)  # sums of per-needle 0.0/1.0 scores
    with pytest.raises(ValueError):
        sign_test_p(-1, 3)
    with pytest.raises(ValueError, match="whole numbers"):
        sign_test_p(2.5, 3)


def test_a_shift_on_every_question_is_significant_and_a_noisy_one_is_not() -> None:
    steady = compare_results(_evaluation([0.1] * 10), _evaluation([0.3] * 10))
    (difference,) = steady
    assert (difference.section, difference.mode, difference.metric) == ("squad-validation", "adapter", "f1")
    assert difference.delta == pytest.approx(0.2) and difference.count == 10
    assert difference.significant
    noisy = compare_results(_evaluation([1, 0, 0, 0, 1, 0, 0, 0]), _evaluation([0, 1, 0, 1, 0, 0, 1, 0]))
    assert noisy[0].delta == pytest.approx(0.125)
    assert not noisy[0].significant


def test_needles_are_compared_per_needle() -> None:
    before, after = _evaluation([0.5, 0.5], needles=[0, 0, 1]), _evaluation([0.5, 0.5], needles=[1, 1, 1])
    differences = compare_results(before, after)
    needles = [d for d in differences if d.section == "needles at 1024 tokens"]
    assert len(needles) == 1 and needles[0].metric == "contains"
    assert needles[0].delta == pytest.approx(2 / 3)
    assert (needles[0].gained, needles[0].lost) == (2, 0)
    assert needles[0].sign_p == pytest.approx(0.5)


def test_needles_drawn_from_another_seed_are_refused() -> None:
    before, after = _evaluation([0.5], needles=[0, 1]), _evaluation([0.5], needles=[1, 1])
    before["niah_seed"], after["niah_seed"] = 1000, 3000
    with pytest.raises(ValueError, match="needles at 1024 tokens: the two evaluations asked different questions"):
        compare_results(before, after)
    after["niah_seed"] = 1000
    assert [d.delta for d in compare_results(before, after) if d.section.startswith("needles")] == [0.5]


def test_pass_fail_scores_count_the_questions_that_changed_and_graded_ones_do_not() -> None:
    before, after = _evaluation([0.2, 0.4, 0.6, 0.8]), _evaluation([0.4, 0.2, 0.8, 0.6])
    before["qa"]["squad-validation"]["per_question"]["adapter"]["contains"] = [1, 0, 0, 1]
    after["qa"]["squad-validation"]["per_question"]["adapter"]["contains"] = [0, 1, 1, 1]
    by_metric = {d.metric: d for d in compare_results(before, after)}
    contains = by_metric["contains"]
    assert (contains.gained, contains.lost) == (2, 1)  # the last question passed both times
    assert contains.sign_p == pytest.approx(sign_test_p(2, 1)) == pytest.approx(1.0)
    assert by_metric["f1"].gained is None and by_metric["f1"].sign_p is None


def test_different_questions_or_no_per_question_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="different questions"):
        compare_results(_evaluation([0.1, 0.2]), _evaluation([0.1, 0.2], questions=["a?", "b?"]))
    means_only = {"qa": {"squad-validation": {"scores": {"adapter": {"f1": 0.1}}}}}
    with pytest.raises(ValueError, match="per-question"):
        compare_results(means_only, _evaluation([0.1, 0.2]))


def test_compare_command_prints_the_differences(tmp_path: Path) -> None:
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(_evaluation([0.1] * 10, needles=[0] * 7 + [1] * 3)))
    after.write_text(json.dumps(_evaluation([0.3] * 10, needles=[1] * 9 + [0])))
    result = CliRunner().invoke(app, ["compare", str(before), str(after)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "+0.200" in result.output and "*" in result.output
    assert "7 / 1, p = 0.07" in result.output  # needles: seven gained, the last one lost
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(b"\x00\xff not json")
    refused = CliRunner().invoke(app, ["compare", str(before), str(tampered)])
    assert refused.exit_code == 2
    assert "cannot read" in refused.output
    other_json = tmp_path / "list.json"
    other_json.write_text("[1, 2, 3]")
    refused = CliRunner().invoke(app, ["compare", str(other_json), str(before)])
    assert refused.exit_code == 2
    assert "not the JSON of doc2lora eval" in refused.output
