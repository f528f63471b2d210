"""Reading an EDI file: decoding, header, rows (EDI-P3, P5, P6).

A streaming reader over the file's bytes (the decrypted raw blob): nothing
holds the whole file. It accepts exactly the whitelist of DESIGN.md:
UTF-8 with or without BOM, `,` or `;` (whichever finds the `email`
header), CRLF, LF or CR line ends. Everything else is a `FileRejected`
with a named code and, where there is one, the line:

* `FILE_NOT_TEXT`: NUL bytes, or a ZIP, GZIP, PDF or Office signature
  (never decompressed);
* `ENCODING_NOT_UTF8`: UTF-16 (by BOM or NULs) or bytes that are not
  UTF-8, with the first bad line;
* `DELIMITER_UNKNOWN`, `HEADER_MISSING_EMAIL`, `DUPLICATE_COLUMN`,
  `NO_DATA_ROWS`, `LINE_TOO_LONG` (over 1 MiB), `FIELD_TOO_LARGE` (over
  64 KiB), `FIELD_LINE_BREAK` (a quoted field spanning lines: usually an
  unbalanced quote swallowing rows).

Rows come out as `(line, values)` in canonical column order, or as a
row-level problem (`ROW_MALFORMED`: a wrong number of cells).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from portal.services.registry import audit_exempt

MAX_LINE_BYTES = 1024 * 1024
MAX_FIELD_CHARS = 64 * 1024
READ_CHUNK = 1024 * 1024

CANONICAL = (
    "email",
    "employee_id",
    "first_name",
    "last_name",
    "job_title",
    "department",
    "location",
    "manager_employee_id",
    "seat",
    "admin_permission",
    "groups",
)
ALIASES = {
    "invited_email_address": "email",
    "primary_email_address": "email",
    "unique_user_id": "employee_id",
    "preferred_first_name": "first_name",
    "preferred_last_name": "last_name",
    "work_title": "job_title",
    "sales_license_current_status": "seat",
}
_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"\x1f\x8b", "a GZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Office document"),
    (b"BZh", "a BZIP2 archive"),
    (b"\xfd7zXZ\x00", "an XZ archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)
UTF8_BOM = codecs.BOM_UTF8
# Line boundaries of str.splitlines beyond CR and LF, as UTF-8: single
# bytes, and U+0085, U+2028 and U+2029.
_OTHER_BREAK_BYTES = b"\v\f\x1c\x1d\x1e"
_OTHER_BREAK_SEQUENCES = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
SAVE_AS = 'Save the file as "CSV UTF-8 (comma delimited)" and send it again.'


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    line: int | None = None
    details: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"code": self.code, "message": self.message}
        if self.line is not None:
            data["line"] = self.line
        if self.details:
            data["details"] = self.details
        return data


class FileRejected(Exception):
    """A file-level error: nothing of the file is applied."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


@audit_exempt("pure: reads a header")
def normalise_header(name: str) -> str:
    """Trimmed, case-folded, spaces and hyphens as `_`, aliases mapped."""
    key = name.strip().strip("\ufeff").casefold().replace(" ", "_").replace("-", "_")
    while "__" in key:
        key = key.replace("__", "_")
    return ALIASES.get(key, key)


@dataclass
class Header:
    names: list[str]  # as found in the file
    delimiter: str
    positions: dict[str, int]  # canonical column -> cell index
    unknown: list[str]  # names of columns that mean nothing to us

    @property
    def columns(self) -> tuple[str, ...]:
        """The canonical columns present, in canonical order."""
        return tuple(c for c in CANONICAL if c in self.positions)


