"""LlamaIndex drop-ins: the managed index, its retriever and query engine, and the LLM."""

from __future__ import annotations

import gc
import logging
import os
import shutil
from pathlib import Path

import pytest
from llama_index.core import SimpleDirectoryReader
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.llms.mock import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import Document, NodeRelationship, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

import llama_index_doc2lora.llm as llm_module
from doc2lora_rag import Doc2LoRA
from doc2lora_rag.errors import StoreError
from doc2lora_rag.generation.generate import complete
from langchain_doc2lora import runtime
from llama_index_doc2lora import Doc2LoRAIndex, Doc2LoRALLM, Doc2LoRAQueryEngine, Doc2LoRARetriever

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
QUESTION = "Who was the last resident keeper of Harrow Point Lighthouse?"
LIGHTHOUSE = str(DATA / "harrow_point_lighthouse.md")
TOKENS = 6


@pytest.fixture
def documents() -> list[Document]:
    return SimpleDirectoryReader(str(DATA), filename_as_id=True).load_data()


@pytest.fixture
def index(documents, text_engine: Doc2LoRA) -> Doc2LoRAIndex:
    return Doc2LoRAIndex.from_documents(documents, engine=text_engine)


def node_of(index: Doc2LoRAIndex, ref_doc_id: str) -> str:
    (node_id,) = index.ref_doc_info[ref_doc_id].node_ids
    return node_id


def direct(engine: Doc2LoRA, index: Doc2LoRAIndex, question: str, ids: list[str]) -> tuple[str, int]:
    """The answer with these nodes' adapters (long ones narrowed to the question), bypassing LlamaIndex."""
    adapter = index.core.adapter(ids, question=question) if ids else None
    prompt = runtime.render_turns(engine, [("user", question)])
    result = complete(engine.base, [prompt], adapters=adapter, max_new_tokens=TOKENS)[0]
    return result.text, result.prompt_tokens


# ---------------------------------------------------------------- index


def test_from_directory_reader_keeps_source_documents(index, documents):
    info = index.ref_doc_info
    assert sorted(info) == sorted(d.id_ for d in documents)
    assert all(len(i.node_ids) == 1 for i in info.values())  # short files: one node each
    stored = index.core.get(info[LIGHTHOUSE].node_ids)[0]
    assert stored.metadata["file_name"] == "harrow_point_lighthouse.md"
    assert stored.metadata["ref_doc_id"] == LIGHTHOUSE
    assert "Tomas Brennick" in stored.text


def test_retriever_returns_scored_nodes(index):
    hits = index.as_retriever().retrieve(QUESTION)
    assert [h.node.node_id for h in hits] == [node_of(index, LIGHTHOUSE)]  # the others score below threshold
    hit = hits[0]
    assert isinstance(hit, NodeWithScore) and isinstance(hit.node, TextNode) and 0 < hit.score <= 1
    assert hit.node.ref_doc_id == LIGHTHOUSE
    assert hit.node.relationships[NodeRelationship.SOURCE].node_id == LIGHTHOUSE
    assert "ref_doc_id" not in hit.node.metadata and "ref_doc_hash" not in hit.node.metadata
    assert len(index.as_retriever(similarity_top_k=3, min_score=0).retrieve(QUESTION)) == 3
    assert index.as_retriever().retrieve("Quantum chromodynamics of gluons") == []


def test_retriever_filters(index):
    by_dict = index.as_retriever(min_score=0, filters={"file_name": "vell_ferry_service.txt"}).retrieve(QUESTION)
    assert [h.node.metadata["file_name"] for h in by_dict] == ["vell_ferry_service.txt"]
    filters = MetadataFilters(filters=[MetadataFilter(key="file_type", value="text/plain")])
    found = index.as_retriever(min_score=0, similarity_top_k=3, filters=filters).retrieve(QUESTION)
    assert sorted(h.node.metadata["file_name"] for h in found) == ["vell_ferry_service.txt", "vell_island_orchards.txt"]
    unsupported = MetadataFilters(filters=[MetadataFilter(key="file_size", value=400, operator=FilterOperator.GT)])
    with pytest.raises(NotImplementedError, match="EQ"):
        index.as_retriever(filters=unsupported)


