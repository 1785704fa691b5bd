"""Readers: every supported format to documents with stable ids, and readable failures."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from doc2lora_rag.readers import (
    SUPPORTED_SUFFIXES,
    MissingPathError,
    ReaderOptions,
    ReadError,
    ReadFailure,
    SourceDocument,
    discover,
    html_to_text,
    read_file,
)


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one Helvetica text line per page (pypdf cannot write text)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    if title is not None:
        objects.append(f"<< /Title ({title}) >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def docs(items: list) -> list[SourceDocument]:
    return [i for i in items if isinstance(i, SourceDocument)]


def test_text_and_markdown_keep_text_and_title(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_bytes("\ufeffThe ferry leaves at nine.\n".encode())
    guide = tmp_path / "guide.md"
    guide.write_text("intro line\n# Harbour Guide #\n\nBoats dock at pier 3.\n")
    (doc,) = read_file(note)
    assert doc.id == str(note) and doc.text == "The ferry leaves at nine.\n"  # the BOM is dropped
    assert doc.metadata == {"format": "text"}
    (md,) = read_file(guide)
    assert md.metadata == {"format": "markdown", "title": "Harbour Guide"}
    assert "Boats dock at pier 3." in md.text


def test_wrong_encoding_is_a_read_error_not_mojibake(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(ReadError, match="not valid utf-8 .*--encoding"):
        read_file(latin)
    (doc,) = read_file(latin, ReaderOptions(encoding="latin-1"))
    assert doc.text == "caf\u00e9 au lait"


def test_html_keeps_visible_text_blocks_and_title() -> None:
    text, title = html_to_text(
        "<html><head><title> Tide &amp; Times </title><style>p{color:red}</style></head><body>"
        "<h1>Schedule</h1><p>First   ferry<br>at 07:10</p><script>var x = '<p>no</p>';</script>"
        "<ul><li>Mon&nbsp;&ndash; Fri</li><li>Sat</li></ul><!-- hidden --></body></html>"
    )
    assert title == "Tide & Times"
    lines = [line for line in text.splitlines() if line]
    assert lines == ["Schedule", "First ferry", "at 07:10", "Mon \u2013 Fri", "Sat"]
    assert "color" not in text and "var x" not in text and "hidden" not in text


def test_html_file_metadata(tmp_path: Path) -> None:
    page = tmp_path / "page.htm"
    page.write_text("<title>Ferry</title><p>Runs hourly.</p>")
    (doc,) = read_file(page)
    assert doc.text == "Runs hourly." and doc.metadata == {"format": "html", "title": "Ferry"}


def test_jsonl_records_ids_metadata_and_per_record_failures(tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    path.write_text(
        '{"id": "q1", "body": "Ferries run hourly.", "topic": "ferry"}\n'
        "\n"
        '{"body": "Orchards open in May."}\n'
        "{not json\n"
        '{"id": "q9", "other": 1}\n'
        "[1, 2]\n"
    )
    items = read_file(path, ReaderOptions(text_field="body"))
    good = docs(items)
    assert [d.id for d in good] == [f"{path}#q1", f"{path}#3"]
    assert good[0].text == "Ferries run hourly."
    assert good[0].metadata == {"id": "q1", "topic": "ferry", "format": "jsonl", "text_field": "body", "record": 1}
    failures = {f.id: f.reason for f in items if isinstance(f, ReadFailure)}
    assert set(failures) == {f"{path}#4", f"{path}#q9", f"{path}#6"}
    assert "line 4 is not JSON" in failures[f"{path}#4"]
    assert "no string field 'body'" in failures[f"{path}#q9"] and "other" in failures[f"{path}#q9"]
    assert "not an object" in failures[f"{path}#6"]


def test_json_object_is_one_document_and_array_is_records(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"text": "The lighthouse is 38 m tall.", "author": "Ada"}))
    (doc,) = read_file(single)
    assert doc.id == str(single) and doc.metadata["author"] == "Ada"
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"text": "first"}, {"text": "second", "id": 7}]))
    assert [d.id for d in docs(read_file(many))] == [f"{many}#0", f"{many}#7"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"text": ')
    with pytest.raises(ReadError, match="not valid JSON"):
        read_file(broken)
    missing = tmp_path / "nofield.json"
    missing.write_text('{"body": "x"}')
    with pytest.raises(ReadError, match="no string field 'text'"):
        read_file(missing)


def test_json_that_python_refuses_past_its_syntax_is_a_read_error(tmp_path: Path) -> None:
    """Deep nesting raises RecursionError and a 5,000-digit integer a plain ValueError inside
    json.loads: one such file or line must fail alone, not stop the whole ingest."""
    deep = "[" * 100_000 + "]" * 100_000
    huge_number = '{"text": "ok", "n": ' + "9" * 5000 + "}"
    for name, content in (("deep.json", deep), ("number.json", huge_number)):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(ReadError, match="not usable JSON"):
            read_file(path)
    lines = tmp_path / "mixed.jsonl"
    lines.write_text(f'{{"text": "Ferries run hourly."}}\n{deep}\n{huge_number}\n')
    items = read_file(lines)
    assert [d.text for d in docs(items)] == ["Ferries run hourly."]
    failures = {f.id: f.reason for f in items if isinstance(f, ReadFailure)}
    assert "nested too deeply" in failures[f"{lines}#2"]
    assert "digits" in failures[f"{lines}#3"]


def test_pdf_text_pages_and_title(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(make_pdf(["The keeper was Tomas Brennick.", "Automated in 1994."], title="Keepers"))
    (doc,) = read_file(path)
    assert "Tomas Brennick" in doc.text and "Automated in 1994." in doc.text
    assert doc.metadata == {"format": "pdf", "pages": 2, "title": "Keepers"}


def test_pdf_failures_say_what_is_wrong(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    with pytest.raises(ReadError, match="cannot parse PDF"):
        read_file(broken)
    blank = tmp_path / "scan.pdf"
    blank.write_bytes(make_pdf([""]))
    with pytest.raises(ReadError, match="no extractable text"):
        read_file(blank)
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["secret"]))))
    writer.encrypt(user_password="pw", algorithm="AES-128")
    locked = tmp_path / "locked.pdf"
    with open(locked, "wb") as handle:
        writer.write(handle)
    with pytest.raises(ReadError, match="encrypted"):
        read_file(locked)


def test_unsupported_and_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "slides.pptx"
    other.write_bytes(b"PK")
    with pytest.raises(ReadError, match="unsupported file type '.pptx'"):
        read_file(other)
    secret = tmp_path / "secret.txt"
    secret.write_text("x")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod does not stop root, which runs CI
    with pytest.raises(ReadError, match="permission denied"):
        read_file(secret)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_discover_skips_named_pipes_in_folders(tmp_path: Path) -> None:
    """Reading a FIFO blocks until something writes to it: a walk must pass over it."""
    (tmp_path / "a.txt").write_text("x")
    os.mkfifo(tmp_path / "pipe.txt")
    found = discover([tmp_path], SUPPORTED_SUFFIXES)
    assert [p.name for p in found.files] == ["a.txt"] and found.ignored == 1


def test_discover_walks_folders_with_globs_and_reports_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guides").mkdir(parents=True)
    (tmp_path / "docs" / ".git").mkdir()
    for name in ("a.md", "b.txt", "guides/c.md", "guides/d.pdf", "e.png", ".hidden.md", ".git/f.md"):
        (tmp_path / "docs" / name).write_text("x")
    explicit = tmp_path / "notes.rst"
    explicit.write_text("x")
    found = discover([tmp_path / "docs", explicit], SUPPORTED_SUFFIXES)
    names = [p.relative_to(tmp_path).as_posix() for p in found.files]
    assert names == ["docs/a.md", "docs/b.txt", "docs/guides/c.md", "docs/guides/d.pdf", "notes.rst"]
    assert found.ignored == 2  # e.png and .hidden.md (the .git folder is not entered)
    only_md = discover([tmp_path / "docs"], SUPPORTED_SUFFIXES, ["*.md"])
    assert [p.name for p in only_md.files] == ["a.md", "c.md"]
    nested = discover([tmp_path / "docs"], SUPPORTED_SUFFIXES, ["guides/*"])
    assert [p.name for p in nested.files] == ["c.md", "d.pdf"]
    with pytest.raises(MissingPathError, match="nope.txt, gone/"):
        discover([tmp_path / "docs", "nope.txt", "gone/"], SUPPORTED_SUFFIXES)
