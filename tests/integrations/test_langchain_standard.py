"""The langchain-tests standard suites, run on tiny random engines.

Routing on a tiny engine is BM25 over the document text, deterministic, so the suites'
expectations about ids and result order are met for real: e.g. ``similarity_search("bar",
k=2)`` ranks "bar" first because only it contains the term, then "foo" (score 0, kept
because a vector store search applies no threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests

from doc2lora_rag import Doc2LoRA
from langchain_doc2lora import ChatDoc2LoRA, Doc2LoRAIndex
from tests.integrations.conftest import make_text_engine

RETRIEVER_TEXTS = [
    "The lighthouse keeper on Varn Island logs the tide at dawn.",
    "The orchard in Lessay harvested cider apples this autumn.",
    "Mount Orsk has a weather station staffed by two meteorologists.",
    "The ferry to Varn Island leaves the harbour twice a day.",
    "Cider from the Lessay orchard is pressed in October.",
]


@cache
def engine() -> Doc2LoRA:
    """One tiny engine for all suites (the suites build models from plain properties)."""
    return make_text_engine()


@cache
def retriever_store() -> Doc2LoRAIndex:
    return Doc2LoRAIndex.from_texts(RETRIEVER_TEXTS, engine=engine())


def make_retriever(k: int = 4) -> VectorStoreRetriever:
    """How a LangChain app makes a retriever with ``k`` results from the vector store."""
    return retriever_store().as_retriever(search_kwargs={"k": k})


class TestDoc2LoRAIndexStandard(VectorStoreIntegrationTests):
    """Sync and async; get_by_ids supported."""

    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        store = Doc2LoRAIndex(engine=engine())  # a fresh temporary store: empty
        assert len(store.core) == 0
        try:
            yield store
        finally:
            store.delete()


class TestDoc2LoRARetrieverStandard(RetrieversIntegrationTests):
    """``as_retriever(search_kwargs={"k": k})`` is how ``k`` is set at construction."""

    @property
    def retriever_constructor(self) -> Callable[..., VectorStoreRetriever]:  # type: ignore[override]
        return make_retriever

    @property
    def retriever_query_example(self) -> str:
        return "Who logs the tide on Varn Island?"


class TestChatDoc2LoRAUnit(ChatModelUnitTests):
    """Flags left at their defaults already say the truth (no tools, no structured output,
    no image/audio/PDF input); usage metadata is returned."""

    @property
    def chat_model_class(self) -> type[ChatDoc2LoRA]:
        return ChatDoc2LoRA

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": engine()}

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatDoc2LoRAIntegration(ChatModelIntegrationTests):
    """Runs the model for real (tiny, so fast). Flags set truthfully: no tool calling, no
    structured output or JSON mode, text input only, no model override at call time (one
    engine serves one base model)."""

    @property
    def chat_model_class(self) -> type[ChatDoc2LoRA]:
        return ChatDoc2LoRA

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": engine(), "max_tokens": 16}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatDoc2LoRAIntegrationWithIndex(TestChatDoc2LoRAIntegration):
    """The same suite with an index bound: prompts without stored documents pass through."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"index": retriever_store(), "max_tokens": 16}