def test_query_engine_answers_with_adapters_and_sources(index, text_engine):
    engine = index.as_query_engine(max_new_tokens=TOKENS)
    assert isinstance(engine, Doc2LoRAQueryEngine)
    response = engine.query(QUESTION)
    lighthouse = node_of(index, LIGHTHOUSE)
    expected, prompt_tokens = direct(text_engine, index, QUESTION, [lighthouse])
    assert isinstance(response, Response) and response.response == expected
    assert [n.node.node_id for n in response.source_nodes] == [lighthouse]
    assert response.metadata["adapter_ids"] == [lighthouse] and not response.metadata["base_model_only"]
    assert response.metadata["prompt_tokens"] == prompt_tokens  # the question only, no node text
    assert response.response != direct(text_engine, index, QUESTION, [])[0]  # the adapter mattered


def test_query_engine_without_relevant_documents_uses_the_base_model(index, text_engine):
    response = index.as_query_engine(max_new_tokens=TOKENS).query("Quantum chromodynamics of gluons")
    assert response.source_nodes == [] and response.metadata["base_model_only"]
    assert response.response == direct(text_engine, index, "Quantum chromodynamics of gluons", [])[0]


def test_streaming_query_engine(index):
    streamed = index.as_query_engine(max_new_tokens=TOKENS, streaming=True).query(QUESTION)
    assert isinstance(streamed, StreamingResponse)
    text = "".join(streamed.response_gen)
    assert text == index.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response
    assert streamed.metadata["adapter_ids"] == [node_of(index, LIGHTHOUSE)]


async def test_async_query(index):
    response = await index.as_query_engine(max_new_tokens=TOKENS).aquery(QUESTION)
    assert response.response == index.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response


async def test_async_streaming_query(index):
    streamed = await index.as_query_engine(max_new_tokens=TOKENS, streaming=True).aquery(QUESTION)
    assert isinstance(streamed, AsyncStreamingResponse)  # what LlamaIndex's own engines return from aquery
    text = "".join([piece async for piece in streamed.async_response_gen()])
    assert text and text == index.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response
    assert streamed.metadata["adapter_ids"] == [node_of(index, LIGHTHOUSE)]
    assert [n.node.node_id for n in streamed.source_nodes] == [node_of(index, LIGHTHOUSE)]


def test_an_unbound_llm_is_bound_and_embed_model_ignored(documents, text_engine):
    index = Doc2LoRAIndex.from_documents(documents, engine=text_engine, embed_model="ignored")
    unbound = Doc2LoRALLM(engine=text_engine, max_new_tokens=TOKENS)
    response = index.as_query_engine(llm=unbound).query(QUESTION)
    assert unbound.index is None
    assert response.metadata["adapter_ids"] == [node_of(index, LIGHTHOUSE)]
    assert response.response == index.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response


def test_an_llm_bound_to_another_store_is_refused(index, documents, text_engine):
    """It could not load this index's adapters: its answers would silently come without them."""
    other = Doc2LoRAIndex.from_documents(documents[:1], engine=text_engine)
    for make in (index.as_query_engine, index.as_chat_engine):
        with pytest.raises(ValueError, match="bound to the store"):
            make(llm=other.as_llm())
    assert index.as_query_engine(llm=index.as_llm(max_new_tokens=TOKENS)).query(QUESTION).metadata["adapter_ids"]


def test_a_node_deleted_after_retrieval_is_not_reported_as_used(index, monkeypatch):
    engine = index.as_query_engine(max_new_tokens=TOKENS)
    nodes = engine.retriever.retrieve(QUESTION)
    assert nodes
    index.delete_nodes([n.node.node_id for n in nodes])
    monkeypatch.setattr(engine.retriever, "retrieve", lambda _query: nodes)
    response = engine.query(QUESTION)
    assert response.metadata["adapter_ids"] == [] and response.metadata["base_model_only"]


def test_other_llms_get_the_standard_engine(index):
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4))
    assert isinstance(engine, RetrieverQueryEngine)
    assert engine.query(QUESTION).source_nodes[0].node.ref_doc_id == LIGHTHOUSE


