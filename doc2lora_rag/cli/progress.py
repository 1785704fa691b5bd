"""The ingest progress bar: documents and tokens per second, and an ETA weighted by text size.

The bar advances by characters, so one long document does not make the ETA lie; the count
column still shows documents. It draws on stderr, leaving stdout to the summary.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "docs":
            return Text(f"{task.fields['docs']}/{task.fields['docs_total']} docs")
        return Text(f"{int(task.completed)}/{int(task.total or 0)} files")


class _RateColumn(ProgressColumn):
    """A running average since the task started: steadier than rich's windowed speed."""

    def __init__(self, field: str, unit: str):
        super().__init__()
        self.field, self.unit = field, unit

    def render(self, task: Task) -> Text:
        if self.field not in task.fields:
            return Text("")
        elapsed = task.elapsed or 0.0
        rate = task.fields[self.field] / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.1f} {self.unit}" if rate < 100 else f"{rate:,.0f} {self.unit}")


class IngestProgress:
    """A no-op when disabled (``--no-progress``, ``--json``), so callers never check."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self._progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _CountColumn(),
                _RateColumn("docs", "docs/s"),
                _RateColumn("tokens", "tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console or Console(stderr=True),
            )
            if enabled
            else None
        )
        self._scan: TaskID | None = None
        self._build: TaskID | None = None
        self._docs = 0
        self._tokens = 0

    def __enter__(self) -> IngestProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def scanning(self, files: int) -> None:
        if self._progress is not None:
            self._scan = self._progress.add_task("scan", total=files, unit="files")

    def scanned(self) -> None:
        if self._progress is not None and self._scan is not None:
            self._progress.advance(self._scan)

    def building(self, docs: int, chars: int) -> None:
        if self._progress is not None:
            self._build = self._progress.add_task(
                "internalise", total=max(chars, 1), unit="docs", docs=0, docs_total=docs, tokens=0
            )

    def built(self, docs: int, chars: int, tokens: int) -> None:
        self._docs += docs
        self._tokens += tokens
        if self._progress is not None and self._build is not None:
            self._progress.update(self._build, advance=chars, docs=self._docs, tokens=self._tokens)
