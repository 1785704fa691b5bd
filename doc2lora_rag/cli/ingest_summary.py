"""What an ingest did, kept up to date as it runs so that even an interrupted or failed run
can say what it finished."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import typer

from doc2lora_rag.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, describe, fail


@dataclass(frozen=True)
class Failure:
    """A file or record that was not stored, and why (one line a person can act on)."""

    id: str
    reason: str


@dataclass
class IngestSummary:
    """Counts of documents by outcome. ``skipped`` documents were stored and unchanged (their
    metadata, such as the file time, may have been refreshed); ``tokens`` and ``seconds`` cover
    the documents internalised in this run."""

    store: str
    dry_run: bool = False
    files: int = 0
    ignored: int = 0
    added: int = 0
    updated: int = 0
    skipped: int = 0
    removed: int = 0
    failed: list[Failure] = field(default_factory=list)
    internalised: int = 0
    tokens: int = 0
    build_seconds: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    workers: Counter = field(default_factory=Counter)
    read: str = "files"  # what ``files`` counts: files, or a store's documents (rebuild)

    def fail(self, doc_id: str, reason: str) -> None:
        self.failed.append(Failure(doc_id, reason))

    def stored(self, change: str) -> None:
        if change == "added":
            self.added += 1
        else:
            self.updated += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "dry_run": self.dry_run,
            "files": self.files,
            "ignored": self.ignored,
            "added": self.added,
            "updated": self.updated,
            "skipped": self.skipped,
            "removed": self.removed,
            "failed": [{"id": f.id, "reason": f.reason} for f in self.failed],
            "internalised": self.internalised,
            "tokens": self.tokens,
            "build_seconds": round(self.build_seconds, 3),
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "workers": dict(self.workers),
        }

    def render(self, echo: Callable[[str], None]) -> None:
        would = "would be " if self.dry_run else ""
        echo(f"store    {self.store}")
        ignored = f", {self.ignored} ignored (other types, hidden, or not matching --glob)" if self.ignored else ""
        echo(f"{self.read:<8} {self.files} read{ignored}")
        echo(f"added    {self.added}" + (f" ({would}new)" if self.dry_run else ""))
        echo(f"updated  {self.updated}" + (" (changed since stored)" if self.updated else ""))
        echo(f"skipped  {self.skipped}" + (" (stored and unchanged)" if self.skipped else ""))
        if self.removed:
            echo(f"removed  {self.removed} ({would}pruned: their files or records are gone)")
        echo(f"failed   {len(self.failed)}")
        for failure in self.failed[:50]:
            echo(f"  {failure.id}: {failure.reason}")
        if len(self.failed) > 50:
            echo(f"  ... and {len(self.failed) - 50} more (--json lists them all)")
        if self.internalised:
            seconds = max(self.build_seconds, 1e-9)
            echo(
                f"internalised {self.internalised} documents, {self.tokens:,} tokens in {self.build_seconds:.1f} s "
                f"({self.internalised / seconds:.2f} docs/s, {self.tokens / seconds:,.0f} tokens/s)"
            )
        if len(self.workers) > 1:
            echo("workers  " + ", ".join(f"{name}: {count}" for name, count in sorted(self.workers.items())))
        if self.interrupted:
            echo("interrupted: finished documents are stored; run the same command again to continue")


def print_summary(summary: IngestSummary, started: float, json_output: bool) -> None:
    summary.seconds = time.monotonic() - started
    if json_output:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        summary.render(typer.echo)
    sys.stdout.flush()


@contextmanager
def reported(summary: IngestSummary, started: float, json_output: bool) -> Iterator[None]:
    """Print the summary however the work inside ends, so finished documents are always
    accounted for; exit 130 on an interrupt, a known error's code on one, 1 if any failed."""
    try:
        yield
    except KeyboardInterrupt:
        summary.interrupted = True
        print_summary(summary, started, json_output)
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except Exception as error:
        known = describe(error)
        if known is None:
            raise
        print_summary(summary, started, json_output)
        raise fail(*known) from None
    print_summary(summary, started, json_output)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)
