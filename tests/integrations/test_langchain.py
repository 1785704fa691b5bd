"""LangChain drop-ins: the vector store, prompt matching, and the chat model in RAG chains."""

from __future__ import annotations

import gc
import os
import warnings

import pytest
from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from doc2lora_rag import Doc2LoRA
from doc2lora_rag.generation.generate import complete
from langchain_doc2lora import ChatDoc2LoRA, Doc2LoRAIndex, runtime
from langchain_doc2lora.matching import StoredTextMatcher

LIGHTHOUSE = "The lighthouse keeper on Varn Island logs the tide at dawn and at dusk."
ORCHARD = "The orchard in Lessay harvested cider apples this autumn, a record crop."
STATION = "Mount Orsk has a weather station staffed by two meteorologists all year."
QUESTION = "Who logs the tide on Varn Island?"
TOKENS = 6


@pytest.fixture
def store(text_engine: Doc2LoRA) -> Doc2LoRAIndex:
    return Doc2LoRAIndex.from_documents(
        [
            Document(id="light", page_content=LIGHTHOUSE, metadata={"topic": "sea"}),
            Document(id="orchard", page_content=ORCHARD, metadata={"topic": "farm"}),
            Document(id="station", page_content=STATION, metadata={"topic": "mountain"}),
        ],
        engine=text_engine,
    )


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


def direct(engine: Doc2LoRA, store: Doc2LoRAIndex, turns: list[tuple[str, str]], ids: list[str]) -> tuple[str, int]:
    """What the model gives for these turns with these documents' adapters, bypassing LangChain."""
    adapter = store.core.adapter(ids) if ids else None
    result = complete(engine.base, [runtime.render_turns(engine, turns)], adapters=adapter, max_new_tokens=TOKENS)[0]
    return result.text, result.prompt_tokens


# ---------------------------------------------------------------- vector store


def test_embedding_is_accepted_and_ignored(text_engine):
    class Exploding:
        def embed_documents(self, texts):
            raise AssertionError("no embeddings are computed")

        embed_query = embed_documents

    store = Doc2LoRAIndex.from_texts([LIGHTHOUSE], Exploding(), ids=["light"], engine=text_engine)
    assert store.embeddings is None
    assert store.similarity_search(QUESTION, k=1)[0].id == "light"


def test_search_ranks_by_routing_score_without_threshold(store):
    hits = store.similarity_search_with_score(QUESTION, k=3)
    assert [d.id for d, _ in hits][0] == "light"
    assert len(hits) == 3  # no threshold: the zero-score documents still fill k
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1 and scores[-1] == 0
    assert hits[0][0] == Document(id="light", page_content=LIGHTHOUSE, metadata={"topic": "sea"})
    assert [d.id for d in store.similarity_search(QUESTION, k=3, min_score=0.05)] == ["light"]
    relevant = store.similarity_search_with_relevance_scores(QUESTION, k=3, score_threshold=0.05)
    assert [d.id for d, _ in relevant] == ["light"]


def test_default_k_is_the_index_k(text_engine):
    store = Doc2LoRAIndex.from_texts([LIGHTHOUSE, ORCHARD, STATION], engine=text_engine, k=2)
    assert len(store.similarity_search(QUESTION)) == 2
    assert len(store.as_retriever().invoke(QUESTION)) == 2
    assert len(store.as_retriever(search_kwargs={"k": 1}).invoke(QUESTION)) == 1


def test_filters_dict_and_callable(store):
    assert [d.id for d in store.similarity_search(QUESTION, k=3, filter={"topic": "farm"})] == ["orchard"]
    found = store.similarity_search(QUESTION, k=2, filter=lambda d: d.metadata["topic"] != "sea")
    assert [d.id for d in found] == ["orchard", "station"] or [d.id for d in found] == ["station", "orchard"]
    retriever = store.as_retriever(search_kwargs={"k": 3, "filter": {"topic": "mountain"}})
    assert [d.id for d in retriever.invoke(QUESTION)] == ["station"]


