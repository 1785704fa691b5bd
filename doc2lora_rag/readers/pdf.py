"""PDF text through pypdf, page by page; the page count and title are kept as metadata."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from doc2lora_rag.readers.base import ReaderOptions, ReadError, SourceDocument

# pypdf logs every repaired cross-reference table; in a bulk ingest that drowns the summary.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def read_pdf(path: Path, data: bytes, options: ReaderOptions) -> list[SourceDocument]:
    try:
        from pypdf import PdfReader
    except ImportError as error:  # a declared dependency, but say what to do if it is missing
        raise ReadError("reading PDF needs pypdf: pip install pypdf") from error
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError("the PDF is encrypted; decrypt it first (for example with qpdf --decrypt)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.title if reader.metadata is not None else None
    except ReadError:
        raise
    except Exception as error:
        # pypdf raises many types on malformed input; one bad file must not stop a bulk ingest.
        raise ReadError(f"cannot parse PDF: {type(error).__name__}: {error}") from error
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise ReadError("the PDF has no extractable text (scanned pages? run OCR first)")
    metadata: dict = {"format": "pdf", "pages": len(pages)}
    if isinstance(title, str) and title.strip():
        metadata["title"] = title.strip()
    return [SourceDocument(str(path), text, metadata)]