def test_insert_delete_and_refresh(index, documents, caplog):
    note = Document(text="The Vell lifeboat station was founded in 1903 by local fishermen.", id_="lifeboat")
    index.insert(note)
    assert index.ref_doc_info["lifeboat"].node_ids
    index.delete_ref_doc("lifeboat")
    assert "lifeboat" not in index.ref_doc_info
    with caplog.at_level(logging.WARNING):
        index.delete_ref_doc("lifeboat")
    assert "not found" in caplog.text

    old_node = node_of(index, LIGHTHOUSE)
    repainted = Document(text=documents[0].text + " It was repainted in 2020.", id_=LIGHTHOUSE)
    assert documents[0].id_ == LIGHTHOUSE
    changed = [repainted, *documents[1:]]
    new = Document(text="The island bakery on Vell sells rye bread baked in a wood-fired oven.", id_="bakery")
    assert index.refresh_ref_docs([*changed, new]) == [True, False, False, True]
    assert index.refresh_ref_docs([*changed, new]) == [False, False, False, False]
    new_node = node_of(index, LIGHTHOUSE)
    assert new_node != old_node and old_node not in index.core
    assert index.core.get([new_node])[0].text.endswith("repainted in 2020.")
    assert len(index.core) == 4


def test_delete_nodes_and_insert_nodes(index):
    node = TextNode(text="A standalone note about the Vell harbour wall and its repairs.", id_="note")
    index.insert_nodes([node])
    assert "note" in index.core
    index.delete_nodes(["note", "missing"])
    assert "note" not in index.core


def test_persist_and_load(index, text_engine, tmp_path):
    answer = index.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response
    target = tmp_path / "persisted"
    index.persist(target)
    index.persist(index.core.store.path)  # its own store: nothing to do
    loaded = Doc2LoRAIndex.load(target, engine=text_engine)
    assert sorted(loaded.ref_doc_info) == sorted(index.ref_doc_info)
    assert loaded.as_query_engine(max_new_tokens=TOKENS).query(QUESTION).response == answer
    index.delete_ref_doc(LIGHTHOUSE)
    index.persist(target)  # the copy now mirrors the deletion
    assert LIGHTHOUSE not in Doc2LoRAIndex.load(target, engine=text_engine).ref_doc_info
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("not a store")
    with pytest.raises(StoreError):
        Doc2LoRAIndex.load(tmp_path / "junk", engine=text_engine)


def test_temporary_store_goes_with_the_index(documents, text_engine):
    index = Doc2LoRAIndex.from_documents(documents[:1], engine=text_engine)
    path = index.core.store.path
    del index
    gc.collect()
    assert not os.path.exists(path)


def test_directory_store(documents, text_engine, tmp_path):
    Doc2LoRAIndex.from_documents(documents, store=tmp_path / "store", engine=text_engine).core.close()
    assert len(Doc2LoRAIndex.load(tmp_path / "store", engine=text_engine).core) == 3
    shutil.rmtree(tmp_path / "store")


# ---------------------------------------------------------------- LLM


def test_llm_complete_stream_and_metadata(index, text_engine):
    llm = Doc2LoRALLM(index=index, max_new_tokens=TOKENS)
    assert llm.metadata.model_name == text_engine.base.name and llm.metadata.is_chat_model
    assert llm.metadata.context_window == 1024 and llm.metadata.num_output == TOKENS
    lighthouse = node_of(index, LIGHTHOUSE)
    result = llm.complete(QUESTION, adapter_ids=[lighthouse])
    assert (result.text, result.raw["prompt_tokens"]) == direct(text_engine, index, QUESTION, [lighthouse])
    assert result.raw["adapter_ids"] == [lighthouse]
    pieces = list(llm.stream_complete(QUESTION, adapter_ids=[lighthouse]))
    assert "".join(p.delta for p in pieces) == result.text == pieces[-1].text
    assert pieces[-1].raw["prompt_tokens"] == result.raw["prompt_tokens"]
    assert Doc2LoRALLM(engine=text_engine, max_new_tokens=TOKENS).complete(QUESTION).text == direct(
        text_engine, index, QUESTION, []
    )[0]
    with pytest.raises(ValueError, match="bound index"):
        Doc2LoRALLM(engine=text_engine).complete(QUESTION, adapter_ids=[lighthouse])


