"""The train and eval commands, driven as a user would, on a tiny model saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from doc2lora_rag.cli import app
from doc2lora_rag.hypernetwork.model import HyperNetwork
from doc2lora_rag.testing import tiny_base_model

TINY_NET = {"width": 32, "num_blocks": 1, "num_heads": 4, "num_kv_heads": 2, "head_width": 16, "chunk_size": 64}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_base_model(max_positions=1024)
    folder = tmp_path_factory.mktemp("tiny-model")
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    return folder


def test_train_then_eval_writes_checkpoint_metrics_and_report(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "out": str(tmp_path / "run"), "base_model": str(tiny_model_dir), "steps": 4, "batch_size": 2,
        "save_every": 2, "log_every": 1, "max_doc_tokens": 128, "hypernet": TINY_NET,
        "data": [{"kind": "synthetic", "count": 4}],
    }))
    result = runner.invoke(app, ["train", "--config", str(config), "--threads", "1"])
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "run" / "checkpoint"
    assert (checkpoint / "hypernet.safetensors").is_file()
    # Starting again over an existing run needs --resume, and --resume continues it.
    again = runner.invoke(app, ["train", "--config", str(config), "--threads", "1"])
    assert again.exit_code != 0 and "--resume" in again.output
    more = runner.invoke(
        app, ["train", "--config", str(config), "--steps", "8", "--until", "6", "--resume", "--threads", "1"]
    )
    assert more.exit_code == 0, more.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 6

    report, numbers = tmp_path / "results.md", tmp_path / "results.json"
    result = runner.invoke(app, [
        "eval", "--hypernet", str(checkpoint), "--base-model", str(tiny_model_dir), "--data", "synthetic:4",
        "--limit", "4", "--niah", "64", "--niah-count", "1", "--niah-seed", "7", "--max-new-tokens", "4",
        "--markdown", str(report), "--json-out", str(numbers),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(numbers.read_text())
    scores = data["qa"]["synthetic-heldout"]["scores"]
    assert set(scores) == {"no_context", "in_context", "adapter", "unrelated_adapter"}
    assert all(0.0 <= s["f1"] <= 1.0 and 0.0 <= s["contains"] <= 1.0 for s in scores.values())
    assert set(data["niah"]) == {"64"} and data["niah_seed"] == 7
    assert data["niah_max_chunks"] == 3 and data["niah_refine_steps"] == 0  # what needle_misses.py answers with
    assert set(data["niah"]["64"]) == {"adapter", "focused", "in_context", "per_needle", "answers", "gold"}
    general = data["general"]
    assert set(general["scores"]) == {"no_context", "unrelated_adapter", "routed"}
    assert 0.0 <= general["attached"] <= 1.0
    assert general["num_documents"] == data["qa"]["synthetic-heldout"]["num_documents"]
    assert 0.0 <= general["agreement"] <= 1.0 and 0.0 <= general["unchanged"] <= 1.0
    text = report.read_text()
    fingerprint = HyperNetwork.from_pretrained(checkpoint).fingerprint
    assert data["hypernet_fingerprint"] == fingerprint and f"(`{fingerprint}`)" in text  # the page names its network
    assert "synthetic-heldout" in text and "Needle in a haystack" in text and "General questions" in text
    assert "adapter, best chunks" in text
    assert "(1/1)" in text or "(0/1)" in text  # each needle accuracy says how many needles it rests on
    assert " ± " in text  # scores carry their standard error over the questions
    assert data["qa"]["synthetic-heldout"]["per_question"]["adapter"]["f1"]
    # an evaluation compared with itself differs by nothing
    same = runner.invoke(app, ["compare", str(numbers), str(numbers), "--metric", "f1"], env={"COLUMNS": "200"})
    assert same.exit_code == 0, same.output
    assert "+0.000 ± 0.000" in same.output and "*" not in same.output
    assert same.output.count(fingerprint) == 2  # the caption names both networks compared
    assert (tmp_path / "results-qa.png").is_file() and (tmp_path / "results-niah.png").is_file()


def test_train_refuses_a_config_without_output(tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--base-model", str(tiny_model_dir), "--steps", "1"])
    assert result.exit_code != 0
    assert "--out" in result.output


def test_fit_schedule_needs_a_time_budget(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["train", "--base-model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--fit-schedule"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "--minutes" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_eval_runs_context_distillation_on_a_subset_beside_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    numbers, report = tmp_path / "results.json", tmp_path / "results.md"
    result = CliRunner().invoke(app, [
        "eval", "--base-model", str(tiny_model_dir), "--data", "synthetic:6", "--limit", "6",
        "--context-distillation", "--cd-docs", "1", "--cd-steps", "2", "--max-new-tokens", "3",
        "--json-out", str(numbers), "--markdown", str(report),
    ])
    assert result.exit_code == 0, result.output
    qa = json.loads(numbers.read_text())["qa"]
    assert "context_distillation" not in qa["synthetic-heldout"]["scores"]
    subset = qa["synthetic-heldout (CD subset)"]
    assert set(subset["scores"]) == {"in_context", "adapter", "context_distillation"}
    assert subset["num_documents"] == 1 and subset["num_questions"] >= 1
    assert subset["seconds_per_document"]["context_distillation"] > subset["seconds_per_document"]["adapter"] > 0
    assert "Token F1 per second of update time" in report.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--niah", "256,abc"], "--niah takes comma-separated token counts"),
        (["--data", "synthetic:abc"], "cannot read eval data 'synthetic:abc'"),
        (["--data", "synthetic:4:abc"], "cannot read eval data 'synthetic:4:abc'"),
        (["--data", "jsonl:/nowhere/qa.jsonl"], "no such file or directory"),
    ],
)
def test_eval_refuses_bad_input_in_one_line_before_loading_anything(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """A typo in the last option used to surface as a traceback after every earlier source
    had been scored, with nothing written."""
    from doc2lora_rag.engine import Doc2LoRA

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Doc2LoRA, "from_pretrained", no_model)
    result = CliRunner().invoke(app, ["eval", "--base-model", str(tiny_model_dir), "--data", "synthetic:2", *args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"error: {message}" in result.output


def test_eval_with_a_missing_hypernetwork_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["eval", "--base-model", str(tiny_model_dir), "--hypernet", str(tmp_path / "nope")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "error: cannot read hypernetwork" in result.output


def test_eval_scores_refined_adapters_and_another_documents_as_control(tiny_model_dir: Path, tmp_path: Path) -> None:
    numbers, report = tmp_path / "results.json", tmp_path / "results.md"
    result = CliRunner().invoke(app, [
        "eval", "--base-model", str(tiny_model_dir), "--data", "synthetic:4", "--limit", "4", "--general-docs", "2",
        "--refine-steps", "2", "--max-new-tokens", "3", "--json-out", str(numbers), "--markdown", str(report),
    ])
    assert result.exit_code == 0, result.output
    results = json.loads(numbers.read_text())
    qa = results["qa"]["synthetic-heldout"]
    assert {"adapter", "refined_adapter", "unrelated_refined"} <= set(qa["scores"])
    general = results["general"]["scores"]  # general questions under another document's refined adapter too
    assert set(general) == {"no_context", "unrelated_adapter", "routed", "unrelated_refined"}
    assert "nll" in qa["scores"]["unrelated_refined"]
    seconds = qa["seconds_per_document"]
    assert seconds["refined_adapter"] > seconds["adapter"] > 0  # refining starts from the hypernetwork's adapter
    assert set(qa["refined_ratios"]) == {"f1", "contains"}
    assert "refined_adapter / in-context" in report.read_text()


def test_eval_refines_the_way_it_is_told_and_records_it(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from doc2lora_rag.training import refine

    styles, refine_adapter = [], refine.refine_adapter

    def recording(*args, **options):
        styles.append((options["by_ending"], options["answer_words"], options["quote_words"]))
        return refine_adapter(*args, **options)

    monkeypatch.setattr(refine, "refine_adapter", recording)
    numbers = tmp_path / "results.json"
    result = CliRunner().invoke(app, [
        "eval", "--base-model", str(tiny_model_dir), "--data", "synthetic:2", "--limit", "2", "--general-docs", "0",
        "--refine-steps", "1", "--refine-by-ending", "--refine-answer-words", "1", "--max-new-tokens", "2",
        "--json-out", str(numbers),
    ])
    assert result.exit_code == 0, result.output
    assert styles and set(styles) == {(True, 1, None)}
    results = json.loads(numbers.read_text())
    assert [results[f"refine_{key}"] for key in ("by_ending", "answer_words", "quote_words")] == [True, 1, None]
    styles.clear()
    result = CliRunner().invoke(app, [
        "eval", "--base-model", str(tiny_model_dir), "--data", "synthetic:2", "--limit", "2", "--general-docs", "0",
        "--refine-steps", "1", "--refine-quote-words", "3", "--max-new-tokens", "2", "--json-out", str(numbers),
    ])
    assert result.exit_code == 0, result.output
    assert styles and set(styles) == {(False, None, 3)} and json.loads(numbers.read_text())["refine_quote_words"] == 3


def test_eval_draws_other_fact_documents_by_seed_under_another_name() -> None:
    from doc2lora_rag.cli.evaluate import _eval_records

    name, held_out = _eval_records("synthetic:6", 6)
    again_name, again = _eval_records("synthetic:6:987654", 6)
    other_name, other = _eval_records("synthetic:6:31337", 6)
    assert (name, len(held_out), len(other)) == ("synthetic-heldout", 6, 6)
    assert again == held_out and again_name == "synthetic-seed987654"
    assert other_name == "synthetic-seed31337" and not {r.context for r in other} & {r.context for r in held_out}
