"""Plain text out of an uploaded document: .txt, .md, .pdf and .html."""

from __future__ import annotations

import io
import logging
from html.parser import HTMLParser
from pathlib import PurePosixPath

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from stockade.errors import Unprocessable

# Media types by file suffix; a client's Content-Type is not trusted to pick the parser.
MEDIA_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
}
# Elements whose text is never document content.
_SKIPPED = frozenset({"script", "style", "template", "noscript", "head"})
_BLOCKS = frozenset(
    {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "pre",
        "blockquote",
        "table",
        "ul",
        "ol",
        "hr",
        "title",
    }
)


_PDF_ERRORS = (PdfReadError, ValueError, KeyError, TypeError, AttributeError)


class UnsupportedDocument(Unprocessable):
    title = "Unsupported document"


def media_type_of(filename: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None:
        raise UnsupportedDocument(
            f"cannot read {suffix or 'a file without a suffix'!s}; "
            f"upload one of {', '.join(sorted(MEDIA_TYPES))}"
        )
    return media_type


def check_readable(data: bytes, media_type: str) -> None:
    """Raise ``UnsupportedDocument`` now for a file the indexing job could not read.

    Cheap checks only: text must decode and not be blank, and a PDF file must open and
    not be encrypted. Extracting a PDF's text is left to the job.
    """
    if media_type == "application/pdf":
        _pdf_reader(data)
    elif not _decode(data).strip():
        raise UnsupportedDocument("the document has no text to index")


def extract_text(data: bytes, media_type: str) -> str:
    """Return the document's text, or raise ``UnsupportedDocument`` saying why not."""
    if media_type == "application/pdf":
        text = _pdf_text(data)
    elif media_type == "text/html":
        text = _html_text(_decode(data))
    else:
        text = _decode(data)
    text = text.replace("\x00", "").strip()
    if not text:
        raise UnsupportedDocument("the document has no text to index")
    return text


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedDocument("text documents must be UTF-8") from None


def _pdf_text(data: bytes) -> str:
    reader = _pdf_reader(data)
    try:
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except _PDF_ERRORS as exc:
        raise UnsupportedDocument(f"the PDF file could not be read: {type(exc).__name__}") from None


def _pdf_reader(data: bytes) -> PdfReader:
    # pypdf logs warnings about damaged files, which the error returned to the client covers.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except _PDF_ERRORS as exc:
        raise UnsupportedDocument(f"the PDF file could not be read: {type(exc).__name__}") from None
    if encrypted:
        raise UnsupportedDocument("encrypted PDF files cannot be indexed")
    return reader


def _html_text(markup: str) -> str:
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    return parser.text()


class _TextParser(HTMLParser):
    """Collect visible text, with a line break at each block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag in _BLOCKS:
            self._parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCKS:
            self._parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self._parts).splitlines())
        paragraphs: list[str] = []
        for line in lines:
            if line:
                paragraphs.append(line)
            elif paragraphs and paragraphs[-1]:
                paragraphs.append("")
        return "\n".join(paragraphs)
