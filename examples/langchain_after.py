"""examples/langchain_before.py after the swap: the same app, with the vector store line
changed to Doc2LoRAIndex and the chat model bound to it. The chain is untouched; the
retrieved documents now reach the model as adapters instead of prompt text.

Runs on the embedded default (SmolLM2-135M-Instruct); the shipped hypernetwork carries facts of
short fact documents better than of prose paragraphs like these, so expect poor answers:
    python examples/langchain_after.py
"""

from __future__ import annotations

import time

from _shared import DATA, MAX_TOKENS, QUESTIONS, HashedWordsEmbedding, format_docs  # noqa: I001
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from langchain_doc2lora import ChatDoc2LoRA, Doc2LoRAIndex


def main() -> None:
    docs = [
        Document(page_content=path.read_text(encoding="utf-8").strip(), metadata={"source": path.name})
        for path in sorted(DATA.iterdir())
        if path.suffix in {".md", ".txt"}
    ]
    embedding = HashedWordsEmbedding()
    started = time.perf_counter()

    vectorstore = Doc2LoRAIndex.from_documents(docs, embedding)  # the swap: adapters, not vectors
    llm = ChatDoc2LoRA(index=vectorstore, max_tokens=MAX_TOKENS)  # ... and the model that attaches them

    retriever = vectorstore.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_template(
        "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
    )
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    print(f"indexed {len(docs)} documents in {time.perf_counter() - started:.1f} s")

    total = stuffed_total = 0
    for question in QUESTIONS:
        with get_usage_metadata_callback() as usage:
            answer = chain.invoke(question)
        tokens = sum(u["input_tokens"] for u in usage.usage_metadata.values())
        found = retriever.invoke(question)
        as_text = prompt.format_messages(context=format_docs(found), question=question)
        stuffed = llm.get_num_tokens_from_messages(as_text)  # the same prompt with the documents' text in it
        total, stuffed_total = total + tokens, stuffed_total + stuffed
        print(f"\nQ: {question}\nA: {answer}")
        print(f"   adapters of: {', '.join(d.metadata['source'] for d in found)}")
        print(f"   prompt tokens fed to the model: {tokens} (with the documents as text: {stuffed})")
    saving = 1 - total / stuffed_total
    print(f"\nprompt tokens for {len(QUESTIONS)} questions: {total} instead of {stuffed_total} ({saving:.0%} fewer)")


if __name__ == "__main__":
    main()