def test_upsert_replaces_the_adapter_and_keeps_one_row(store):
    before = store.core.store.find("light")
    assert store.add_documents([Document(page_content=LIGHTHOUSE, metadata={"topic": "sea"})], ids=["light"]) == [
        "light"
    ]
    assert store.core.store.find("light").adapter_dir == before.adapter_dir  # same text: nothing recomputed
    store.add_texts(["The lighthouse on Varn Island was automated last spring."], [{"topic": "sea"}], ids=["light"])
    after = store.core.store.find("light")
    assert after.adapter_dir != before.adapter_dir and len(store.core) == 3
    assert store.get_by_ids(["light"])[0].page_content.endswith("automated last spring.")


def test_get_by_ids_keeps_order_and_skips_unknown(store):
    assert [d.id for d in store.get_by_ids(["station", "nope", "light", "station"])] == ["station", "light"]


def test_delete_unknown_some_and_all(store):
    assert store.delete(["nope"]) is True
    store.delete(["orchard", "nope"])
    assert sorted(store.core.ids()) == ["light", "station"]
    store.delete()
    assert len(store.core) == 0 and store.similarity_search(QUESTION) == []


def test_directory_store_persists(tmp_path, text_engine):
    path = tmp_path / "store"
    first = Doc2LoRAIndex.from_texts([LIGHTHOUSE], ids=["light"], store=path, engine=text_engine)
    first.core.close()
    again = Doc2LoRAIndex(store=path, engine=text_engine)
    assert again.get_by_ids(["light"])[0].page_content == LIGHTHOUSE


def test_temporary_store_is_removed_with_the_object(text_engine):
    store = Doc2LoRAIndex.from_texts([LIGHTHOUSE], engine=text_engine)
    path = store.core.store.path
    assert path.is_dir()
    del store
    gc.collect()
    assert not os.path.exists(path)


def test_wrapping_an_existing_core_index(store):
    again = Doc2LoRAIndex(index=store.core)
    assert again.core is store.core and sorted(again.core.ids()) == ["light", "orchard", "station"]
    with pytest.raises(ValueError, match="either"):
        Doc2LoRAIndex(index=store.core, k=2)


async def test_async_variants(text_engine):
    store = await Doc2LoRAIndex.afrom_texts([LIGHTHOUSE, ORCHARD], ids=["light", "orchard"], engine=text_engine)
    assert (await Doc2LoRAIndex.afrom_documents([Document(page_content=ORCHARD)], engine=text_engine)).core.ids()
    assert await store.aadd_documents([Document(page_content=STATION)], ids=["station"]) == ["station"]
    assert [d.id for d in await store.asimilarity_search(QUESTION, k=1)] == ["light"]
    assert (await store.asimilarity_search_with_score(QUESTION, k=1))[0][1] > 0
    assert [d.id for d in await store.aget_by_ids(["orchard"])] == ["orchard"]
    await store.adelete(["orchard"])
    assert sorted(store.core.ids()) == ["light", "station"]
    assert [d.id for d in await store.as_retriever(search_kwargs={"k": 1}).ainvoke(QUESTION)] == ["light"]


# ---------------------------------------------------------------- prompt matching


def test_matcher_cuts_exact_documents_and_separators(store):
    matcher = StoredTextMatcher(store.core)
    text = f"Use the context.\n\n{ORCHARD}\n\n{LIGHTHOUSE}\n\nQuestion: {QUESTION}"
    assert matcher.extract(text) == (f"Use the context.\n\nQuestion: {QUESTION}", ["orchard", "light"])
    twice = f"{LIGHTHOUSE}\n{LIGHTHOUSE}"
    assert matcher.extract(twice) == ("", ["light"])


def test_matcher_only_takes_complete_copies_at_word_bounds(store):
    matcher = StoredTextMatcher(store.core)
    for text in (
        LIGHTHOUSE[:-1] + " and more",  # a prefix of a document is not the document
        "X" + LIGHTHOUSE,  # the copy would start inside a word
        LIGHTHOUSE.replace("tide", "tides"),
    ):
        assert matcher.extract(text) == (text, [])
    assert matcher.extract(f"({LIGHTHOUSE})") == ("(\n\n)", ["light"])


