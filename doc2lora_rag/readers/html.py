"""HTML to plain text with the standard library's parser: visible text, one block per line.

Scripts, styles and other invisible elements are dropped; block elements break lines so the
paragraph structure survives; the ``<title>`` is kept as metadata.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from doc2lora_rag.readers.base import ReaderOptions, SourceDocument
from doc2lora_rag.readers.text import decode

_INVISIBLE = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}
_BLOCKS = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
    "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
}
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _INVISIBLE:
            self._hidden += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _INVISIBLE:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> tuple[str, str | None]:
    """``(visible text, title)``: whitespace collapsed, at most one blank line between blocks."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(parser.parts).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = _SPACES.sub(" ", "".join(parser.title_parts)).strip() or None
    return text, title


def read_html(path: Path, data: bytes, options: ReaderOptions) -> list[SourceDocument]:
    text, title = html_to_text(decode(data, options.encoding))
    metadata: dict = {"format": "html"}
    if title:
        metadata["title"] = title
    return [SourceDocument(str(path), text, metadata)]
