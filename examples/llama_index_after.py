"""examples/llama_index_before.py after the swap: the same app with one line changed, the
index class. Its query engine answers from the question alone, with the routed nodes'
adapters attached instead of their text in the prompt.

Runs on the embedded default (SmolLM2-135M-Instruct); the shipped hypernetwork carries facts of
short fact documents better than of prose paragraphs like these, so expect poor answers:
    python examples/llama_index_after.py
"""

from __future__ import annotations

import time

from _shared import DATA, MAX_TOKENS, QUESTIONS, PromptTokens
from _shared import HashedWordsLlamaEmbedding as HashedWordsEmbedding
from llama_index.core import SimpleDirectoryReader
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.schema import MetadataMode

from llama_index_doc2lora import Doc2LoRAIndex, Doc2LoRALLM


def main() -> None:
    counter = PromptTokens()
    get_dispatcher().add_event_handler(counter)
    documents = SimpleDirectoryReader(str(DATA)).load_data()
    embedding = HashedWordsEmbedding()
    llm = Doc2LoRALLM(max_new_tokens=MAX_TOKENS)
    started = time.perf_counter()

    index = Doc2LoRAIndex.from_documents(documents, embed_model=embedding)  # the swap: adapters, not vectors

    query_engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    print(f"indexed {len(documents)} documents in {time.perf_counter() - started:.1f} s")

    total = stuffed_total = 0
    for question in QUESTIONS:
        before = counter.total
        response = query_engine.query(question)
        tokens = counter.total - before
        # What LlamaIndex's standard engine would feed for the same nodes: its chat QA prompt.
        context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in response.source_nodes)
        as_text = CHAT_TEXT_QA_PROMPT.format_messages(context_str=context, query_str=question)
        stuffed = query_engine.llm.count_tokens(as_text) if response.source_nodes else tokens
        total, stuffed_total = total + tokens, stuffed_total + stuffed
        print(f"\nQ: {question}\nA: {response.response}")
        print(f"   sources (as adapters): {', '.join(n.node.metadata['file_name'] for n in response.source_nodes)}")
        print(f"   prompt tokens fed to the model: {tokens} (with the nodes as text: {stuffed})")
    saving = 1 - total / stuffed_total
    print(f"\nprompt tokens for {len(QUESTIONS)} questions: {total} instead of {stuffed_total} ({saving:.0%} fewer)")


if __name__ == "__main__":
    main()
