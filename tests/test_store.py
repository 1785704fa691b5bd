"""The adapter store: layout, checksums, fingerprints, LRU, locking, crash safety, readers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import peft
import pytest
import torch

from doc2lora_rag import AdapterFormatError, Doc2LoRA, IncompatibleModelError, LoRAAdapter, UnknownIdError
from doc2lora_rag.adapters.lora import CONFIG_FILE, WEIGHTS_FILE
from doc2lora_rag.errors import StoreError
from doc2lora_rag.store import AdapterStore, default_store_path
from doc2lora_rag.store.adapter_store import CATALOG_FILE
from doc2lora_rag.store.catalog import Catalog
from tests.conftest import make_tiny_engine

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "The lighthouse keeper on Varn Island logs the tide at 06:40 every morning.",
    "The orchard in Lessay harvested 412 crates of cider apples this autumn.",
    "Mount Orsk has a weather station staffed by two meteorologists in winter.",
]


@pytest.fixture(scope="module")
def adapters(tiny_engine: Doc2LoRA) -> list[LoRAAdapter]:
    return tiny_engine.internalize_many(DOCS)


def bound_store(path: Path, engine: Doc2LoRA, **options) -> AdapterStore:
    store = AdapterStore(path, **options)
    store.bind(engine.base.name, engine.fingerprint, engine.hypernet.fingerprint)
    return store


def fill(store: AdapterStore, adapters: list[LoRAAdapter]) -> list[str]:
    ids = [f"doc-{i}" for i in range(len(adapters))]
    for doc_id, text, adapter in zip(ids, DOCS, adapters, strict=True):
        store.put(doc_id, text, {"n": int(doc_id[-1])}, adapter)
    return ids


def assert_same_factors(left: LoRAAdapter, right: LoRAAdapter) -> None:
    assert set(left.factors) == set(right.factors)
    for name in left.factors:
        for a, b in zip(left.factors[name], right.factors[name], strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ layout and round trip


def test_put_writes_a_peft_directory_in_bf16_and_loads_back(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    doc = store.put("a", DOCS[0], {"source": "log"}, adapters[0])
    directory = store.adapters_dir / doc.adapter_dir
    assert sorted(p.name for p in directory.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    config = peft.LoraConfig.from_pretrained(str(directory))
    assert config.r == adapters[0].rank
    assert set(doc.files) == {WEIGHTS_FILE, CONFIG_FILE}
    assert doc.nbytes == sum((directory / f).stat().st_size for f in doc.files)

    loaded = store.load_adapter("a")
    assert loaded.dtype == torch.bfloat16
    assert_same_factors(loaded, adapters[0].to(dtype=torch.bfloat16))
    assert loaded.base_fingerprint == tiny_engine.fingerprint
    assert loaded.hypernet_fingerprint == tiny_engine.hypernet.fingerprint
    assert list(store.tmp_dir.iterdir()) == []


def test_documents_survive_reopening(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    ids = fill(store, adapters)
    store.close()
    reopened = AdapterStore(tmp_path / "s", create=False)
    assert reopened.ids() == ids
    assert [d.text for d in reopened.get(ids)] == DOCS
    assert reopened.get("doc-2")[0].metadata == {"n": 2}
    assert reopened.verify() == {}
    assert_same_factors(reopened.load_adapter("doc-1"), adapters[1].to(dtype=torch.bfloat16))


def test_catalog_holds_only_json_and_bytes(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    fill(store, adapters)
    db = sqlite3.connect(tmp_path / "s" / CATALOG_FILE)
    for (value,) in db.execute("SELECT value FROM meta"):
        json.loads(value)
    for metadata, files in db.execute("SELECT metadata, files FROM documents"):
        assert isinstance(json.loads(metadata), dict)
        assert set(json.loads(files)) == {WEIGHTS_FILE, CONFIG_FILE}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_is_under_the_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.setattr("platformdirs.user_data_dir", lambda app: str(tmp_path / app))
    assert default_store_path() == tmp_path / "doc2lora-rag" / "stores" / "default"
    store = AdapterStore()
    assert store.path == tmp_path / "doc2lora-rag" / "stores" / "default"
    assert (store.path / CATALOG_FILE).is_file()


# ------------------------------------------------------------------ ids, upsert, delete


def test_unknown_ids_raise_and_delete_is_all_or_nothing(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    ids = fill(store, adapters)
    with pytest.raises(UnknownIdError, match="nope"):
        store.get(["doc-0", "nope"])
    with pytest.raises(UnknownIdError, match="nope"):
        store.load_adapter("nope")
    with pytest.raises(UnknownIdError):
        store.delete(["doc-0", "nope"])
    assert store.ids() == ids
    gone = store.get("doc-0")[0].adapter_dir
    store.delete(["doc-0"])
    assert store.ids() == ids[1:]
    assert not (store.adapters_dir / gone).exists()
    assert "doc-0" not in store


def test_replacing_a_document_swaps_its_adapter_and_removes_the_old_one(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    first = store.put("a", DOCS[0], {}, adapters[0])
    store.load_adapter("a")  # now cached
    generation = store.generation()
    second = store.put("a", DOCS[1], {"v": 2}, adapters[1])
    assert second.adapter_dir != first.adapter_dir
    assert not (store.adapters_dir / first.adapter_dir).exists()
    assert second.added_at == first.added_at and second.updated_at >= first.updated_at
    assert store.generation() > generation
    assert_same_factors(store.load_adapter("a"), adapters[1].to(dtype=torch.bfloat16))
    assert len(store) == 1


def test_replace_adapter_swaps_the_adapter_alone_unless_the_document_changed(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    first = store.put("a", DOCS[0], {"v": 1}, adapters[0])
    store.load_adapter("a")  # now cached
    generation = store.generation()
    refined = adapters[0].tagged(refine_steps=1, refined_chunks=[0])
    swapped = store.replace_adapter("a", refined, content_hash=first.content_hash)
    assert swapped is not None and swapped.adapter_dir != first.adapter_dir
    assert (swapped.text, swapped.metadata, swapped.added_at, swapped.updated_at) == (
        first.text, first.metadata, first.added_at, first.updated_at
    )
    assert store.generation() == generation  # text and metadata as they were: routers keep their fit
    assert not (store.adapters_dir / first.adapter_dir).exists()
    assert store.load_adapter("a").refined_chunks == {0}  # not the cached old one
    # The document changed (or went) since its hash was read: the newer version wins, nothing is written.
    store.put("a", DOCS[1], {}, adapters[1])
    dirs = sorted(p.name for p in store.adapters_dir.iterdir())
    assert store.replace_adapter("a", refined, content_hash=first.content_hash) is None
    assert store.replace_adapter("gone", refined, content_hash=first.content_hash) is None
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == dirs and not any(store.tmp_dir.iterdir())
    assert_same_factors(store.load_adapter("a"), adapters[1].to(dtype=torch.bfloat16))
    current = store.get("a")[0].content_hash
    with pytest.raises(ValueError, match="chunks"):
        store.replace_adapter("a", LoRAAdapter.concat([adapters[1], adapters[2]]), content_hash=current)
    other = make_tiny_engine(seed=1, source_layers="all")
    with pytest.raises(IncompatibleModelError):
        store.replace_adapter("a", other.internalize(DOCS[1]), content_hash=current)
    assert store.verify() == {} and sorted(p.name for p in store.adapters_dir.iterdir()) == dirs


def test_metadata_update_keeps_the_adapter(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    before = store.put("a", DOCS[0], {"v": 1}, adapters[0])
    store.set_metadata("a", {"v": 2})
    after = store.get("a")[0]
    assert after.metadata == {"v": 2} and after.adapter_dir == before.adapter_dir
    with pytest.raises(UnknownIdError):
        store.set_metadata("missing", {})


# ------------------------------------------------------------------ integrity


def test_tampered_adapter_file_is_refused_by_id_and_nothing_else_is_lost(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine, cache_size=0)
    fill(store, adapters)
    weights = store.adapters_dir / store.get("doc-1")[0].adapter_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x55
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterFormatError, match="'doc-1'.*sha256"):
        store.load_adapter("doc-1")
    assert set(store.verify()) == {"doc-1"}
    for doc_id in ("doc-0", "doc-2"):
        store.load_adapter(doc_id)
    assert len(store) == 3


def test_tampered_config_and_missing_files_are_detected(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine, cache_size=0)
    fill(store, adapters)
    config = store.adapters_dir / store.get("doc-0")[0].adapter_dir / CONFIG_FILE
    config.write_text(config.read_text().replace('"r": ', '"r": 1'))
    (store.adapters_dir / store.get("doc-2")[0].adapter_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterFormatError, match="'doc-0'"):
        store.load_adapter("doc-0")
    with pytest.raises(AdapterFormatError, match="'doc-2'.*missing"):
        store.load_adapter("doc-2")
    assert set(store.verify()) == {"doc-0", "doc-2"}
    store.load_adapter("doc-1")


def test_lru_keeps_hot_adapters_and_is_configurable(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine, cache_size=2)
    fill(store, adapters)
    first = store.load_adapter("doc-0")
    assert store.load_adapter("doc-0") is first and store.cache.hits == 1
    store.load_adapter("doc-1")
    store.load_adapter("doc-2")
    assert len(store.cache) == 2 and "doc-0" not in store.cache
    assert store.load_adapter("doc-0") is not first
    uncached = bound_store(tmp_path / "s", tiny_engine, cache_size=0)
    assert uncached.load_adapter("doc-0") is not uncached.load_adapter("doc-0")
    assert len(uncached.cache) == 0


def test_lru_never_serves_an_adapter_replaced_by_another_process(tmp_path, tiny_engine, adapters):
    reader = bound_store(tmp_path / "s", tiny_engine)
    writer = bound_store(tmp_path / "s", tiny_engine)
    writer.put("a", DOCS[0], {}, adapters[0])
    reader.load_adapter("a")
    writer.put("a", DOCS[1], {}, adapters[1])
    assert_same_factors(reader.load_adapter("a"), adapters[1].to(dtype=torch.bfloat16))


# ------------------------------------------------------------------ model binding


def test_store_refuses_another_base_model_or_hypernetwork(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    fill(store, adapters)
    store.bind(tiny_engine.base.name, tiny_engine.fingerprint, tiny_engine.hypernet.fingerprint)
    with pytest.raises(IncompatibleModelError, match="base model"):
        store.bind("other", "0" * 16, tiny_engine.hypernet.fingerprint)
    with pytest.raises(IncompatibleModelError, match="hypernetwork"):
        store.bind(tiny_engine.base.name, tiny_engine.fingerprint, "f" * 16)
    other = make_tiny_engine(seed=1, source_layers="all")
    with pytest.raises(IncompatibleModelError):
        store.put("x", "another model's document", {}, other.internalize("another model's document"))
    reopened = AdapterStore(tmp_path / "s", create=False)
    with pytest.raises(IncompatibleModelError):
        reopened.bind(other.base.name, other.fingerprint, other.hypernet.fingerprint)
    assert reopened.ids() == ["doc-0", "doc-1", "doc-2"] and reopened.verify() == {}


def test_an_unbound_store_takes_the_model_of_its_first_adapter(tmp_path, tiny_engine, adapters):
    """Used without an engine, a store must still never mix two models' adapters."""
    store = AdapterStore(tmp_path / "s")
    assert store.fingerprints is None
    store.put("doc-0", DOCS[0], {}, adapters[0])
    assert store.fingerprints == {
        "base_model_name": tiny_engine.base.name,
        "base_fingerprint": tiny_engine.fingerprint,
        "hypernet_fingerprint": tiny_engine.hypernet.fingerprint,
    }
    other = make_tiny_engine(seed=1, source_layers="all")
    with pytest.raises(IncompatibleModelError):
        store.put("x", "another model's document", {}, other.internalize("another model's document"))
    assert store.ids() == ["doc-0"] and store.verify() == {}