class _Lines:
    """Physical lines of a byte stream, decoded; tracks the line number.

    `bytes.splitlines` splits on exactly `\\n`, `\\r` and `\\r\\n`, the
    whitelist of line ends; a CR at a chunk's end waits for the next chunk.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.number = 0  # the line last yielded
        self.bytes_read = 0
        # A line longer than a field may be was read (so a field may be).
        self.long_lines = False
        self._first = True

    def blocks(self) -> Iterator[list[str]]:
        """The decoded lines, a chunk's worth at a time (the reader chains
        them in C, with no Python step per line). `number` counts the
        lines handed out."""
        pending = b""
        for chunk in self._chunks:
            if not chunk:
                continue
            self.bytes_read += len(chunk)
            if self._first:
                chunk = self._check_start(chunk)
                self._first = False
            if b"\x00" in chunk:
                raise FileRejected(
                    Problem(
                        "FILE_NOT_TEXT",
                        "The file contains NUL bytes: it is binary, not CSV text. "
                        + SAVE_AS,
                        line=self.number + 1 + (pending + chunk).count(b"\n"),
                    )
                )
            data = pending + chunk
            lines = data.splitlines(keepends=True)
            pending = b""
            if lines and (
                not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")
            ):
                # Incomplete, or a CR that a LF in the next chunk may follow.
                pending = lines.pop()
            if len(pending) > MAX_LINE_BYTES:
                raise self._too_long()
            if not lines:
                continue
            # One decode per chunk (the common case: valid UTF-8 and short
            # lines); per line only to name the offending line.
            block = ""
            longest = max(map(len, lines))
            if longest > MAX_FIELD_CHARS:
                self.long_lines = True
            if longest <= MAX_LINE_BYTES:
                raw = b"".join(lines)
                try:
                    block = raw.decode("utf-8")
                except UnicodeDecodeError:
                    pass
                else:
                    if _other_breaks(raw):
                        # str.splitlines would also split on these; the
                        # whitelist is CR, LF and CRLF only.
                        block = ""
                if block:
                    texts = block.splitlines(keepends=True)
                    self.number += len(texts)
                    yield texts
                    continue
            yield [self._decode(raw) for raw in lines]
        if pending:
            if len(pending) > MAX_FIELD_CHARS:
                self.long_lines = True
            yield [self._decode(pending)]

    def _check_start(self, chunk: bytes) -> bytes:
        if chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise FileRejected(
                Problem(
                    "ENCODING_NOT_UTF8",
                    "The file is UTF-16, not UTF-8. " + SAVE_AS,
                    line=1,
                    details={"found": "UTF-16"},
                )
            )
        for signature, what in _SIGNATURES:
            if chunk.startswith(signature):
                raise FileRejected(
                    Problem(
                        "FILE_NOT_TEXT",
                        f"The file is {what}, not CSV text. Send the CSV itself.",
                    )
                )
        head = chunk[:512]
        if len(head) >= 4 and head.count(b"\x00") * 3 >= len(head):
            # Mostly NULs between ASCII bytes: UTF-16 without a BOM.
            raise FileRejected(
                Problem(
                    "ENCODING_NOT_UTF8",
                    "The file looks like UTF-16, not UTF-8. " + SAVE_AS,
                    line=1,
                    details={"found": "UTF-16"},
                )
            )
        if chunk.startswith(UTF8_BOM):
            chunk = chunk[len(UTF8_BOM) :]
        return chunk

    def _decode(self, raw: bytes) -> str:
        self.number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise self._too_long()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            guess = "Windows-1252 (ANSI)" if _looks_cp1252(raw) else "not UTF-8"
            raise FileRejected(
                Problem(
                    "ENCODING_NOT_UTF8",
                    f"Line {self.number} is not valid UTF-8 (byte "
                    f"0x{raw[error.start]:02x}; the file looks {guess}). " + SAVE_AS,
                    line=self.number,
                )
            ) from None

    def _too_long(self) -> FileRejected:
        return FileRejected(
            Problem(
                "LINE_TOO_LONG",
                f"Line {self.number + 1} is longer than 1 MiB.",
                line=self.number + 1,
            )
        )


def _other_breaks(raw: bytes) -> bool:
    """Whether valid UTF-8 `raw` holds a line boundary of str.splitlines
    other than CR and LF (in C; a regex over the decoded text cost 0.8 s
    per 100 MB)."""
    if len(raw.translate(None, _OTHER_BREAK_BYTES)) != len(raw):
        return True
    return not raw.isascii() and any(seq in raw for seq in _OTHER_BREAK_SEQUENCES)


def _looks_cp1252(raw: bytes) -> bool:
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return True


def _split_header(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter))


@audit_exempt("pure: reads a header")
def read_header(line: str, *, line_number: int = 1) -> Header:
    """Pick the delimiter and map the header's columns (EDI-P5, P6)."""
    text = line.rstrip("\r\n")
    candidates = []
    for delimiter in (",", ";"):
        names = _split_header(text, delimiter)
        keys = [normalise_header(n) for n in names]
        if "email" in keys:
            candidates.append((delimiter, names, keys))
    if not candidates:
        for other, label in (("\t", "tab"), ("|", "|")):
            if "email" in [normalise_header(n) for n in _split_header(text, other)]:
                raise FileRejected(
                    Problem(
                        "DELIMITER_UNKNOWN",
                        f"The columns are separated by {label}; use a comma or a "
                        "semicolon.",
                        line=line_number,
                    )
                )
        found = [n.strip() for n in _split_header(text, ",") if n.strip()]
        raise FileRejected(
            Problem(
                "HEADER_MISSING_EMAIL",
                "The header has no email column. Columns found: "
                + (", ".join(found[:30]) or "(none)"),
                line=line_number,
                details={"found": found[:100]},
            )
        )
    # A header that splits on both (rare): the one with more columns wins.
    delimiter, names, keys = max(candidates, key=lambda c: len(c[1]))
    positions: dict[str, int] = {}
    unknown: list[str] = []
    for index, (name, key) in enumerate(zip(names, keys, strict=True)):
        if key in CANONICAL:
            if key in positions:
                raise FileRejected(
                    Problem(
                        "DUPLICATE_COLUMN",
                        f"Two columns mean {key}: "
                        f"{names[positions[key]].strip()!r} and {name.strip()!r}.",
                        line=line_number,
                        details={"column": key},
                    )
                )
            positions[key] = index
        elif name.strip():
            unknown.append(name.strip())
    return Header(
        names=names, delimiter=delimiter, positions=positions, unknown=unknown
    )


