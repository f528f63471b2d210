"""The CSV reader on its own (edi.md §1): line numbers and the field checks,
across chunk boundaries. No database."""

from __future__ import annotations

import pytest

from edi.services.parsing import MAX_FIELD_CHARS, FileRejected, Reader


def read(data: bytes, chunk: int = 7) -> list[tuple[int, tuple[str, ...] | None]]:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return [(row.line, row.values) for row in Reader(pieces).rows()]


def test_line_numbers_count_physical_lines_blank_ones_included():
    data = (
        b"\r\n \r\nemail,first_name\r\na@corp.test,A\r\n\r\n , \r\nb@corp.test, B \r\n"
    )
    assert read(data) == [(4, ("a@corp.test", "A")), (7, ("b@corp.test", "B"))]
    assert read(data, chunk=1 << 16) == read(data)


def test_a_malformed_row_keeps_its_line_number():
    rows = list(Reader([b"email,first_name\nx@corp.test\ny@corp.test,Y\n"]).rows())
    assert [(r.line, r.problem.code if r.problem else None) for r in rows] == [
        (2, "ROW_MALFORMED"),
        (3, None),
    ]


@pytest.mark.parametrize("newline", [b"\n", b""], ids=["ended", "last-line-unended"])
@pytest.mark.parametrize("before", [1, 5000])
def test_a_field_over_64_kib_is_refused_wherever_it_is(newline, before):
    good = b"".join(b"p%d@corp.test,x\n" % i for i in range(before))
    big = b"big@corp.test," + b"x" * (MAX_FIELD_CHARS + 1) + newline
    with pytest.raises(FileRejected) as caught:
        read(b"email,first_name\n" + good + big, chunk=4096)
    problem = caught.value.problems[0]
    assert (problem.code, problem.line) == ("FIELD_TOO_LARGE", before + 2)


def test_a_long_line_of_short_fields_is_read():
    cells = ",".join(["y" * 1000] * 80)  # an 80 kB line, no field over 64 KiB
    header = "email," + ",".join(f"c{i}" for i in range(80))
    data = f"{header}\na@corp.test,{cells}\nb@corp.test,{cells}\n".encode()
    assert [line for line, _ in read(data, chunk=4096)] == [2, 3]


def test_a_quoted_line_break_is_refused_on_its_first_line():
    data = b'email,first_name\na@corp.test,A\nb@corp.test,"open\nc@corp.test,C\n'
    with pytest.raises(FileRejected) as caught:
        read(data)
    problem = caught.value.problems[0]
    assert (problem.code, problem.line) == ("FIELD_LINE_BREAK", 3)


def test_copy_blocks_escape_only_when_a_value_needs_it():
    from edi.services.parsing import Batch, Problem
    from edi.services.pipeline import _copy_block

    clean = Batch(
        [2, 3], [("a@corp.test", "A"), ("b@corp.test", "B")], {1: Problem("X", "x")}
    )
    assert _copy_block(clean, 2) == "2\ta@corp.test\tA\t\\N\n3\tb@corp.test\tB\tX\n"
    for value, escaped in [
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("ends\\N", "ends\\\\N"),
        ("line\nbreak", "line\\nbreak"),
        ("carriage\rreturn", "carriage\\rreturn"),
    ]:
        batch = Batch(
            [*clean.lines, 4], [*clean.values, ("c@corp.test", value)], clean.problems
        )
        block = _copy_block(batch, 2)
        assert block.startswith("2\ta@corp.test\tA\t\\N\n3\tb@corp.test\tB\tX\n")
        assert block.endswith(f"4\tc@corp.test\t{escaped}\t\\N\n"), value


@pytest.mark.parametrize(
    "odd", ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_other_unicode_line_boundaries_are_data_not_line_ends(odd):
    """str.splitlines would end a line at these; the whitelist is CR, LF and
    CRLF, so they stay inside the value (and the lines keep their numbers)."""
    data = f"email,first_name\na@corp.test,A{odd}B\nb@corp.test,C\n".encode()
    expected = [(2, ("a@corp.test", f"A{odd}B")), (3, ("b@corp.test", "C"))]
    assert read(data, chunk=1 << 16) == expected
    assert read(data) == expected


def test_batches_of_any_size_hold_the_same_rows():
    lines = ["email,first_name", "", "a@corp.test,A", "x@corp.test", " , "]
    lines += [f"p{i}@corp.test,P{i}" for i in range(50)] + ["", "z@corp.test,Z"]
    data = ("\r\n".join(lines) + "\r\n").encode()

    def rows(size: int) -> list[tuple[int, tuple[str, ...], str | None]]:
        reader = Reader([data[i : i + 13] for i in range(0, len(data), 13)])
        return [
            (line, values, batch.problems[i].code if i in batch.problems else None)
            for batch in reader.batches(size)
            for i, (line, values) in enumerate(
                zip(batch.lines, batch.values, strict=True)
            )
        ]

    one = rows(1)
    assert one == rows(7) == rows(4000)
    assert one[:3] == [
        (3, ("a@corp.test", "A"), None),
        (4, ("x@corp.test", ""), "ROW_MALFORMED"),
        (6, ("p0@corp.test", "P0"), None),
    ]
    assert one[-1] == (57, ("z@corp.test", "Z"), None)
    assert len(one) == 53