def test_llm_recognises_node_text_in_prompts(index, text_engine):
    llm = Doc2LoRALLM(index=index, max_new_tokens=TOKENS)
    lighthouse = node_of(index, LIGHTHOUSE)
    text = index.core.get([lighthouse])[0].text
    stuffed = llm.complete(f"Context:\n{text}\n\nQuestion: {QUESTION}")
    assert stuffed.raw["adapter_ids"] == [lighthouse]
    expected = direct(text_engine, index, f"Context:\n\nQuestion: {QUESTION}", [lighthouse])
    assert (stuffed.text, stuffed.raw["prompt_tokens"]) == expected
    messages = [ChatMessage(role=MessageRole.SYSTEM, content=text), ChatMessage(role="user", content=QUESTION)]
    chat = llm.chat(messages)
    assert chat.raw["adapter_ids"] == [lighthouse]
    assert chat.message.content == direct(text_engine, index, QUESTION, [lighthouse])[0]
    streamed = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=f"{text}\n\n{QUESTION}")]))
    assert streamed[-1].message.content == chat.message.content
    with pytest.raises(ValueError, match="tool"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="42")])
    renamed = [ChatMessage(role=MessageRole.DEVELOPER, content=text), ChatMessage(role="user", content=QUESTION)]
    assert llm.chat(renamed).message.content == chat.message.content  # developer: a system turn


def test_stock_retriever_query_engine_gets_adapters(index, monkeypatch):
    calls = []
    original = llm_module.generate

    def spy(engine, prompt, adapter, **kwargs):
        calls.append((prompt, adapter))
        return original(engine, prompt, adapter, **kwargs)

    monkeypatch.setattr(llm_module, "generate", spy)
    retriever = Doc2LoRARetriever(index)
    engine = RetrieverQueryEngine.from_args(retriever, llm=index.as_llm(max_new_tokens=TOKENS))
    response = engine.query(QUESTION)
    assert [n.node.node_id for n in response.source_nodes] == [node_of(index, LIGHTHOUSE)]
    (prompt, adapter), *_ = calls
    assert adapter is not None and "Tomas Brennick" not in prompt and QUESTION in prompt


def test_context_chat_engine_gets_adapters(index, monkeypatch):
    calls = []
    original = llm_module.generate

    def spy(engine, prompt, adapter, **kwargs):
        calls.append((prompt, adapter))
        return original(engine, prompt, adapter, **kwargs)

    monkeypatch.setattr(llm_module, "generate", spy)
    chat_engine = index.as_chat_engine(chat_mode="context", llm=index.as_llm(max_new_tokens=TOKENS))
    reply = chat_engine.chat(QUESTION)
    assert [n.node.node_id for n in reply.source_nodes] == [node_of(index, LIGHTHOUSE)]
    (prompt, adapter), *_ = calls
    assert adapter is not None and "Tomas Brennick" not in prompt and QUESTION in prompt


def test_chat_engine_llm_is_chosen_as_for_the_query_engine(index, text_engine, monkeypatch):
    """No llm: the index's own (not ``Settings.llm``); an unbound Doc2LoRALLM: bound to the index."""
    calls = []
    original = llm_module.generate

    def spy(engine, prompt, adapter, **kwargs):
        calls.append((engine, adapter))
        return original(engine, prompt, adapter, **{**kwargs, "max_new_tokens": TOKENS})

    monkeypatch.setattr(llm_module, "generate", spy)
    monkeypatch.setattr(llm_module, "default_engine", lambda: pytest.fail("the embedded default was loaded"))
    unbound = Doc2LoRALLM(max_new_tokens=TOKENS)
    for chat_engine in (
        index.as_chat_engine(chat_mode="context"),
        index.as_chat_engine(chat_mode="context", llm=unbound),
    ):
        reply = chat_engine.chat(QUESTION)
        assert [n.node.node_id for n in reply.source_nodes] == [node_of(index, LIGHTHOUSE)]
    assert [(engine, adapter is not None) for engine, adapter in calls] == [(text_engine, True)] * 2
    assert unbound.index is None


def test_llm_asks_for_adapters_narrowed_to_the_question(index, monkeypatch):
    asked = []
    real = index.core.adapter

    def recording(ids, question=None):
        asked.append(question)
        return real(ids, question=question)

    monkeypatch.setattr(index.core, "adapter", recording)
    llm = Doc2LoRALLM(index=index, max_new_tokens=TOKENS)
    lighthouse = node_of(index, LIGHTHOUSE)
    llm.chat([ChatMessage(role="user", content=QUESTION)], adapter_ids=[lighthouse])
    text = index.core.get([lighthouse])[0].text
    llm.complete(f"Context:\n{text}\n\nQuestion: {QUESTION}")
    # chat: the last user turn; a prompt: what is left of it once the document is cut out
    assert asked[0] == QUESTION and asked[1].endswith(QUESTION) and text not in asked[1]
