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
    from edi.services.parsing import Problem, Row
    from edi.services.pipeline import _copy_block

    def block(rows: list[Row]) -> str:
        lines = [
            f"{r.line}\t{chr(9).join(r.values or ())}\t"
            f"{r.problem.code if r.problem else chr(92) + 'N'}"
            for r in rows
        ]
        return _copy_block(lines, rows, 2)

    clean = [
        Row(2, ("a@corp.test", "A")),
        Row(3, ("b@corp.test", "B"), Problem("X", "x")),
    ]
    assert block(clean) == "2\ta@corp.test\tA\t\\N\n3\tb@corp.test\tB\tX\n"
    for value, escaped in [
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("ends\\N", "ends\\\\N"),
        ("line\nbreak", "line\\nbreak"),
        ("carriage\rreturn", "carriage\\rreturn"),
    ]:
        rows = [*clean, Row(4, ("c@corp.test", value))]
        assert block(rows).endswith(f"4\tc@corp.test\t{escaped}\t\\N\n"), value