def test_matcher_prefers_the_longest_document_and_skips_short_ones(text_engine):
    longer = LIGHTHOUSE + " The keeper also rings the bell in fog."
    fog = "The keeper rings the bell whenever there is fog"
    store = Doc2LoRAIndex.from_texts(
        [LIGHTHOUSE, longer, "Short text.", fog], ids=["a", "b", "short", "fog"], engine=text_engine
    )
    matcher = StoredTextMatcher(store.core)
    assert matcher.extract(f"{longer}\n\n{LIGHTHOUSE}") == ("", ["b", "a"])
    assert matcher.extract(fog + "s") == (fog + "s", [])  # the copy would end inside a word
    assert matcher.extract(fog + "!") == ("!", ["fog"])
    assert matcher.extract("Short text. Is it here?") == ("Short text. Is it here?", [])
    assert StoredTextMatcher(store.core, min_chars=5).extract("Short text.") == ("", ["short"])


def test_matcher_follows_store_changes(store):
    matcher = StoredTextMatcher(store.core)
    new = "The Varn Island ferry timetable changes in winter months."
    assert matcher.extract(new) == (new, [])
    store.add_texts([new], ids=["ferry"])
    assert matcher.extract(new) == ("", ["ferry"])
    store.delete(["ferry"])
    assert matcher.extract(new) == (new, [])


# ---------------------------------------------------------------- chat model


def test_messages_go_through_the_chat_template(text_engine):
    llm = ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS)
    messages = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
    result = llm.invoke(messages)
    turns = [("system", "Be brief."), ("user", "hello"), ("assistant", "hi"), ("user", "how are you")]
    text, prompt_tokens = direct(text_engine, None, turns, [])
    assert result.content == text and result.content
    assert result.usage_metadata["input_tokens"] == prompt_tokens
    prompt = runtime.render_turns(text_engine, turns)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and prompt.endswith("<|im_start|>assistant\n")
    assert result.usage_metadata["output_tokens"] == TOKENS
    assert result.response_metadata["finish_reason"] == "length"
    assert result.response_metadata["adapter_ids"] == []


def test_stored_documents_become_adapters(store, text_engine):
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    stuffed = f"Context:\n{LIGHTHOUSE}\n\n{ORCHARD}\n\nQuestion: {QUESTION}"
    result = llm.invoke([SystemMessage(f"Answer from these notes.\n\n{STATION}"), HumanMessage(stuffed)])
    turns = [("system", "Answer from these notes."), ("user", f"Context:\n\nQuestion: {QUESTION}")]
    expected, prompt_tokens = direct(text_engine, store, turns, ["station", "light", "orchard"])
    assert result.response_metadata["adapter_ids"] == ["station", "light", "orchard"]
    assert result.content == expected
    assert result.usage_metadata["input_tokens"] == prompt_tokens
    without, _ = direct(text_engine, store, turns, [])
    assert result.content != without  # the adapters do change the answer


def test_text_of_unknown_or_deleted_documents_stays_in_the_prompt(store, text_engine):
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    store.delete(["light"])
    prompt = f"{LIGHTHOUSE}\n\n{QUESTION}"
    result = llm.invoke(prompt)
    assert result.response_metadata["adapter_ids"] == []
    assert result.usage_metadata["input_tokens"] == direct(text_engine, store, [("user", prompt)], [])[1]


def test_lcel_chain_swaps_text_for_adapters(store, text_engine):
    prompt = ChatPromptTemplate.from_template("Answer from the context.\n\n{context}\n\nQuestion: {question}")
    retriever = store.as_retriever(search_kwargs={"k": 2})

    def run(llm: ChatDoc2LoRA) -> tuple[AIMessage, str]:
        head = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt
        with_parser = head | llm | StrOutputParser()
        return (head | llm).invoke(QUESTION), with_parser.invoke(QUESTION)

    swapped, swapped_text = run(ChatDoc2LoRA(index=store, max_tokens=TOKENS))
    stuffed, _ = run(ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS))
    retrieved = [d.id for d in retriever.invoke(QUESTION)]
    assert swapped.response_metadata["adapter_ids"] == retrieved and retrieved[0] == "light"
    assert stuffed.response_metadata["adapter_ids"] == []
    assert swapped_text == swapped.content
    saved = stuffed.usage_metadata["input_tokens"] - swapped.usage_metadata["input_tokens"]
    document_tokens = sum(runtime.count_tokens(text_engine, store.get_by_ids([i])[0].page_content) for i in retrieved)
    assert saved >= document_tokens  # every document token left the prompt (and the separators)
    assert swapped.usage_metadata["input_tokens"] < stuffed.usage_metadata["input_tokens"] / 2
    turns = [("user", f"Answer from the context.\n\nQuestion: {QUESTION}")]
    assert swapped.content == direct(text_engine, store, turns, retrieved)[0]


