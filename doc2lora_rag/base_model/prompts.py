"""Chat-template wrapping of documents and questions, using the tokenizer's own template.

Documents are read by the frozen model as a user turn. A long document is split into chunks,
and every chunk is wrapped again with the same prefix and suffix tokens, so that each chunk
looks to the model like a short document of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_SENTINEL = "\u2063DOC2LORA\u2063"


@dataclass(frozen=True)
class ChatWrapper:
    """Token ids that surround a user turn in this tokenizer's chat template."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> ChatWrapper:
        text = render_chat(tokenizer, _SENTINEL, add_generation_prompt=False)
        before, _, after = text.partition(_SENTINEL)
        encode = lambda s: tuple(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
        return cls(prefix_ids=encode(before), suffix_ids=encode(after))

    def wrap(self, content_ids: list[int]) -> list[int]:
        return [*self.prefix_ids, *content_ids, *self.suffix_ids]

    @property
    def overhead(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def render_chat(tokenizer: PreTrainedTokenizerBase, user_message: str, *, add_generation_prompt: bool) -> str:
    """One user turn through the chat template (plain text when the tokenizer has none)."""
    if tokenizer.chat_template is None:
        return user_message + ("\n" if add_generation_prompt else "")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def question_prompt(tokenizer: PreTrainedTokenizerBase, question: str, context: str | None = None) -> str:
    """The prompt for answering ``question``; with ``context`` the document comes first.

    Adapter queries and the in-context baseline share this format, so the only difference
    between them is whether the document is in the prompt or in the weights.
    """
    message = question if context is None else f"{context}\n\n{question}"
    return render_chat(tokenizer, message, add_generation_prompt=True)
