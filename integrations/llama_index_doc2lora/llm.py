"""``Doc2LoRALLM``: the engine's base model as a LlamaIndex ``CustomLLM``, with adapters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt
from pydantic import Field, PrivateAttr

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.index import Doc2LoRAIndex as CoreIndex
from langchain_doc2lora.matching import DEFAULT_MIN_CHARS, StoredTextMatcher
from langchain_doc2lora.runtime import (
    DEFAULT_MAX_NEW_TOKENS,
    core_index,
    count_tokens,
    default_engine,
    generate,
    generate_stream,
    last_user_text,
    render_turns,
)

# Other providers' names for the same turns: OpenAI's developer is a system turn; Cohere's
# chatbot and Gemini's model are assistant turns.
_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


class Doc2LoRALLM(CustomLLM):
    """The base model, answering with documents' adapters attached instead of their text.

    Adapters come from two places, both resolved against the bound ``index``:
    ``adapter_ids=[...]`` given to ``complete``/``chat`` (what the index's query engine
    does with the routed nodes), and the stored documents' text recognised in the prompt
    (so a stock LlamaIndex engine that stuffs retrieved nodes into its prompt still gets
    adapters: the recognised text is cut out and the node's adapter attached). Prompts go
    through the tokenizer's chat template; decoding is greedy.

    ``engine``: by default the bound index's engine, or the embedded default (lazily).
    """

    engine: Any = Field(default=None, exclude=True, description="A doc2lora_rag.Doc2LoRA; None: lazily chosen.")
    index: Any = Field(default=None, exclude=True, description="The Doc2LoRAIndex whose adapters may attach.")
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, gt=0, description="New tokens at most.")
    stop: list[str] | None = Field(default=None, description="Stop strings.")
    min_match_chars: int = Field(default=DEFAULT_MIN_CHARS, gt=0, description="Shorter documents are not recognised.")

    _matcher: StoredTextMatcher | None = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.engine is not None and not isinstance(self.engine, Doc2LoRA):
            raise TypeError(f"engine must be a Doc2LoRA, not {type(self.engine).__name__}")
        if self.index is not None:
            core_index(self.index)  # fails now, not at the first call

    @classmethod
    def class_name(cls) -> str:
        return "Doc2LoRALLM"

    @property
    def metadata(self) -> LLMMetadata:
        """Loads the engine if needed: the context window is the base model's."""
        engine = self._engine()
        return LLMMetadata(
            context_window=int(getattr(engine.model.config, "max_position_embeddings", 2048)),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=engine.base.name,
        )

    def _engine(self) -> Doc2LoRA:
        if self.engine is not None:
            return self.engine
        if self.index is not None:
            return core_index(self.index).engine
        return default_engine()

    def count_tokens(self, prompt: str | Sequence[ChatMessage]) -> int:
        """Tokens this model is fed for ``prompt`` (a string is one user turn) as given, with
        any stored documents in it counted as text: what the prompt costs without the swap."""
        engine = self._engine()
        turns = [("user", prompt)] if isinstance(prompt, str) else _turns(prompt)
        return count_tokens(engine, render_turns(engine, turns))

    # ---------------------------------------------------------------- preparing a call

    def _prepare(
        self, turns: list[tuple[str, str]], kwargs: dict[str, Any], *, raw: str | None = None
    ) -> tuple[Doc2LoRA, str, LoRAAdapter | None, list[str], int, list[str] | None]:
        """Engine, prompt, adapter, adapter ids, token budget and stop strings for one call;
        ``raw`` is an already formatted prompt (used as it is, minus recognised documents)."""
        engine = self._engine()
        ids = list(dict.fromkeys(kwargs.get("adapter_ids") or []))
        core: CoreIndex | None = None
        if self.index is not None:
            core = core_index(self.index)
            if self._matcher is None or self._matcher.index is not core:
                self._matcher = StoredTextMatcher(core, min_chars=self.min_match_chars)
            if raw is not None:
                raw, found = self._matcher.extract(raw)
            else:
                turns, found = self._matcher.extract_from_turns(turns)
            ids += [i for i in found if i not in ids]
        elif ids:
            raise ValueError("adapter_ids need a bound index to load the adapters from")
        ids = [i for i in ids if core is not None and i in core]  # deleted meanwhile: dropped
        question = raw if raw is not None else last_user_text(turns)
        adapter = core.adapter(ids, question=question) if core is not None and ids else None
        prompt = raw if raw is not None else render_turns(engine, turns)
        max_new_tokens = kwargs.get("max_new_tokens") or self.max_new_tokens
        stop = kwargs.get("stop", self.stop)
        return engine, prompt, adapter, ids, max_new_tokens, stop

    def _completion_turns(self, prompt: str, formatted: bool) -> tuple[list[tuple[str, str]], str | None]:
        if formatted:
            return [], prompt
        if self.completion_to_prompt not in (None, default_completion_to_prompt):
            return [], self.completion_to_prompt(prompt)
        turns = [("system", self.system_prompt)] if self.system_prompt else []
        return [*turns, ("user", prompt)], None

    # ---------------------------------------------------------------- completion

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (a user turn unless ``formatted``); ``adapter_ids`` attach
        stored documents' adapters, ``max_new_tokens``/``stop`` override the defaults."""
        turns, raw = self._completion_turns(prompt, formatted)
        engine, text, adapter, ids, budget, stop = self._prepare(turns, kwargs, raw=raw)
        result = generate(engine, text, adapter, max_new_tokens=budget, stop=stop)
        details = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
            "adapter_ids": ids,
            "model_name": engine.base.name,
        }
        return CompletionResponse(text=result.text, raw=details, additional_kwargs=details)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, piece by piece; the last response's ``raw`` has the counts
        (output tokens re-counted from the text)."""
        turns, raw = self._completion_turns(prompt, formatted)
        engine, text, adapter, ids, budget, stop = self._prepare(turns, kwargs, raw=raw)
        return self._streaming(engine, text, adapter, ids, budget, stop)

    def _streaming(
        self,
        engine: Doc2LoRA,
        prompt: str,
        adapter: LoRAAdapter | None,
        ids: list[str],
        budget: int,
        stop: list[str] | None,
    ) -> Iterator[CompletionResponse]:
        so_far = ""
        for piece in generate_stream(engine, prompt, adapter, max_new_tokens=budget, stop=stop):
            so_far += piece
            yield CompletionResponse(text=so_far, delta=piece, raw={"adapter_ids": ids})
        details = {
            "prompt_tokens": count_tokens(engine, prompt),
            "completion_tokens": count_tokens(engine, so_far),
            "adapter_ids": ids,
            "model_name": engine.base.name,
        }
        yield CompletionResponse(text=so_far, delta="", raw=details, additional_kwargs=details)

    # ---------------------------------------------------------------- chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation through the chat template (documents recognised in system
        and user messages become adapters, as in :meth:`complete`)."""
        engine, prompt, adapter, ids, budget, stop = self._prepare(_turns(messages), kwargs)
        result = generate(engine, prompt, adapter, max_new_tokens=budget, stop=stop)
        details = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
            "adapter_ids": ids,
            "model_name": engine.base.name,
        }
        message = ChatMessage(role=MessageRole.ASSISTANT, content=result.text)
        return ChatResponse(message=message, raw=details, additional_kwargs=details)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        engine, prompt, adapter, ids, budget, stop = self._prepare(_turns(messages), kwargs)

        def pieces() -> Iterator[ChatResponse]:
            for response in self._streaming(engine, prompt, adapter, ids, budget, stop):
                message = ChatMessage(role=MessageRole.ASSISTANT, content=response.text)
                yield ChatResponse(message=message, delta=response.delta, raw=response.raw)

        return pieces()


def _turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    turns = []
    for message in messages:
        role = _ROLES.get(message.role)
        if role is None:
            raise ValueError(f"Doc2LoRALLM has no tool calling; cannot read a {message.role.value!r} message")
        turns.append((role, message.content or ""))
    return turns