def test_create_retrieval_chain_swaps_text_for_adapters(store, text_engine):
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer with the context below.\n\n{context}"), ("human", "{input}")]
    )
    retriever = store.as_retriever(search_kwargs={"k": 2})

    def run(llm: ChatDoc2LoRA) -> tuple[dict, dict]:
        chain = create_retrieval_chain(retriever, create_stuff_documents_chain(llm, prompt))
        with get_usage_metadata_callback() as usage:
            result = chain.invoke({"input": QUESTION})
        return result, usage.usage_metadata[text_engine.base.name]

    swapped, swapped_usage = run(ChatDoc2LoRA(index=store, max_tokens=TOKENS))
    stuffed, stuffed_usage = run(ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS))
    ids = [d.id for d in swapped["context"]]
    turns = [("system", "Answer with the context below."), ("user", QUESTION)]
    expected, prompt_tokens = direct(text_engine, store, turns, ids)
    assert swapped["answer"] == expected
    assert swapped_usage["input_tokens"] == prompt_tokens
    assert swapped_usage["input_tokens"] < stuffed_usage["input_tokens"] / 2
    assert stuffed["answer"] == direct(text_engine, store, [(r, t) for r, t in _stuffed_turns(swapped)], [])[0]


def _stuffed_turns(result: dict) -> list[tuple[str, str]]:
    context = "\n\n".join(d.page_content for d in result["context"])
    return [("system", f"Answer with the context below.\n\n{context}"), ("user", QUESTION)]


def test_stream_matches_invoke_and_reports_usage_once(store):
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    message = [HumanMessage(f"{LIGHTHOUSE}\n\n{QUESTION}")]
    chunks = list(llm.stream(message))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    invoked = llm.invoke(message)
    assert full.content == invoked.content
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    assert full.usage_metadata["input_tokens"] == invoked.usage_metadata["input_tokens"]
    assert full.response_metadata["adapter_ids"] == ["light"]
    assert chunks[-1].chunk_position == "last"
    assert ChatDoc2LoRA(index=store, max_tokens=TOKENS, streaming=True).invoke(message).content == invoked.content


def test_stop_and_max_tokens(text_engine):
    llm = ChatDoc2LoRA(engine=text_engine, max_tokens=12)
    full = llm.invoke("hello").content
    assert len(llm.invoke("hello", max_tokens=3).content) <= 3
    cut = full[2:4]
    expected = full[: full.index(cut)].strip()
    assert len(expected) < len(full)
    assert llm.invoke("hello", stop=[cut]).content == expected
    assert ChatDoc2LoRA(engine=text_engine, max_tokens=12, stop=[cut]).invoke("hello").content == expected
    assert "".join(c.content for c in llm.stream("hello", stop=[cut])) == expected


def test_batch_keeps_each_prompts_adapters_apart(store):
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    prompts = [f"{LIGHTHOUSE}\n\n{QUESTION}", f"{ORCHARD}\n\nWhat was harvested?", f"{STATION}\n\nWho staffs it?"]
    one_by_one = [llm.invoke(p) for p in prompts]
    batched = llm.batch(prompts, config={"max_concurrency": 3})
    assert [m.content for m in batched] == [m.content for m in one_by_one]
    assert [m.response_metadata["adapter_ids"] for m in batched] == [["light"], ["orchard"], ["station"]]