class Row(NamedTuple):
    line: int
    values: tuple[str, ...] | None  # canonical order of Header.columns
    problem: Problem | None = None


class Batch(NamedTuple):
    """Consecutive data rows: their line numbers, their cells (picked in
    canonical order, stripped) and the row-level problems by position."""

    lines: list[int]
    values: list[tuple[str, ...]]
    problems: dict[int, Problem]


class Reader:
    """Iterate a file's rows; `header` is known after the first row."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        csv.field_size_limit(MAX_LINE_BYTES * 2)
        self._lines = _Lines(chunks)
        self.header: Header | None = None
        self.data_rows = 0

    @property
    def bytes_read(self) -> int:
        return self._lines.bytes_read

    def rows(self) -> Iterator[Row]:
        """Row by row (`batches`, one at a time)."""
        for batch in self.batches(1000):
            for index, (line, values) in enumerate(
                zip(batch.lines, batch.values, strict=True)
            ):
                yield Row(line, values, batch.problems.get(index))

    def batches(self, size: int) -> Iterator[Batch]:
        """The data rows, `size` at a time (blank lines skipped).

        The first batch reads the header, or raises FileRejected. Per row
        only what a row needs is done in Python; the checks a clean file
        never fails are made once per chunk (`_Lines.long_lines`) or only
        for a record read from more than one line.
        """
        source = self._lines
        lines = itertools.chain.from_iterable(source.blocks())
        before = 0  # the lines read up to the header, or before the reader's first
        for first in lines:
            before += 1
            if first.strip():
                self.header = read_header(first, line_number=before)
                break
        else:
            raise FileRejected(Problem("NO_DATA_ROWS", "The file is empty."))
        header = self.header
        width = len(header.names)
        picks = [header.positions[c] for c in header.columns]
        # The picked cells as a tuple, in C (a generator per row cost about
        # 8 % of the parse); itemgetter of one index returns the cell.
        pick = operator.itemgetter(*picks)
        single = len(picks) == 1
        strip = str.strip
        reader = csv.reader(lines, delimiter=header.delimiter, strict=False)
        done = 0  # the reader's lines up to the last record
        numbers: list[int] = []
        values: list[tuple[str, ...]] = []
        problems: dict[int, Problem] = {}
        for cells in reader:
            line = before + done + 1
            # A record read from more than one physical line has a quoted
            # field with a line break in it.
            spans = reader.line_num - done > 1
            done = reader.line_num
            if spans or source.long_lines:
                _check_cells(cells, line)
            if len(cells) == width and cells[0].strip():
                picked = pick(cells)
            elif not cells or not "".join(cells).strip():
                continue  # a blank line
            elif len(cells) != width:
                problems[len(numbers)] = Problem(
                    "ROW_MALFORMED",
                    f"{len(cells)} cells where the header has {width}.",
                    line=line,
                )
                picked = None
            else:  # the first cell is blank, another is not
                picked = pick(cells)
            numbers.append(line)
            if picked is None:
                values.append(_partial(cells, picks))
            elif single:
                values.append((strip(picked),))
            else:
                values.append(tuple(map(strip, picked)))
            if len(numbers) >= size:
                self.data_rows += len(numbers)
                yield Batch(numbers, values, problems)
                numbers, values, problems = [], [], {}
        if numbers:
            self.data_rows += len(numbers)
            yield Batch(numbers, values, problems)
        if self.data_rows == 0:
            raise FileRejected(
                Problem("NO_DATA_ROWS", "The file has a header but no data rows.")
            )


def _check_cells(cells: list[str], line: int) -> None:
    """FIELD_TOO_LARGE and FIELD_LINE_BREAK for one record."""
    for cell in cells:
        if len(cell) > MAX_FIELD_CHARS:
            raise FileRejected(
                Problem(
                    "FIELD_TOO_LARGE",
                    f"Line {line} has a field over 64 KiB.",
                    line=line,
                )
            )
        if "\n" in cell or "\r" in cell:
            raise FileRejected(
                Problem(
                    "FIELD_LINE_BREAK",
                    f"Line {line} has a field that runs over several "
                    "lines: check for an unbalanced quote.",
                    line=line,
                )
            )


def _partial(cells: list[str], picks: list[int]) -> tuple[str, ...]:
    """What a malformed row still says, for its key (absent cells blank)."""
    return tuple(cells[i].strip() if i < len(cells) else "" for i in picks)
