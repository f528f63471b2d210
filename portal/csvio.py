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


def csv_sql_cell(expression: str) -> str:
    """One cell exactly as `csv_lines` writes it, as a SQL expression over
    `expression` (any type; NULL is an empty cell): neutralised with the
    same prefixes as `neutralise`, quoted, inner quotes doubled.

    For rows that are already in the database, so that PostgreSQL formats
    them instead of Python (a million rows cost seconds in Python).
    """
    prefixes = ", ".join(f"chr({ord(c)})" for c in _FORMULA_PREFIXES)
    text = f"coalesce(({expression})::text, '')"
    safe = (
        f"CASE WHEN left({text}, 1) IN ({prefixes}) THEN '''' || {text} ELSE {text} END"
    )
    return f"'\"' || replace({safe}, '\"', '\"\"') || '\"'"


def csv_sql_own_cell(expression: str) -> str:
    """A cell whose value the program itself makes (a line number, one of
    its own words or codes): only quoted, which is all `csv_sql_cell` would
    do to such a value, at a fraction of the cost. Never for text that
    came from a user."""
    return f"'\"' || coalesce(({expression})::text, '') || '\"'"


def csv_sql_line(cells: Iterable[str]) -> str:
    """One CSV line of `csv_sql_cell`/`csv_sql_own_cell` cells, as SQL,
    ending in CRLF as `csv_lines` does. The header, with its BOM, comes
    from `csv_lines`."""
    return " || ',' || ".join(cells) + " || chr(13) || chr(10)"


def csv_text(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO()
    for chunk in csv_lines(header, rows):
        buffer.write(chunk)
    return buffer.getvalue()
