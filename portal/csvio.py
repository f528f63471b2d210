"""The one CSV writer every CSV the project emits goes through (PORTAL-10).

Cells that a spreadsheet would read as a formula get a leading apostrophe
(OWASP CSV injection): those starting with `=`, `+`, `-`, `@`, tab or CR, and
their full-width forms. Output is UTF-8 with a BOM, every field quoted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

BOM = "\ufeff"
_FORMULA_PREFIXES = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\uff1d",
    "\uff0b",
    "\uff0d",
    "\uff20",
)


def neutralise(value: Any) -> str:
    """Return `value` as text that no spreadsheet evaluates as a formula."""
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


class _Line:
    def __init__(self) -> None:
        self.value = ""

    def write(self, value: str) -> None:
        self.value = value


def csv_lines(header: list[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """Yield the CSV text line by line, BOM first: for streaming responses."""
    line = _Line()
    writer = csv.writer(line, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([neutralise(cell) for cell in header])
    yield BOM + line.value
    for row in rows:
        writer.writerow([neutralise(cell) for cell in row])
        yield line.value


def csv_blocks(
    header: list[str], rows: Iterable[Iterable[Any]], *, size: int = 1 << 16
) -> Iterator[bytes]:
    """The same CSV as `csv_lines`, UTF-8 encoded in blocks of about `size`
    bytes: for files, where a write (or an encryption) per line costs more
    than the line."""
    block: list[str] = []
    length = 0
    for line in csv_lines(header, rows):
        block.append(line)
        length += len(line)
        if length >= size:
            yield "".join(block).encode()
            block.clear()
            length = 0
    if block:
        yield "".join(block).encode()


def csv_text(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO()
    for chunk in csv_lines(header, rows):
        buffer.write(chunk)
    return buffer.getvalue()