async def test_async_chain(store):
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    prompts = [f"{LIGHTHOUSE}\n\n{QUESTION}", f"{ORCHARD}\n\nWhat was harvested?"]
    expected = [llm.invoke(p).content for p in prompts]
    assert [m.content for m in await llm.abatch(prompts)] == expected
    assert "".join([c.content async for c in llm.astream(prompts[0])]) == expected[0]


def test_refuses_what_it_cannot_read(text_engine):
    llm = ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS)
    image = {"type": "image", "url": "https://example.com/a.png"}
    with pytest.raises(ValueError, match="text only"):
        llm.invoke([HumanMessage(content=[{"type": "text", "text": "what is this"}, image])])
    with pytest.raises(ValueError, match="tool"):
        llm.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")])
    with pytest.raises(ValueError, match="serves"):
        llm.invoke("hi", model="gpt-4o")
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        llm.invoke("hi", max_tokens=0)
    with pytest.raises(TypeError, match="Doc2LoRAIndex"):
        ChatDoc2LoRA(index="not an index")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ChatDoc2LoRA(engine=text_engine, temperature=0.7)
    assert any("greedily" in str(w.message) for w in caught)
    assert llm.invoke([HumanMessage(content=[{"type": "text", "text": "hello"}])]).content


def test_message_chunks_read_like_their_messages(text_engine):
    """A chat loop that streams keeps the added-up AIMessageChunk in its history."""
    llm = ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS)
    reply = None
    for chunk in llm.stream("hello"):
        reply = chunk if reply is None else reply + chunk
    chunks = [SystemMessageChunk(content="Be brief."), HumanMessageChunk(content="hello"), reply, HumanMessage("again")]
    messages = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage(reply.content), HumanMessage("again")]
    from_chunks, from_messages = llm.invoke(chunks), llm.invoke(messages)
    assert from_chunks.content == from_messages.content
    assert from_chunks.usage_metadata["input_tokens"] == from_messages.usage_metadata["input_tokens"]


def test_llm_cache_tells_bound_stores_and_their_changes_apart(store, text_engine):
    prompt = f"{LIGHTHOUSE}\n\n{QUESTION}"
    cache = InMemoryCache()
    ChatDoc2LoRA(engine=text_engine, max_tokens=TOKENS, cache=cache).invoke(prompt)  # no index: text read
    bound = ChatDoc2LoRA(index=store, max_tokens=TOKENS, cache=cache)
    swapped = bound.invoke(prompt)
    assert swapped.response_metadata["adapter_ids"] == ["light"]
    assert swapped.content == ChatDoc2LoRA(index=store, max_tokens=TOKENS).invoke(prompt).content
    store.delete(["light"])  # the same prompt now keeps its text
    assert bound.invoke(prompt).response_metadata["adapter_ids"] == []


def test_default_engine_is_loaded_lazily_once(monkeypatch, text_engine):
    loads = []

    def load(*args, **kwargs):
        loads.append(1)
        return text_engine

    monkeypatch.setattr(runtime, "_default_engine", None)
    monkeypatch.setattr(Doc2LoRA, "from_pretrained", load)
    first, second = ChatDoc2LoRA(max_tokens=TOKENS), ChatDoc2LoRA(max_tokens=TOKENS)
    assert loads == [] and first.model_name == "SmolLM2-135M-Instruct"
    first.invoke("hello")
    second.invoke("hello")
    assert loads == [1]


def test_bound_index_engine_is_used(store, text_engine):
    llm = ChatDoc2LoRA(index=store)
    assert llm.model_name == text_engine.base.name
    assert llm._resolve_engine() is text_engine


def test_chat_model_asks_for_adapters_narrowed_to_the_question(store, monkeypatch):
    asked = []
    real = store.core.adapter

    def recording(ids, question=None):
        asked.append((list(ids), question))
        return real(ids, question=question)

    monkeypatch.setattr(store.core, "adapter", recording)
    llm = ChatDoc2LoRA(index=store, max_tokens=TOKENS)
    result = llm.invoke([SystemMessage(f"Context:\n\n{LIGHTHOUSE}"), HumanMessage(QUESTION)])
    assert result.response_metadata["adapter_ids"] == ["light"]
    assert asked == [(["light"], QUESTION)]  # a long document would keep its chunks that match it
