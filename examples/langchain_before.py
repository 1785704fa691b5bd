"""A LangChain RAG app as usually written: a vector store, and retrieved chunks stuffed into
the prompt. examples/langchain_after.py is the same app after the swap.

Runs on the embedded default (SmolLM2-135M-Instruct), with a small deterministic embedding
(hashed bag of words) so that nothing is downloaded:
    python examples/langchain_before.py
"""

from __future__ import annotations

import time

from _shared import DATA, MAX_TOKENS, QUESTIONS, HashedWordsEmbedding, format_docs  # noqa: I001
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_doc2lora import ChatDoc2LoRA


def main() -> None:
    docs = [
        Document(page_content=path.read_text(encoding="utf-8").strip(), metadata={"source": path.name})
        for path in sorted(DATA.iterdir())
        if path.suffix in {".md", ".txt"}
    ]
    embedding = HashedWordsEmbedding()
    started = time.perf_counter()

    vectorstore = InMemoryVectorStore.from_documents(docs, embedding)
    llm = ChatDoc2LoRA(max_tokens=MAX_TOKENS)

    retriever = vectorstore.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_template(
        "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
    )
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    print(f"indexed {len(docs)} documents in {time.perf_counter() - started:.1f} s")

    total = 0
    for question in QUESTIONS:
        with get_usage_metadata_callback() as usage:
            answer = chain.invoke(question)
        tokens = sum(u["input_tokens"] for u in usage.usage_metadata.values())
        total += tokens
        print(f"\nQ: {question}\nA: {answer}\n   prompt tokens fed to the model: {tokens}")
    print(f"\nprompt tokens for {len(QUESTIONS)} questions: {total}")


if __name__ == "__main__":
    main()