# ------------------------------------------------------------------ bad stores


def test_paths_that_are_not_stores_are_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a store"):
        AdapterStore(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    with pytest.raises(StoreError, match="no store"):
        AdapterStore(tmp_path / "missing", create=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CATALOG_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable store catalog"):
        AdapterStore(tmp_path / "broken")


def test_a_damaged_catalog_row_names_its_document_and_can_be_deleted(tmp_path, tiny_engine, adapters):
    """SQLite keeps no checksums: a row whose JSON was damaged must say which document it is,
    and deleting that document (the repair) must still work and keep the others."""
    store = bound_store(tmp_path / "s", tiny_engine)
    fill(store, adapters)
    damaged_dir = store.get("doc-1")[0].adapter_dir
    db = sqlite3.connect(tmp_path / "s" / CATALOG_FILE)
    with db:
        db.execute("UPDATE documents SET metadata = '{\"n\": 1' WHERE id = 'doc-1'")
    db.close()
    for read in (store.documents, lambda: store.get("doc-1"), lambda: store.load_adapter("doc-1")):
        with pytest.raises(StoreError, match="'doc-1' is damaged"):
            read()
    assert "doc-1" in store
    store.delete("doc-1")
    assert store.ids() == ["doc-0", "doc-2"] and store.verify() == {}
    assert not (store.adapters_dir / damaged_dir).exists()
    db = sqlite3.connect(tmp_path / "s" / CATALOG_FILE)
    with db:
        db.execute("UPDATE meta SET value = 'not json' WHERE key = 'format_version'")
    db.close()
    with pytest.raises(StoreError, match="'format_version' entry is damaged"):
        AdapterStore(tmp_path / "s")


def test_a_newer_store_format_is_refused(tmp_path):
    AdapterStore(tmp_path / "s").close()
    catalog = Catalog(tmp_path / "s" / CATALOG_FILE)
    with catalog.transaction(bump=False):
        catalog.set_meta("format_version", 99)
    with pytest.raises(StoreError, match="newer"):
        AdapterStore(tmp_path / "s")


# ------------------------------------------------------------------ writers and crashes


def test_a_second_writer_waits_and_then_gives_up(tmp_path, tiny_engine, adapters):
    first = bound_store(tmp_path / "s", tiny_engine)
    second = AdapterStore(tmp_path / "s", lock_timeout=0.3)
    with first.writing():
        started = time.monotonic()
        with pytest.raises(StoreError, match="another process is writing"):
            second.put("b", DOCS[1], {}, adapters[1])
        assert time.monotonic() - started >= 0.3
    second.put("b", DOCS[1], {}, adapters[1])
    assert first.ids() == ["b"]


def interrupt_after_commit(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the catalog raise KeyboardInterrupt right after it executes COMMIT (a Ctrl-C landing
    between the commit and leaving the transaction)."""
    original = catalog._execute

    def execute(sql: str, parameters=()):
        cursor = original(sql, parameters)
        if sql == "COMMIT":
            raise KeyboardInterrupt
        return cursor

    monkeypatch.setattr(catalog, "_execute", execute)


def test_a_failed_commit_leaves_the_previous_version_and_no_files(tmp_path, tiny_engine, adapters, monkeypatch):
    store = bound_store(tmp_path / "s", tiny_engine)
    before = store.put("a", DOCS[0], {}, adapters[0])

    def fail(doc):
        raise OSError("disk full")

    monkeypatch.setattr(store.catalog, "put", fail)
    with pytest.raises(OSError, match="disk full"):
        store.put("a", DOCS[1], {}, adapters[1])
    assert store.get("a")[0] == before
    assert [p.name for p in store.adapters_dir.iterdir()] == [before.adapter_dir]
    assert list(store.tmp_dir.iterdir()) == []


def test_an_interrupt_just_after_the_commit_keeps_the_committed_adapter(tmp_path, tiny_engine, adapters, monkeypatch):
    """Ctrl-C between COMMIT and leaving the transaction: the row is committed, so its adapter
    directory must stay (an ingest once lost one adapter this way and kept its catalog row)."""
    store = bound_store(tmp_path / "s", tiny_engine)
    interrupt_after_commit(store.catalog, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        store.put("a", DOCS[0], {}, adapters[0])
    monkeypatch.undo()
    [doc] = store.get("a")
    assert [p.name for p in store.adapters_dir.iterdir()] == [doc.adapter_dir]
    assert store.load_adapter("a").num_chunks == adapters[0].num_chunks
    assert store.verify() == {}


def test_reopening_cleans_leftovers_of_a_killed_writer(tmp_path, tiny_engine, adapters):
    store = bound_store(tmp_path / "s", tiny_engine)
    ids = fill(store, adapters)
    (store.tmp_dir / "half").mkdir()
    (store.tmp_dir / "half" / WEIGHTS_FILE).write_bytes(b"\x00" * 10)
    orphan = store.adapters_dir / "0123456789abcdef"
    orphan.mkdir()
    (orphan / CONFIG_FILE).write_text("{}")
    store.close()
    reopened = AdapterStore(tmp_path / "s")
    assert list(reopened.tmp_dir.iterdir()) == []
    assert not orphan.exists()
    assert reopened.ids() == ids and reopened.verify() == {}


CHILD_PRELUDE = """
import os, signal, sys
from tests.conftest import make_tiny_engine
from doc2lora_rag import Doc2LoRAIndex
import doc2lora_rag.store.adapter_store as adapter_store
engine = make_tiny_engine(source_layers="all")
index = Doc2LoRAIndex(sys.argv[1], engine=engine, batch_size=2)
"""


def run_child(body: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    script = CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )


def assert_store_consistent(path: Path) -> AdapterStore:
    """Every committed document verifies, and nothing uncommitted is left on disk."""
    store = AdapterStore(path, create=False)
    assert store.verify() == {}
    referenced = {d.adapter_dir for d in store.documents()}
    assert {p.name for p in store.adapters_dir.iterdir()} == referenced
    assert list(store.tmp_dir.iterdir()) == []
    for doc in store.documents():
        assert doc.text.startswith("Record ")
        store.load_adapter(doc.id)
    return store


# Each child kills itself with SIGKILL at one chosen instant of the write path:
# (function patched, kill before or after the real call).
KILL_POINTS = {
    "staged": ("adapter_store.fsync_tree", "before"),  # adapter written to tmp/, not synced
    "published": ("adapter_store.publish_directory", "after"),  # in adapters/, not committed
    "replaced": ("adapter_store.remove_tree", "before"),  # committed, old adapter still there
}


def test_sigkill_at_each_step_of_a_write_leaves_a_consistent_store(tmp_path):
    children = {}
    for point, (target, when) in KILL_POINTS.items():
        body = f"""
        index.add_documents(["Record one: the first entry.", "Record two: the second entry."],
                            ids=["one", "two"])
        real = {target}
        def die(*args, **kwargs):
            if "{when}" == "after":
                real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        {target} = die
        index.add_documents(["Record two, revised: the second entry again."], ids=["two"])
        """
        children[point] = run_child(body, str(tmp_path / point))
    for point, child in children.items():
        _, err = child.communicate(timeout=180)
        assert child.returncode == -signal.SIGKILL, (point, err[-2000:])
        store = assert_store_consistent(tmp_path / point)
        assert store.ids() == ["one", "two"]
        two = store.get("two")[0].text
        expected = "Record two, revised" if point == "replaced" else "Record two: the second"
        assert two.startswith(expected), (point, two)


def test_sigkill_mid_ingest_keeps_every_committed_document(tmp_path):
    body = """
    for i in range(200):
        index.add_documents([f"Record {i}: entry number {i} of a long ingest, padded out."])
        print("committed", flush=True)
    """
    child = run_child(body, str(tmp_path / "s"))
    committed = 0
    while committed < 3:
        line = child.stdout.readline()
        assert line, child.stderr.read()[-2000:]
        committed += line.startswith("committed")
    time.sleep(0.15)  # land somewhere inside a later write
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    store = assert_store_consistent(tmp_path / "s")
    assert len(store) >= committed


READER = """
import json, sys, time
from pathlib import Path
from doc2lora_rag import Doc2LoRAIndex
index = Doc2LoRAIndex.load(sys.argv[1])
seen, errors, loads, rounds = [], [], 0, 0
while True:
    done = Path(sys.argv[2]).exists()
    try:
        ids = index.ids()
        seen.append(len(ids))
        for doc in index.get(ids):
            assert doc.text.startswith("Record "), doc.text
        for hit in index.retrieve("Record entry", k=3, min_score=0.0):
            assert hit.text.startswith("Record ")
        for doc_id in ids[-3:]:
            index.store.load_adapter(doc_id)
            loads += 1
    except Exception as error:
        errors.append(repr(error))
    rounds += 1
    Path(sys.argv[3]).touch()  # the writer starts once every reader has read once
    if done:
        break
    time.sleep(0.05)  # leave the two cores to the writer, too
print(json.dumps({"seen": seen, "errors": errors, "loads": loads, "rounds": rounds,
                  "engine_loaded": index._engine is not None}))
"""


def test_readers_in_other_processes_work_while_one_writer_ingests(tmp_path, tiny_engine):
    path, done = tmp_path / "s", tmp_path / "done"
    seed = make_tiny_engine(source_layers="all")
    from doc2lora_rag import Doc2LoRAIndex

    Doc2LoRAIndex(path, engine=seed).add_documents(["Record 0: the first entry."])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ready = [tmp_path / f"ready{n}" for n in range(2)]
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(path), str(done), str(flag)], cwd=REPO, env=env,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for flag in ready
    ]
    writer = run_child(
        """
        import time
        from pathlib import Path
        deadline = time.monotonic() + 120
        while not all(Path(flag).exists() for flag in sys.argv[2:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(1, 9):
            index.add_documents([f"Record {i}: entry number {i}, written while others read."])
            time.sleep(0.1)  # paced, so that polling readers see the store between writes
        """,
        str(path), *map(str, ready),
    )
    _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err[-2000:]
    done.touch()
    reports = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for report in reports:
        assert report["errors"] == []
        assert report["seen"] == sorted(report["seen"])  # snapshots only ever grow
        assert report["seen"][-1] == 9 and report["loads"] > 0
        assert not report["engine_loaded"]  # reading needs no model
    assert any(1 < seen < 9 for r in reports for seen in r["seen"])  # they read while it wrote
    assert_store_consistent(path)


def test_an_interrupt_just_after_commit_stays_an_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between COMMIT and leaving the transaction used to be reported as a broken store
    ("cannot rollback - no transaction is active"), and an ingest exited 1 instead of 130."""
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    interrupt_after_commit(catalog, monkeypatch)
    with pytest.raises(KeyboardInterrupt), catalog.transaction():
        catalog.set_meta("note", "kept")
    monkeypatch.undo()
    assert catalog.get_meta("note") == "kept"  # committed before the interrupt
    with catalog.transaction():  # and the connection is usable
        catalog.set_meta("note", "again")
    assert catalog.get_meta("note") == "again"
