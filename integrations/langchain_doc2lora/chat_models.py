"""``ChatDoc2LoRA``: the base model as a LangChain chat model, answering with adapters."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr, model_validator

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.base_model.loading import DEFAULT_MODEL_NAME
from doc2lora_rag.engine import Doc2LoRA
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

# By class, not by ``message.type``: a chunk (e.g. the AIMessageChunk a stream added up to,
# kept in a chat history) is a subclass of its message, with its own ``type``.
_ROLES = ((SystemMessage, "system"), (HumanMessage, "user"), (AIMessage, "assistant"))


@dataclass
class _Call:
    """One prepared generation: the prompt actually fed, and what is attached to it."""

    engine: Doc2LoRA
    prompt: str
    adapter: LoRAAdapter | None
    adapter_ids: list[str]
    max_new_tokens: int
    stop: list[str] | None


class ChatDoc2LoRA(BaseChatModel):
    """The engine's base model as a chat model; documents of a bound index become adapters.

    How retrieved documents reach it: a chain stuffs the retrieved documents' text into the
    prompt, so that text is all the model is given. With ``index`` bound, every system and
    human message is scanned for the exact text of the index's stored documents; each one
    found is cut out of the prompt and its adapter attached instead (all found adapters are
    rank-concatenated). The rest of the messages go through the tokenizer's chat template.
    So ``create_retrieval_chain`` and LCEL RAG chains work unchanged, and
    ``usage_metadata["input_tokens"]`` counts only the tokens actually fed to the model.
    ``response_metadata["adapter_ids"]`` names the documents that were attached. Text that
    is not an exact copy of a stored document (an edited chunk, a short one under
    ``min_match_chars``) simply stays in the prompt.

    ``engine``: a :class:`doc2lora_rag.Doc2LoRA`; by default the bound index's engine, or the
    embedded default, loaded on first use. Decoding is greedy: ``temperature`` is accepted
    for compatibility and only 0/None are honoured (others warn). ``timeout``,
    ``max_retries`` and API keys have no meaning for an in-process model and are ignored.
    No tool calling, structured output or non-text inputs.
    """

    engine: Doc2LoRA | None = Field(default=None, exclude=True)
    """The engine; None: the bound index's, or the embedded default (lazily)."""
    index: Any = Field(default=None, exclude=True)
    """A ``langchain_doc2lora.Doc2LoRAIndex`` (or any wrapper with ``.core``) or a core index."""
    max_tokens: int | None = None
    """New tokens at most (default 256)."""
    stop: list[str] | None = None
    """Stop strings used when a call gives none."""
    temperature: float | None = None
    """Only greedy decoding exists; anything but 0/None warns and is ignored."""
    streaming: bool = False
    """Whether ``invoke`` generates through the streaming path."""
    min_match_chars: int = DEFAULT_MIN_CHARS
    """Stored documents shorter than this are never recognised in a prompt."""

    _matcher: StoredTextMatcher | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> ChatDoc2LoRA:
        if self.index is not None:
            core_index(self.index)  # fails now, not at the first call
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be positive")
        if self.temperature not in (None, 0, 0.0):
            warnings.warn("ChatDoc2LoRA decodes greedily; temperature is ignored", stacklevel=2)
        return self

    @property
    def _llm_type(self) -> str:
        return "doc2lora"

    @property
    def model_name(self) -> str:
        """The base model's name (without loading it when it is not loaded yet)."""
        if self.engine is not None:
            return self.engine.base.name
        if self.index is not None:  # the store records the model once an engine is bound
            recorded = core_index(self.index).store.fingerprints
            if recorded:
                return recorded["base_model_name"]
        return DEFAULT_MODEL_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """What decides an answer besides the prompt (LangChain's LLM cache keys on it): with
        an index bound, its store and the store's state, which decide the adapters."""
        params = {"model_name": self.model_name, "max_tokens": self.max_tokens, "stop": self.stop}
        if self.index is not None:
            store = core_index(self.index).store
            params["index"] = f"{store.path}@{store.generation()}"
            params["min_match_chars"] = self.min_match_chars
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="doc2lora",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_max_tokens=kwargs.get("max_tokens") or self.max_tokens or DEFAULT_MAX_NEW_TOKENS,
        )
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the base model's own tokenizer."""
        return self._resolve_engine().tokenizer(text, add_special_tokens=False)["input_ids"]

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of these messages through the chat template, as given: stored documents in
        them are counted as text (``usage_metadata`` shows what is fed after the swap)."""
        if tools:
            raise ValueError("ChatDoc2LoRA has no tool calling")
        engine = self._resolve_engine()
        return count_tokens(engine, render_turns(engine, [_turn(m) for m in messages]))

    # ---------------------------------------------------------------- preparing a call

    def _resolve_engine(self) -> Doc2LoRA:
        if self.engine is not None:
            return self.engine
        if self.index is not None:
            return core_index(self.index).engine
        return default_engine()

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        override = kwargs.get("model")
        if override is not None and override != self.model_name:
            raise ValueError(f"ChatDoc2LoRA serves {self.model_name!r} only, not {override!r}")
        per_call = kwargs.get("max_tokens")
        if per_call is not None and per_call < 1:  # 0 would otherwise fall back to the default
            raise ValueError("max_tokens must be positive")
        max_new_tokens = per_call or self.max_tokens or DEFAULT_MAX_NEW_TOKENS
        engine = self._resolve_engine()
        turns = [_turn(message) for message in messages]
        adapter, ids = None, []
        if self.index is not None:
            turns, ids = self._swap_documents(turns)
            if ids:
                adapter = core_index(self.index).adapter(ids, question=last_user_text(turns))
        return _Call(
            engine=engine,
            prompt=render_turns(engine, turns),
            adapter=adapter,
            adapter_ids=ids,
            max_new_tokens=max_new_tokens,
            stop=list(stop if stop is not None else self.stop or []) or None,
        )

    def _swap_documents(self, turns: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
        """Cut stored documents out of the system and user turns; their ids, in order."""
        core = core_index(self.index)
        if self._matcher is None or self._matcher.index is not core:
            self._matcher = StoredTextMatcher(core, min_chars=self.min_match_chars)
        return self._matcher.extract_from_turns(turns)

    # ---------------------------------------------------------------- generating

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        call = self._prepare(messages, stop, kwargs)
        completion = generate(
            call.engine, call.prompt, call.adapter, max_new_tokens=call.max_new_tokens, stop=call.stop
        )
        usage = UsageMetadata(
            input_tokens=completion.prompt_tokens,
            output_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
        )
        message = AIMessage(
            content=completion.text,
            usage_metadata=usage,
            response_metadata=self._response_metadata(call, completion.finish_reason),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        text = ""
        for piece in generate_stream(
            call.engine, call.prompt, call.adapter, max_new_tokens=call.max_new_tokens, stop=call.stop
        ):
            text += piece
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        # The streamer hands out text, not tokens: output tokens are the text re-tokenized,
        # which can differ from the generated ids by a token at piece boundaries.
        prompt_tokens = count_tokens(call.engine, call.prompt)
        output_tokens = count_tokens(call.engine, text)
        finish_reason = "length" if output_tokens >= call.max_new_tokens else "stop"
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=UsageMetadata(
                    input_tokens=prompt_tokens,
                    output_tokens=output_tokens,
                    total_tokens=prompt_tokens + output_tokens,
                ),
                response_metadata=self._response_metadata(call, finish_reason),
                chunk_position="last",
            )
        )

    def _response_metadata(self, call: _Call, finish_reason: str) -> dict[str, Any]:
        return {
            "model_name": call.engine.base.name,
            "model_provider": "doc2lora",
            "finish_reason": finish_reason,
            "adapter_ids": list(call.adapter_ids),
        }


def _turn(message: BaseMessage) -> tuple[str, str]:
    """A message as ``(chat-template role, text)``; only text content can be read."""
    if isinstance(message, ChatMessage):
        role = message.role
    else:
        role = next((name for kind, name in _ROLES if isinstance(message, kind)), None)
    if role is None:
        raise ValueError(f"ChatDoc2LoRA has no tool calling; cannot read a {type(message).__name__}")
    return role, _text(message.content)


def _text(content: str | Sequence[Any]) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"ChatDoc2LoRA reads text only; got a {kind!r} content block")
    return "".join(parts)
