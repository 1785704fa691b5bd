"""JSON and JSON Lines: each record's text field becomes one document.

A JSONL line, or an element of a top-level JSON array, is a record with id ``path#<key>``:
the record's own ``id_field`` value when it has one (stable when records move), else its
line number (JSONL) or array position (JSON). A top-level JSON object is one document whose
id is the path. A record's other fields become metadata, so they can be used as filters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from doc2lora_rag.readers.base import ReaderOptions, ReadError, ReadFailure, SourceDocument
from doc2lora_rag.readers.text import decode


def read_jsonl(path: Path, data: bytes, options: ReaderOptions) -> list[SourceDocument | ReadFailure]:
    results: list[SourceDocument | ReadFailure] = []
    for number, line in enumerate(decode(data, options.encoding).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            results.append(ReadFailure(f"{path}#{number}", f"line {number} is not JSON: {error.msg}"))
            continue
        except (RecursionError, ValueError) as error:
            results.append(ReadFailure(f"{path}#{number}", f"line {number} is not usable JSON: {_why(error)}"))
            continue
        results.append(_record(path, record, number, f"line {number}", "jsonl", options))
    return results


def read_json(path: Path, data: bytes, options: ReaderOptions) -> list[SourceDocument | ReadFailure]:
    try:
        value = json.loads(decode(data, options.encoding))
    except json.JSONDecodeError as error:
        raise ReadError(f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from error
    except (RecursionError, ValueError) as error:
        raise ReadError(f"not usable JSON: {_why(error)}") from error
    if isinstance(value, list):
        return [_record(path, item, i, f"element {i}", "json", options) for i, item in enumerate(value)]
    if isinstance(value, dict):
        made = _record(path, value, None, "the top-level object", "json", options)
        if isinstance(made, ReadFailure):
            raise ReadError(made.reason)
        return [made]
    raise ReadError(f"a JSON file must hold an object or an array of objects, not {type(value).__name__}")


def _why(error: BaseException) -> str:
    """What json.loads refused besides syntax: nesting past the recursion limit, or an
    integer of more than 4,300 digits (Python's int-from-string cap, a plain ValueError)."""
    return "nested too deeply" if isinstance(error, RecursionError) else str(error)


def _record(
    path: Path, record: Any, position: int | None, where: str, kind: str, options: ReaderOptions
) -> SourceDocument | ReadFailure:
    own = record.get(options.id_field) if isinstance(record, dict) else None
    key = own if isinstance(own, str | int) and not isinstance(own, bool) and str(own).strip() else position
    doc_id = str(path) if key is None else f"{path}#{key}"
    if not isinstance(record, dict):
        return ReadFailure(doc_id, f"{where} is {type(record).__name__}, not an object")
    text = record.get(options.text_field)
    if not isinstance(text, str):
        fields = ", ".join(sorted(record)[:8]) or "none"
        return ReadFailure(
            doc_id, f"{where} has no string field {options.text_field!r} (fields: {fields}); see --text-field"
        )
    metadata = {k: v for k, v in record.items() if k != options.text_field}
    metadata.update({"format": kind, "text_field": options.text_field})
    if position is not None:
        metadata["record"] = position
    return SourceDocument(doc_id, text, metadata)
