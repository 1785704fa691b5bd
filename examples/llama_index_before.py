"""A LlamaIndex RAG app as usually written: a vector index, and retrieved nodes stuffed into
the prompt. examples/llama_index_after.py is the same app after the swap.

Runs on the embedded default (SmolLM2-135M-Instruct), with a small deterministic embedding
(hashed bag of words) so that nothing is downloaded:
    python examples/llama_index_before.py
"""

from __future__ import annotations

import time

from _shared import DATA, MAX_TOKENS, QUESTIONS, PromptTokens
from _shared import HashedWordsLlamaEmbedding as HashedWordsEmbedding
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher

from llama_index_doc2lora import Doc2LoRALLM


def main() -> None:
    counter = PromptTokens()
    get_dispatcher().add_event_handler(counter)
    documents = SimpleDirectoryReader(str(DATA)).load_data()
    embedding = HashedWordsEmbedding()
    llm = Doc2LoRALLM(max_new_tokens=MAX_TOKENS)
    started = time.perf_counter()

    index = VectorStoreIndex.from_documents(documents, embed_model=embedding)

    query_engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    print(f"indexed {len(documents)} documents in {time.perf_counter() - started:.1f} s")

    total = 0
    for question in QUESTIONS:
        before = counter.total
        response = query_engine.query(question)
        tokens = counter.total - before
        total += tokens
        print(f"\nQ: {question}\nA: {response.response}")
        print(f"   sources: {', '.join(n.node.metadata['file_name'] for n in response.source_nodes)}")
        print(f"   prompt tokens fed to the model: {tokens}")
    print(f"\nprompt tokens for {len(QUESTIONS)} questions: {total}")


if __name__ == "__main__":
    main()
