"""Readers: files on disk (txt, md, html, json, jsonl, pdf) to documents with stable ids."""

from doc2lora_rag.readers.base import MissingPathError, ReaderOptions, ReadError, ReadFailure, SourceDocument
from doc2lora_rag.readers.discover import Discovery, discover
from doc2lora_rag.readers.dispatch import SINGLE_DOCUMENT_SUFFIXES, SUPPORTED_SUFFIXES, read_file
from doc2lora_rag.readers.html import html_to_text

__all__ = [
    "SINGLE_DOCUMENT_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "Discovery",
    "MissingPathError",
    "ReadError",
    "ReadFailure",
    "ReaderOptions",
    "SourceDocument",
    "discover",
    "html_to_text",
    "read_file",
]
