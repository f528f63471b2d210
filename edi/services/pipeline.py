"""The EDI import: stage → validate → preview → [hold] → apply (edi.md §3).

One run per file, as the portal job `edi_import` (`edi.tasks`):

1. **Stage.** The raw file is decrypted as a stream, read by
   `edi.services.parsing.Reader` and sent with psycopg's `COPY` into a
   session-local `TEMP` table, whose generated columns derive the keys
   and row codes as the rows arrive. No Python structure holds all rows or
   all keys. Each later step that derives columns rewrites the stage once
   with `CREATE TABLE AS` (`Run.rebuild`) rather than an `UPDATE` per
   column, then analyzes the columns later joins use.
2. **Validate** in SQL: row errors (codes per row), duplicate keys
   (file-level), the invalid-row ratio.
3. From here one transaction holds the tenant's apply lock. **Resolve**
   each row's member (a new member's id is drawn here), then the
   **preview**: counts and up to 50 samples
   per outcome, on the file. A dry run stops here (`validated`).
4. **Hold** (EDI-P8): a full file that would deactivate, or any file that
   would revoke, more than the tenant's threshold of active members or
   seats, or a full file with a row without a usable key, waits for an
   admin (`held`). Approval sends the job again with `approved`; if the
   numbers grew since the admin saw them, the file is held again.
5. **Apply**, in the same transaction: the plan (seats,
   managers in one pass), insert (a first load through the bulk path,
   `Run._bulk_begin`), update changed rows only, reactivate, deactivate
   the missing, seats, groups, managers, end sessions, the results file,
   the audit event and the final status. A rerun (a crash anywhere)
   starts again from the raw file; a file already final is left alone.

The statements are the same for every file size (EDI-P2).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from edi.models import AutoProvisionRule, EdiFile, EdiMode, EdiStatus
from edi.services.notify import edi_file_notify
from edi.services.parsing import CANONICAL, Batch, FileRejected, Problem, Reader
from edi.services.receive import KEY_PURPOSE, edi_settings_get, media_dir, raw_blob_path
from portal.csvio import csv_lines, csv_sql_cell, csv_sql_line, csv_sql_own_cell
from portal.db import current_schema
from portal.models import Job
from portal.roles import Role
from portal.services.audit import audit_event_record
from portal.services.jobs import DetachedProgress, job_succeed
from portal.services.keyring import (
    chunks_reader,
    keyring_file_open,
    keyring_file_store,
)
from portal.services.registry import audit_exempt, audits

SAMPLES = 50
# A first load's bulk path (Run._bulk_begin).
BULK_MIN_CREATES = 1_000
BULK_TABLES = ("portal_member", "portal_member_groups")
BULK_LOCK_TIMEOUT = "2s"
MAINTENANCE_WORK_MEM = "256MB"
WORK_MEM = "64MB"
TEMP_BUFFERS = "512MB"
EMAIL_PATTERN = "^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$"
PROGRESS_EVERY = 0.5  # seconds
COPY_BATCH = 4000  # rows per COPY write
# Manager loops (Run._manager_cycles): how far a walk up goes, and from how
# many changed links per member one walk down is cheaper than a walk up
# from each (a walk up visits a member once per level above it).
CYCLE_WALK_MAX = 200
CYCLE_WALK_DOWN_RATIO = 8
# A stage row whose manager link the file changes.
CHANGED_LINK = (
    "s.manager_after IS NOT NULL AND s.manager_after IS DISTINCT FROM s.manager_now"
)
RESULT_FETCH = 2000  # results lines per fetch and encrypted block
LIMITS = {  # column -> the member field's max length
    "email": 254,
    "employee_id": 128,
    "first_name": 150,
    "last_name": 150,
    "job_title": 200,
    "department": 200,
    "location": 200,
    "manager_employee_id": 128,
}
# The stage's columns as `validate` leaves them, and as `resolve` does.
VALIDATED_COLUMNS = (
    "line",
    *CANONICAL,
    "problem",
    "email_norm",
    "emp",
    "vcodes",
    "keyless",
)
RESOLVED_COLUMNS = (*VALIDATED_COLUMNS, "action", "seat_now", "manager_now")
PLAIN_FIELDS = ("first_name", "last_name", "job_title", "department", "location")
RESULT_COLUMNS = [
    "row_number",
    "employee_id",
    "email",
    "outcome",
    "seat",
    "codes",
    "message",
]
MESSAGES = {
    "ROW_MALFORMED": "The row has a different number of cells than the header.",
    "EMAIL_INVALID": "The email address is missing or not valid.",
    "VALUE_TOO_LONG": "A value is longer than its field allows.",
    "SEAT_INVALID": "seat must be active, inactive or blank.",
    "ADMIN_PERMISSION_INVALID": "admin_permission must be admin, reporting or blank.",
    "IDENTITY_CONFLICT": "The email belongs to a member with another employee_id.",
    "EMAIL_TAKEN": "The new email belongs to another member.",
    "OWNER_PROTECTED": "A file cannot change the owner.",
    "SEAT_LIMIT_REACHED": "No seat was free for this person.",
    "MANAGER_UNKNOWN": "No member has this manager_employee_id; the old link stays.",
    "MANAGER_CYCLE": "This manager would make a reporting loop; the old link stays.",
    "UNKNOWN_COLUMN": "A column was not recognised and was ignored.",
}
ROW_ERRORS = frozenset(
    {
        "ROW_MALFORMED",
        "EMAIL_INVALID",
        "VALUE_TOO_LONG",
        "SEAT_INVALID",
        "ADMIN_PERMISSION_INVALID",
        "IDENTITY_CONFLICT",
        "EMAIL_TAKEN",
        "OWNER_PROTECTED",
    }
)


class Held(Exception):
    pass


class _RegularPath(Exception):
    """The bulk path is not safe for this file (`Run._bulk_begin`)."""


@audit_exempt("a test hook; writes nothing")
def crash_point(name: str) -> None:
    """Kill this worker here when the test setting names this point (EDI-P14)."""
    if settings.EDI_TEST_CRASH_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Run:
    """One run of the pipeline over one file (a job attempt)."""

    edi_file: EdiFile
    job: Job
    table: str = field(default_factory=lambda: f"edi_stage_{secrets.token_hex(6)}")
    columns: tuple[str, ...] = ()
    unknown_columns: list[str] = field(default_factory=list)
    rows: int = 0
    bulk: bool = False  # the first load's bulk path (`_bulk_begin`)
    _last_progress: float = 0.0
    _channel: DetachedProgress | None = None

    # ------------------------------------------------------------ progress

    def progress(self, phase: str, percent: int, *, force: bool = False) -> None:
        """At most twice a second, on a connection of its own (EDI-P13)."""
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = now
        if self._channel is None:
            self._channel = DetachedProgress(self.job)
        self._channel.update(done=percent, total=100, message=phase)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # -------------------------------------------------------------- stage

    def tune(self) -> None:
        """Give this session's import server memory (PostgreSQL's, not the
        worker's), and no JIT compilation: the stage lives in temp buffers
        and its joins and sorts in work_mem; the defaults (8 MB, 4 MB) send
        a 1M-row file to disk.
        `temp_buffers` can only change before the session's first temp
        table, so a worker's later imports keep the first setting."""
        with connection.cursor() as cursor:
            cursor.execute(f"SET work_mem = '{WORK_MEM}'")
            # No JIT: its compile (about 1 s per large statement, measured)
            # costs more than the set-based statements it would speed up.
            cursor.execute("SET jit = off")
        try:
            # In its own (sub)transaction, so a refusal leaves none aborted;
            # a plain SET outlives the commit, for the session.
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET temp_buffers = '{TEMP_BUFFERS}'")
        except DatabaseError:
            pass  # the session used temp tables before with another value

    def untune(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("RESET work_mem")
            cursor.execute("RESET jit")

    def stage(self) -> None:
        """COPY the file's rows into a session-local TEMP table, which
        derives the validation columns as they arrive (`_validated_columns`)."""
        size = max(1, self.edi_file.size)
        chunks = keyring_file_open(
            purpose=KEY_PURPOSE,
            file_id=str(self.edi_file.pk),
            path=raw_blob_path(self.edi_file),
        )
        reader = Reader(chunks)
        batches = reader.batches(COPY_BATCH)
        first = next(batches)  # reads the header, or raises FileRejected
        header = reader.header
        if header is None:  # pragma: no cover - batches() sets it or raises
            raise FileRejected(Problem("NO_DATA_ROWS", "The file is empty."))
        self.columns = header.columns
        self.unknown_columns = header.unknown
        cols = ", ".join(f"{c} text" for c in CANONICAL)
        derived = ", ".join(
            f"{name} {kind} GENERATED ALWAYS AS ({expression}) STORED"
            for name, kind, expression in self._validated_columns()
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMP TABLE {self.table} (line integer NOT NULL, "
                f"{cols}, problem text, {derived})"
            )
            copy_cols = ", ".join(["line", *self.columns, "problem"])
            with cursor.cursor.copy(  # type: ignore[attr-defined]
                f"COPY {self.table} ({copy_cols}) FROM STDIN"
            ) as copy:
                for batch in _chain(first, batches):
                    copy.write(_copy_block(batch, len(self.columns)))
                    crash_point("parsing")
                    self.progress("parsing", min(40, 40 * reader.bytes_read // size))
        self.rows = reader.data_rows
        self.progress("validating", 40, force=True)

    def drop(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")

    # ----------------------------------------------------------- validate

    def sql(self, statement: str, params: list[Any] | None = None) -> int:
        with connection.cursor() as cursor:
            cursor.execute(statement.replace("{s}", self.table), params or [])
            return int(cursor.rowcount)

    def rows_of(self, statement: str, params: list[Any] | None = None) -> list[Any]:
        with connection.cursor() as cursor:
            cursor.execute(statement.replace("{s}", self.table), params or [])
            return list(cursor.fetchall())

    def rebuild(
        self,
        select: str,
        params: list[Any] | None = None,
        *,
        indexes: tuple[str, ...] = (),
        analyze: tuple[str, ...] = ("line", "emp", "email_norm"),
    ) -> None:
        """Replace the stage by `select` over it (`CREATE TABLE AS`).

        One pass writes every derived column at once: an `UPDATE` per
        column would rewrite each row again and leave dead versions behind
        for every later index lookup (temp tables are never vacuumed).
        """
        new = f"{self.table}_next"
        self.sql(f"CREATE TEMP TABLE {new} AS {select}", params)
        self.sql("DROP TABLE {s}")
        self.sql(f"ALTER TABLE {new} RENAME TO {self.table}")
        for column in indexes:
            self.sql(f"CREATE INDEX ON {{s}} ({column})")
        # Only what later joins and filters plan with: a full ANALYZE of
        # the text columns costs more than the statements it informs.
        self.sql(f"ANALYZE {{s}} ({', '.join(analyze)})")

    def _validated_columns(self) -> list[tuple[str, str, str]]:
        """The columns validation derives, as (name, type, expression).

        They are generated columns of the stage, so PostgreSQL computes them
        while the COPY arrives (its own process, beside the worker's
        parsing) instead of in a pass that rewrites the stage. A generated
        column cannot read another, so each spells out the keys.
        """
        # lower() costs (in a UTF-8 locale it converts each value to wide
        # characters and back); the pattern and emptiness do not depend on
        # case, so only the key itself is lowered.
        trimmed = "btrim(coalesce(email, ''))"
        email_norm = f"lower({trimmed})"
        emp = "btrim(coalesce(employee_id, ''))"
        checks = [
            "problem",
            f"CASE WHEN {trimmed} !~ '{EMAIL_PATTERN}' THEN 'EMAIL_INVALID' END",
        ]
        # A value is never longer in characters than in bytes: the byte
        # length (read from the value's header) spares counting characters.
        long_checks = " OR ".join(
            f"(octet_length({c}) > {n} AND length({c}) > {n})"
            for c, n in LIMITS.items()
            if c in self.columns
        )
        if long_checks:
            checks.append(f"CASE WHEN {long_checks} THEN 'VALUE_TOO_LONG' END")
        if "seat" in self.columns:
            checks.append(
                "CASE WHEN lower(seat) NOT IN ('', 'active', 'inactive') "
                "THEN 'SEAT_INVALID' END"
            )
        if "admin_permission" in self.columns:
            checks.append(
                "CASE WHEN lower(admin_permission) NOT IN ('', 'admin', 'reporting') "
                "THEN 'ADMIN_PERMISSION_INVALID' END"
            )
        return [
            ("email_norm", "text", email_norm),
            ("emp", "text", emp),
            (
                "vcodes",
                "text[]",
                f"array_remove(ARRAY[{', '.join(checks)}]::text[], NULL)",
            ),
            ("keyless", "boolean", f"({emp} = '' AND {trimmed} = '')"),
        ]

    def validate(self, invalid_percent: int) -> None:
        """Row codes (computed by the stage, `_validated_columns`), duplicate
        keys and the invalid ratio, all in SQL."""
        # Only what later joins and filters plan with (see `rebuild`).
        self.sql("ANALYZE {s} (line, emp, email_norm)")
        problems = self._duplicates()
        invalid = self.rows_of(
            "SELECT count(*) FROM {s} WHERE cardinality(vcodes) > 0"
        )[0][0]
        if self.rows and invalid * 100 > invalid_percent * self.rows:
            problems.append(
                Problem(
                    "TOO_MANY_INVALID_ROWS",
                    f"{invalid} of {self.rows} rows are invalid, more than the "
                    f"tenant's limit of {invalid_percent} %.",
                    details={"invalid_rows": invalid, "rows": self.rows},
                )
            )
        if problems:
            raise FileRejected(*problems)

    def _duplicates(self) -> list[Problem]:
        """DUPLICATE_KEY (EDI-P4): up to 100 keys, then their lines.

        A clean file (nearly every file) is proven clean by building a
        unique index on each key, a sort in byte order (`COLLATE "C"`: the
        same equality as `=`, without the locale's comparisons), about
        twice as fast as grouping a million keys. Only a key whose index
        refuses (a duplicate, or a key too long to index) is grouped; the
        aggregate only counts (collecting every key's lines would build an
        array per row), and the lines are read for the few keys found.
        """
        problems = []
        for label, key in (("employee_id", "emp"), ("email", "email_norm")):
            try:
                with transaction.atomic():
                    self.sql(
                        f"""CREATE UNIQUE INDEX ON {{s}} ({key} COLLATE "C")
                            WHERE {key} <> ''"""
                    )
                continue  # no duplicate
            except DatabaseError:
                # A duplicate, or a key too long for a B-tree entry (a
                # VALUE_TOO_LONG row): grouping tells. The savepoint
                # dropped the half-built index.
                pass
            keys = [
                row[0]
                for row in self.rows_of(
                    f"""SELECT {key} FROM {{s}} WHERE {key} <> ''
                        GROUP BY {key} HAVING count(*) > 1
                        ORDER BY min(line) LIMIT 100"""
                )
            ]
            if not keys:
                continue
            lines = dict(
                self.rows_of(
                    f"""SELECT {key}, array_agg(line ORDER BY line) FROM {{s}}
                        WHERE {key} = ANY(%s) GROUP BY {key}""",
                    [keys],
                )
            )
            found = [(value, lines[value]) for value in keys]
            problems.append(
                Problem(
                    "DUPLICATE_KEY",
                    f"{len(found)}{'+' if len(found) == 100 else ''} "
                    f"{label} value(s) appear on more than one row, for "
                    f"example {found[0][0]!r} on lines "
                    f"{', '.join(map(str, found[0][1][:5]))}.",
                    details={
                        "key": label,
                        "duplicates": [
                            {"value": v, "lines": ls[:20]} for v, ls in found
                        ],
                    },
                )
            )
        return problems

    # ------------------------------------------------------------ resolve

    def resolve(self) -> None:
        """Each row's member (edi.md §2 identity rules), conflicts as codes.

        The key is `employee_id` when set, else the email; a new
        `employee_id` adopts the member with that email and no id. The
        row also carries its member's current seat and manager. Runs again
        under the apply lock, from the validated columns only.

        A row that creates a member draws the new member's id here, in the
        same pass (the plan's manager links need every new id; a separate
        pass joining them back cost seconds at 1M rows). A file that is
        held, only previewed, or fails leaves those numbers unused, as a
        rolled-back insert does.
        """
        [(sequence,)] = self.rows_of(
            "SELECT pg_get_serial_sequence('portal_member', 'id')"
        )
        self.rebuild(
            f"""SELECT {_columns("a", RESOLVED_COLUMNS)}, a.codes,
                       CASE WHEN a.action = 'create' THEN nextval(%s::regclass)
                            ELSE a.member_id END AS member_id
                FROM (
                SELECT q.*, CASE WHEN cardinality(q.codes) > 0
                                      AND q.codes && %s::text[] THEN 'error'
                                 WHEN q.member_id IS NULL THEN 'create'
                                 ELSE 'update' END AS action
                FROM (
                  SELECT {_columns("j", VALIDATED_COLUMNS)}, j.member_id,
                         -- No member by email and none found at all: no
                         -- conflict to look for (a new person). Building
                         -- the arrays per row cost a quarter of this pass.
                         CASE WHEN j.mail_id IS NULL AND j.role IS NULL
                              THEN j.vcodes
                              ELSE j.vcodes || array_remove(ARRAY[
                           CASE WHEN j.emp <> '' AND j.member_id IS NULL
                                 AND j.mail_id IS NOT NULL
                                THEN 'IDENTITY_CONFLICT' END,
                           CASE WHEN j.member_id <> j.mail_id THEN 'EMAIL_TAKEN' END,
                           CASE WHEN j.role = %s THEN 'OWNER_PROTECTED' END
                         ]::text[], NULL) END AS codes,
                         coalesce(j.has_seat, false) AS seat_now,
                         j.manager_id AS manager_now
                  FROM (
                    SELECT k.*,
                           CASE WHEN k.member_id = k.emp_id THEN k.emp_role
                                WHEN k.member_id = k.mail_id THEN k.mail_role
                           END AS role,
                           CASE WHEN k.member_id = k.emp_id THEN k.emp_seat
                                WHEN k.member_id = k.mail_id THEN k.mail_seat
                           END AS has_seat,
                           CASE WHEN k.member_id = k.emp_id THEN k.emp_manager
                                WHEN k.member_id = k.mail_id THEN k.mail_manager
                           END AS manager_id
                    FROM (
                      SELECT {_columns("v", VALIDATED_COLUMNS)},
                             me.id AS emp_id, me.role AS emp_role,
                             me.has_seat AS emp_seat, me.manager_id AS emp_manager,
                             ml.id AS mail_id, ml.role AS mail_role,
                             ml.has_seat AS mail_seat, ml.manager_id AS mail_manager,
                             CASE WHEN v.emp <> '' THEN coalesce(
                                    me.id,
                                    CASE WHEN ml.employee_id = '' THEN ml.id END)
                                  ELSE ml.id END AS member_id
                      FROM {{s}} v
                      LEFT JOIN portal_member me
                        ON v.emp <> '' AND me.employee_id <> ''
                       AND me.employee_id = v.emp
                      LEFT JOIN portal_member ml
                        ON v.email_norm <> '' AND lower(ml.email) = v.email_norm
                    ) k
                  ) j
                ) q
                ) a""",
            [sequence, sorted(ROW_ERRORS), Role.OWNER],
            indexes=("member_id",),
            analyze=("line", "emp", "email_norm", "member_id", "action"),
        )
        # A row keyed by its email alone that finds the member another row
        # of the file keys by employee_id: the employee_id is the key
        # (edi.md §2), so that row fails rather than both updating the
        # same person in an undefined order.
        self.sql(
            """UPDATE {s} s SET codes = s.codes || 'IDENTITY_CONFLICT'::text,
                   action = 'error'
               WHERE s.emp = '' AND s.action = 'update'
                 AND EXISTS (SELECT 1 FROM {s} o
                             WHERE o.member_id = s.member_id AND o.emp <> ''
                               AND o.line <> s.line)"""
        )

    # ------------------------------------------------------------ preview

    def impact(self) -> dict[str, int]:
        """What applying would do (the hold check and the preview's counts)."""
        full = self.edi_file.mode == EdiMode.FULL
        counts = dict(
            zip(
                ("rows", "create", "update", "row_errors", "keyless"),
                self.rows_of(
                    """SELECT count(*),
                              count(*) FILTER (WHERE action = 'create'),
                              count(*) FILTER (WHERE action = 'update'),
                              count(*) FILTER (WHERE action = 'error'),
                              count(*) FILTER (WHERE keyless)
                       FROM {s}"""
                )[0],
                strict=True,
            )
        )
        missing = (0, 0)
        if full:
            # Who the file leaves out, once: the preview's count and samples
            # and the apply's deactivation read this table.
            self.sql(
                """CREATE TEMP TABLE {s}_gone ON COMMIT DROP AS
                   SELECT m.id, m.email, m.employee_id, m.has_seat
                   FROM portal_member m
                   WHERE m.status <> 'deactivated' AND m.role <> %s
                     AND m.managed_by_edi
                     AND NOT EXISTS (SELECT 1 FROM {s} WHERE {s}.member_id = m.id)""",
                [Role.OWNER],
            )
            missing = self.rows_of(
                "SELECT count(*), count(*) FILTER (WHERE has_seat) FROM {s}_gone"
            )[0]
        explicit_revokes = 0
        if "seat" in self.columns:
            explicit_revokes = self.rows_of(
                """SELECT count(*) FROM {s} JOIN portal_member m ON m.id = {s}.member_id
                   WHERE {s}.action = 'update' AND lower({s}.seat) = 'inactive'
                     AND m.has_seat"""
            )[0][0]
        active, seats = self.rows_of(
            """SELECT count(*) FILTER (WHERE status <> 'deactivated'),
                      count(*) FILTER (WHERE has_seat)
               FROM portal_member"""
        )[0]
        counts.update(
            deactivate=missing[0],
            revoke=missing[1] + explicit_revokes,
            active_members=active,
            active_seats=seats,
        )
        return counts

    def samples(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for action in ("create", "update", "error"):
            rows = self.rows_of(
                """SELECT line, emp, email_norm, codes FROM {s}
                   WHERE action = %s ORDER BY line LIMIT %s""",
                [action, SAMPLES],
            )
            out[action] = [
                {"line": r[0], "employee_id": r[1], "email": r[2], "codes": r[3]}
                for r in rows
            ]
        if self.edi_file.mode == EdiMode.FULL:
            rows = self.rows_of(
                "SELECT employee_id, email FROM {s}_gone ORDER BY id LIMIT %s",
                [SAMPLES],
            )
            out["deactivate"] = [{"employee_id": r[0], "email": r[1]} for r in rows]
        return out

    def hold_reasons(self, impact: dict[str, int], threshold: int) -> list[str]:
        reasons = []
        if impact["active_members"] and (
            impact["deactivate"] * 100 > threshold * impact["active_members"]
        ):
            reasons.append(
                f"It would deactivate {impact['deactivate']} of "
                f"{impact['active_members']} active members (over {threshold} %)."
            )
        if impact["active_seats"] and (
            impact["revoke"] * 100 > threshold * impact["active_seats"]
        ):
            reasons.append(
                f"It would revoke {impact['revoke']} of {impact['active_seats']} "
                f"seats (over {threshold} %)."
            )
        if self.edi_file.mode == EdiMode.FULL and impact["keyless"]:
            reasons.append(
                f"{impact['keyless']} row(s) have neither an email nor an "
                "employee_id, so a full file cannot tell who they are."
            )
        return reasons

    # -------------------------------------------------------------- apply

    def apply(self) -> dict[str, int]:
        """Every change, set-based; the caller holds the transaction.

        Each member row is written at most once: the plan (`_plan`) gives
        new members their ids and decides every row's seat and manager in
        one pass over the stage; then one INSERT and one UPDATE of the
        changed rows carry every field (each write of a member row also
        updates its indexes, the costliest part).
        """
        now = timezone.now()
        counts: dict[str, int] = {"deactivated": self._deactivate_missing(now)}
        seats, planned, links = self._plan()
        counts.update(seats)
        if "manager_employee_id" in self.columns and links:
            self._manager_cycles(links)
        restore = self._bulk_begin(planned)
        # New members, with their seat and manager. ON CONFLICT: someone who
        # arrived by SSO a moment ago is the same person; such rows are
        # resolved to that member and updated below.
        plain = list(PLAIN_FIELDS)  # absent columns are NULL in the stage
        targets = ", ".join(["id", "email", "employee_id", *plain])
        values = ", ".join(
            ["member_id", _stored_email("email"), "emp"]
            + [f"coalesce({c}, '')" for c in plain]
        )
        role = self._role_sql("'member'")
        created = self.sql(
            f"""INSERT INTO portal_member ({targets}, status, has_seat,
                    seat_granted_at, manager_id, role, source, managed_by_edi,
                    created_at, updated_at)
                SELECT {values}, 'invited', seat_after,
                       CASE WHEN seat_after THEN %s::timestamptz END,
                       manager_after, {role}, 'edi', true, %s, %s
                FROM {{s}} s WHERE is_new
                {"" if self.bulk else "ON CONFLICT DO NOTHING"}""",
            [now, now, now],
        )
        if created < planned:
            # The people who arrived by SSO meanwhile: the planned row
            # becomes an update of that member, keeping what JIT gave them
            # unless the file says otherwise.
            inactive = (
                "lower(coalesce(s.seat, '')) = 'inactive'"
                if "seat" in self.columns
                else "false"
            )
            manager = (
                "s.manager_after"
                if "manager_employee_id" in self.columns
                else "m.manager_id"
            )
            self.sql(
                """CREATE TEMP TABLE {s}_moved ON COMMIT DROP AS
                   SELECT s.member_id AS planned, m.id AS actual
                   FROM {s} s JOIN portal_member m ON lower(m.email) = s.email_norm
                   WHERE s.is_new AND m.id <> s.member_id"""
            )
            self.sql(
                f"""UPDATE {{s}} s SET member_id = m.id, is_new = false,
                       action = 'update', seat_now = m.has_seat,
                       manager_now = m.manager_id,
                       seat_after = CASE WHEN {inactive} THEN false
                                         ELSE s.seat_after OR m.has_seat END,
                       manager_after = {manager}
                   FROM portal_member m
                   WHERE s.is_new AND lower(m.email) = s.email_norm
                     AND m.id <> s.member_id"""
            )
            # A link to a planned id that was never inserted (the rows
            # just inserted, and the rows still to update) follows the
            # person to the member they turned out to be.
            self.sql(
                """UPDATE {s} s SET manager_after = mv.actual FROM {s}_moved mv
                   WHERE s.manager_after = mv.planned"""
            )
            self.sql(
                """UPDATE portal_member m SET manager_id = mv.actual
                   FROM {s}_moved mv WHERE m.manager_id = mv.planned"""
            )
        self._update_existing(now)
        if "groups" in self.columns:
            self._groups(now)
        self._bulk_end(restore)
        outcomes = self.rows_of(
            """SELECT count(*) FILTER (WHERE is_new),
                      count(*) FILTER (WHERE action = 'updated'),
                      count(*) FILTER (WHERE action = 'update'),
                      count(*) FILTER (WHERE action = 'error'),
                      count(*) FILTER (WHERE action <> 'error'
                                         AND cardinality(codes) > 0)
               FROM {s}"""
        )[0]
        counts.update(
            created=outcomes[0],
            updated=outcomes[1],
            unchanged=outcomes[2],
            row_errors=outcomes[3],
            rows=self.rows,
            warnings=outcomes[4] + len(self.unknown_columns),
        )
        return counts

    def _bulk_begin(self, creates: int) -> list[str]:
        """A first load's bulk path; returns what puts back what it dropped.

        When the file creates (`creates`) at least `BULK_MIN_CREATES` members and at
        least as many as the tenant has, the member and membership tables
        are locked (`ACCESS EXCLUSIVE`, until the commit) and their
        foreign keys, unique constraints and secondary indexes dropped, and
        a primary key that no foreign key points at (the memberships');
        `_bulk_end` rebuilds them after the writes. Building an index is a
        sort, several times cheaper than a million index insertions, and
        one validating join replaces a deferred check per row at the
        commit. Under the lock nobody else writes members, so once no
        planned new member collides with one who arrived (by SSO) since
        the rows were resolved, the inserts need no `ON CONFLICT`; the
        rebuilt unique indexes check it again. The drops are part of the
        apply transaction: a crash or an error rolls them back with the
        rest.

        If the lock is not granted within `BULK_LOCK_TIMEOUT` (someone is
        reading members), someone arrived meanwhile, or anything else
        refuses, the savepoint undoes it all and the file takes the
        regular path.
        """
        if creates < BULK_MIN_CREATES:
            return []
        existing = self.rows_of(
            "SELECT count(*) FROM (SELECT 1 FROM portal_member LIMIT %s) m",
            [creates + 1],
        )[0][0]
        if creates < existing:
            return []
        timeout = self.rows_of("SELECT current_setting('lock_timeout')")[0][0]
        try:
            with transaction.atomic():
                self.rows_of(
                    "SELECT set_config('lock_timeout', %s, true)",
                    [BULK_LOCK_TIMEOUT],
                )
                self.sql(
                    f"LOCK TABLE {', '.join(BULK_TABLES)} IN ACCESS EXCLUSIVE MODE"
                )
                if self.rows_of(
                    """SELECT EXISTS (
                         SELECT 1 FROM {s} s WHERE s.is_new
                           AND (s.email_norm IN (SELECT lower(email)
                                                 FROM portal_member)
                                OR s.emp IN (SELECT employee_id FROM portal_member
                                             WHERE employee_id <> '')))"""
                )[0][0]:
                    raise _RegularPath
                plan = self.rows_of(
                    """SELECT format('ALTER TABLE %%s DROP CONSTRAINT %%I',
                                     c.conrelid::regclass, c.conname),
                              format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s',
                                     c.conrelid::regclass, c.conname,
                                     pg_get_constraintdef(c.oid)),
                              CASE c.contype WHEN 'f' THEN 3 ELSE 2 END AS pass
                       FROM pg_constraint c
                       WHERE (c.contype IN ('f', 'u')
                              -- a primary key no foreign key points at
                              OR (c.contype = 'p' AND NOT EXISTS (
                                    SELECT 1 FROM pg_constraint r
                                    WHERE r.contype = 'f'
                                      AND r.confrelid = c.conrelid)))
                         AND c.conrelid = ANY(%s::regclass[])
                       UNION ALL
                       SELECT format('DROP INDEX %%s', i.indexrelid::regclass),
                              pg_get_indexdef(i.indexrelid), 1
                       FROM pg_index i
                       WHERE i.indrelid = ANY(%s::regclass[])
                         AND NOT i.indisprimary
                         AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                                         WHERE c.conindid = i.indexrelid
                                           AND c.contype IN ('p', 'u', 'x'))
                       ORDER BY 3 DESC, 1""",
                    [list(BULK_TABLES), list(BULK_TABLES)],
                )
                for drop, _restore, _pass in plan:
                    self.sql(drop)
        except (DatabaseError, _RegularPath):
            return []  # the regular path; the savepoint undid the drops
        finally:
            self.rows_of("SELECT set_config('lock_timeout', %s, true)", [timeout])
        self.bulk = True
        # Indexes first, then unique constraints, then the foreign keys.
        return [restore for _drop, restore, _pass in sorted(plan, key=lambda p: p[2])]

    def _bulk_end(self, restore: list[str]) -> None:
        """Rebuild what `_bulk_begin` dropped (index builds are sorts: they
        get maintenance memory, PostgreSQL's, for this transaction)."""
        if not restore:
            return
        self.rows_of(
            "SELECT set_config('maintenance_work_mem', %s, true)",
            [MAINTENANCE_WORK_MEM],
        )
        for statement in restore:
            self.sql(statement)
        # Statistics for the tables that just grew (several-fold): without
        # them the next file's joins are planned for the empty tables. At
        # the commit they are everyone's; autovacuum may come much later.
        self.sql(f"ANALYZE {', '.join(BULK_TABLES)}")

    def _role_sql(self, current: str) -> str:
        """The role a row asks for (admin_permission), given the current one."""
        if "admin_permission" not in self.columns:
            return current
        return (
            f"CASE WHEN lower(s.admin_permission) = 'admin' THEN '{Role.ADMIN}' "
            f"WHEN lower(s.admin_permission) = 'reporting' "
            f"THEN '{Role.READONLY_ADMIN}' "
            f"WHEN {current} IN ('{Role.ADMIN}', '{Role.READONLY_ADMIN}') "
            f"THEN '{Role.MEMBER}' ELSE {current} END"
        )

    def _update_existing(self, now: Any) -> int:
        """One UPDATE of the changed members only (IS DISTINCT FROM)."""
        sets = []
        diffs = []
        for column in PLAIN_FIELDS:
            if column in self.columns:
                sets.append(f"{column} = coalesce(s.{column}, '')")
                diffs.append(f"m.{column} IS DISTINCT FROM coalesce(s.{column}, '')")
        sets.append(
            "email = CASE WHEN lower(m.email) = s.email_norm THEN m.email "
            f"ELSE {_stored_email('s.email')} END"
        )
        diffs.append("lower(m.email) IS DISTINCT FROM s.email_norm")
        sets.append(
            "employee_id = CASE WHEN s.emp <> '' THEN s.emp ELSE m.employee_id END"
        )
        diffs.append("(s.emp <> '' AND m.employee_id IS DISTINCT FROM s.emp)")
        # A member who reappears is reactivated (edi.md §2).
        sets.append(
            "status = CASE WHEN m.status = 'deactivated' THEN "
            "(CASE WHEN m.user_id IS NULL THEN 'invited' ELSE 'active' END) "
            "ELSE m.status END"
        )
        sets.append(
            "deactivated_at = CASE WHEN m.status = 'deactivated' THEN NULL "
            "ELSE m.deactivated_at END"
        )
        diffs.append("m.status = 'deactivated'")
        sets.append("has_seat = s.seat_after")
        sets.append(
            "seat_granted_at = CASE WHEN s.seat_after AND NOT m.has_seat THEN %s "
            "WHEN s.seat_after THEN m.seat_granted_at END"
        )
        diffs.append("m.has_seat IS DISTINCT FROM s.seat_after")
        sets.append("manager_id = s.manager_after")
        diffs.append("m.manager_id IS DISTINCT FROM s.manager_after")
        role = self._role_sql("m.role")
        sets.append(f"role = {role}")
        diffs.append(f"m.role IS DISTINCT FROM {role}")
        sets.append("updated_at = %s")
        updated = self.rows_of(
            f"""WITH changed AS (
                  UPDATE portal_member m SET {", ".join(sets)}
                  FROM {{s}} s
                  WHERE s.action = 'update' AND m.id = s.member_id
                    AND m.role <> '{Role.OWNER}' AND ({" OR ".join(diffs)})
                  RETURNING m.id),
                marked AS (
                  UPDATE {{s}} SET action = 'updated' FROM changed
                  WHERE {{s}}.member_id = changed.id AND {{s}}.action = 'update'
                  RETURNING 1)
                SELECT count(*) FROM marked""",
            [now, now],
        )
        return int(updated[0][0])

    def _deactivate_missing(self, now: Any) -> int:
        """Full files: deactivate the absent, free seats, end sessions (PORTAL-09)."""
        if self.edi_file.mode != EdiMode.FULL:
            return 0
        # {s}_gone: who the file leaves out, as `impact` found them under
        # the apply lock, in this transaction.
        gone = self.sql(
            """UPDATE portal_member m SET status = 'deactivated',
                   has_seat = false, seat_granted_at = NULL,
                   deactivated_at = %s, updated_at = %s
               FROM {s}_gone g WHERE m.id = g.id""",
            [now, now],
        )
        self.sql(
            """DELETE FROM django_session WHERE session_key IN (
                 SELECT session_key FROM portal_membersession ms
                 JOIN {s}_gone g ON g.id = ms.member_id)"""
        )
        self.sql(
            """DELETE FROM portal_membersession ms USING {s}_gone g
               WHERE ms.member_id = g.id"""
        )
        return gone

    def _plan(self) -> tuple[dict[str, int], int, int]:
        """One pass deciding each row's seat and manager (new members' ids
        were drawn by `resolve`).

        Seats (edi.md §2): the file's revokes first, then grants within the
        limit: explicit `active` rows in file order, then rule grants, the
        rest `SEAT_LIMIT_REACHED`. Managers: the named manager in the file
        or stored; blank clears; unknown keeps the old link with
        `MANAGER_UNKNOWN`. Every grant holds the seat-pool lock.

        Returns the seat counts, the members to create and the changed
        manager links (`CHANGED_LINK`), counted in one scan.
        """
        self.sql("SELECT 1 FROM portal_seatpool WHERE id = 1 FOR UPDATE")
        has_seat = "seat" in self.columns
        revokes = (
            "s.action <> 'error' AND s.seat_now AND lower(s.seat) = 'inactive'"
            if has_seat
            else "false"
        )
        explicit = "lower(coalesce(s.seat, '')) = 'active'" if has_seat else "false"
        blank = "lower(coalesce(s.seat, '')) = ''"
        rules = list(AutoProvisionRule.objects.values_list("field", "value"))
        departments = [v.lower() for f, v in rules if f == "department"]
        groups = [v.lower() for f, v in rules if f == "group"]
        rule_match = ["false"]
        params: list[Any] = []
        if departments and "department" in self.columns:
            rule_match.append("lower(s.department) = ANY(%s)")
            params.append(departments)
        if groups and "groups" in self.columns:
            rule_match.append(
                "EXISTS (SELECT 1 FROM unnest(string_to_array(s.groups, ';')) g "
                "WHERE lower(btrim(g)) = ANY(%s))"
            )
            params.append(groups)
        limit = self.rows_of('SELECT "limit" FROM portal_seatpool WHERE id = 1')
        pool_limit = limit[0][0] if limit else None
        wants = f"""s.action IN ('create', 'update') AND NOT s.seat_now
                    AND ({explicit} OR ({blank} AND ({" OR ".join(rule_match)})))"""
        # Seats in use once this file's deactivations (done) and revokes are.
        used, revoked, wanting = self.rows_of(
            f"""SELECT (SELECT count(*) FROM portal_member WHERE has_seat),
                       (SELECT count(*) FROM {{s}} s WHERE {revokes}),
                       (SELECT count(*) FROM {{s}} s WHERE {wants})""",
            params,
        )[0]
        available = None if pool_limit is None else max(0, pool_limit - used + revoked)
        if available is not None and wanting <= available:
            available = None  # the limit does not bind: no order to decide
        manager_joins = ""
        if "manager_employee_id" in self.columns:
            wanted = "btrim(coalesce(s.manager_employee_id, ''))"
            # The manager in the file, else a stored member, looked up
            # (by the unique index) only for links the file does not hold:
            # a full file holds nearly all, and hashing every stored member
            # cost a second per million.
            manager = f"""CASE WHEN s.action NOT IN ('create', 'update')
                                 THEN s.manager_now
                               WHEN {wanted} = '' THEN NULL
                               ELSE coalesce(
                                 f.member_id,
                                 (SELECT m.id FROM portal_member m
                                  WHERE m.employee_id = {wanted}
                                    AND m.employee_id <> ''),
                                 -1) END"""
            manager_joins = f"""
                  LEFT JOIN {{s}} f ON f.action IN ('create', 'update')
                   AND f.emp <> '' AND f.emp = {wanted}"""
        else:
            manager = "s.manager_now"
        if available is None:
            ranking = f"({wants}) AS wants, NULL::bigint AS rank"
            ranked = ""
        else:
            # Only the rows that want a seat, and narrow.
            ranking = "(ranked.line IS NOT NULL) AS wants, ranked.rank"
            ranked = f"""
                  LEFT JOIN (
                    SELECT s.line, row_number() OVER (
                             ORDER BY NOT ({explicit}), s.line) AS rank
                    FROM {{s}} s WHERE {wants}
                  ) ranked ON ranked.line = s.line"""
        self.rebuild(
            f"""SELECT {_columns("q", RESOLVED_COLUMNS)}, q.member_id,
                       (q.action = 'create') AS is_new,
                       CASE WHEN q.revokes THEN false
                            WHEN q.wants AND (%s::bigint IS NULL OR q.rank <= %s)
                              THEN true
                            ELSE q.seat_now END AS seat_after,
                       CASE WHEN q.manager_target = -1 THEN q.manager_now
                            ELSE q.manager_target END AS manager_after,
                       -- Unranked, with a known manager: no code to add
                       -- (building arrays per row is costly).
                       CASE WHEN q.rank IS NULL
                             AND q.manager_target IS DISTINCT FROM -1
                            THEN q.codes
                            ELSE q.codes || array_remove(ARRAY[
                         CASE WHEN q.wants AND q.rank > %s
                              THEN 'SEAT_LIMIT_REACHED' END,
                         CASE WHEN q.manager_target = -1
                              THEN 'MANAGER_UNKNOWN' END]::text[], NULL) END AS codes
                FROM (
                  SELECT s.*, ({revokes}) AS revokes, {ranking},
                         {manager} AS manager_target
                  FROM {{s}} s{ranked}{manager_joins}
                ) q""",
            [available, available, available, *params],
            indexes=("member_id",),
            analyze=("line", "member_id", "action", "is_new"),
        )
        granted, planned, links = self.rows_of(
            f"""SELECT count(*) FILTER (WHERE seat_after AND NOT seat_now),
                       count(*) FILTER (WHERE is_new),
                       count(*) FILTER (WHERE {CHANGED_LINK})
                FROM {{s}} s"""
        )[0]
        return {"seats_granted": granted, "seats_revoked": revoked}, planned, links

    def _groups(self, now: Any) -> None:
        """The `groups` cell replaces each listed member's group list.

        Only the difference is written: memberships the file drops are
        deleted, new ones inserted; a file that changes nothing writes
        nothing. A directory has far fewer distinct group lists than
        people, so each distinct cell is split and matched to its groups
        once (a group named twice in it counts once), and the rows join
        that small table. Outside the bulk path ON CONFLICT also covers a
        concurrent writer.
        """
        self.sql(
            """CREATE TEMP TABLE {s}_cells ON COMMIT DROP AS
               SELECT c.cell, left(btrim(part), 200) AS name
               FROM (SELECT DISTINCT groups AS cell FROM {s}
                     WHERE action <> 'error' AND groups <> '') c,
                    unnest(string_to_array(c.cell, ';')) part
               WHERE btrim(part) <> ''"""
        )
        self.sql(
            """INSERT INTO portal_membergroup (name, created_at)
               SELECT DISTINCT ON (lower(n.name)) n.name, %s
               FROM (SELECT DISTINCT name FROM {s}_cells) n
               WHERE NOT EXISTS (SELECT 1 FROM portal_membergroup g
                                 WHERE lower(g.name) = lower(n.name))
               ORDER BY lower(n.name), n.name
               ON CONFLICT DO NOTHING""",
            [now],
        )
        self.sql(
            """CREATE TEMP TABLE {s}_cell_groups ON COMMIT DROP AS
               SELECT DISTINCT c.cell, g.id AS group_id
               FROM {s}_cells c
               JOIN portal_membergroup g ON lower(g.name) = lower(c.name)"""
        )
        self.sql("ANALYZE {s}_cell_groups")
        # The memberships wanted for members that were there before; a
        # member created by this file has none to compare with.
        self.sql(
            """CREATE TEMP TABLE {s}_want ON COMMIT DROP AS
               SELECT s.member_id, cg.group_id
               FROM {s} s JOIN {s}_cell_groups cg ON cg.cell = s.groups
               WHERE s.action <> 'error' AND NOT s.is_new"""
        )
        self.sql("ANALYZE {s}_want")
        self.sql(
            """DELETE FROM portal_member_groups mg USING {s} s
               WHERE mg.member_id = s.member_id AND s.action <> 'error'
                 AND NOT s.is_new
                 AND NOT EXISTS (
                   SELECT 1 FROM {s}_want w
                   WHERE w.member_id = mg.member_id
                     AND w.group_id = mg.membergroup_id)"""
        )
        # A member created by this file has no memberships yet, and one row
        # per member (its own new id) makes its pairs distinct: they go
        # straight from the rows. A member that was there may be listed by
        # two rows (two keys): DISTINCT.
        pairs = """SELECT s.member_id, cg.group_id
                   FROM {s} s JOIN {s}_cell_groups cg ON cg.cell = s.groups
                   WHERE s.is_new
                   UNION ALL
                   SELECT DISTINCT w.member_id, w.group_id FROM {s}_want w
                   WHERE NOT EXISTS (
                     SELECT 1 FROM portal_member_groups mg
                     WHERE mg.member_id = w.member_id
                       AND mg.membergroup_id = w.group_id)"""
        if not self.bulk:
            # In index order, and a concurrent writer's pair is no error.
            self.sql(
                f"""INSERT INTO portal_member_groups (member_id, membergroup_id)
                    {pairs} ORDER BY 1, 2 ON CONFLICT DO NOTHING"""
            )
            return
        # The bulk path: no index to keep in order, nor one for ON CONFLICT,
        # and the table is locked (ACCESS EXCLUSIVE) until the commit, so
        # nobody else draws its ids (an INSERT takes its table lock before
        # it evaluates the id's default): the pairs get consecutive ids
        # from the sequence's next one, which is then moved past them.
        # Drawing 2M ids one nextval at a time costs about 1 s (0.3 to
        # 0.8 µs a call, measured).
        [(sequence,)] = self.rows_of(
            "SELECT pg_get_serial_sequence('portal_member_groups', 'id')"
        )
        [(first,)] = self.rows_of("SELECT nextval(%s::regclass)", [sequence])
        inserted = self.sql(
            f"""INSERT INTO portal_member_groups (id, member_id, membergroup_id)
                SELECT %s::bigint - 1 + row_number() OVER (), p.member_id, p.group_id
                FROM ({pairs}) p""",
            [first],
        )
        if inserted > 1:
            self.rows_of(
                "SELECT setval(%s::regclass, %s)", [sequence, first + inserted - 1]
            )

    def _manager_cycles(self, links: int) -> None:
        """A changed link that would make a reporting loop keeps the old one
        (`MANAGER_CYCLE`): walk up from each changed link through the graph
        after the file; coming back to the member is a loop (a self-link
        too).

        A loop needs a changed link (`links` of them, `CHANGED_LINK`), so a
        file that changes none skips all of it. When many links change (a
        first load changes every one), walking each to the top would visit
        every member once per level above it; instead one walk down from
        the top (members without a manager) finds everyone with a way up,
        and only the members left over, those on or below a loop, are
        walked up.
        """
        members = self.sql(
            """CREATE TEMP TABLE {s}_edges ON COMMIT DROP AS
               SELECT s.member_id AS id, s.manager_after AS manager_id
               FROM {s} s WHERE s.member_id IS NOT NULL
               UNION ALL
               SELECT m.id, m.manager_id FROM portal_member m
               WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE s.member_id = m.id)"""
        )
        starts = (
            f"SELECT s.member_id, s.manager_after FROM {{s}} s WHERE {CHANGED_LINK}"
        )
        if links * CYCLE_WALK_DOWN_RATIO > members:
            # UNION, not UNION ALL: a member listed twice (by two keys) has
            # two links, and the walk must still end.
            down = """WITH RECURSIVE down(id) AS (
                        SELECT id FROM {s}_edges WHERE manager_id IS NULL
                        UNION
                        SELECT e.id FROM down
                        JOIN {s}_edges e ON e.manager_id = down.id)"""
            [(reached,)] = self.rows_of(f"{down} SELECT count(*) FROM down")
            if reached == members:
                return  # everyone has a way up: no loop
            self.sql(
                f"""CREATE TEMP TABLE {{s}}_loose ON COMMIT DROP AS {down}
                    SELECT DISTINCT e.id FROM {{s}}_edges e
                    WHERE NOT EXISTS (SELECT 1 FROM down WHERE down.id = e.id)"""
            )
            starts += " AND s.member_id IN (SELECT id FROM {s}_loose)"
        self.sql("CREATE INDEX ON {s}_edges (id)")
        self.sql("ANALYZE {s}_edges")
        self.sql(
            f"""UPDATE {{s}} s SET codes = s.codes || 'MANAGER_CYCLE'::text,
                   manager_after = s.manager_now
                FROM (
                  WITH RECURSIVE walk(start, cur, depth) AS (
                    SELECT member_id, manager_after, 1 FROM ({starts}) c
                    UNION ALL
                    SELECT walk.start, e.manager_id, walk.depth + 1
                    FROM walk JOIN {{s}}_edges e ON e.id = walk.cur
                    WHERE walk.cur <> walk.start AND e.manager_id IS NOT NULL
                      AND walk.depth < {CYCLE_WALK_MAX}
                  )
                  SELECT DISTINCT start FROM walk WHERE cur = start
                ) loops
                WHERE s.member_id = loops.start"""
        )

    # ------------------------------------------------------------ results

    def results_blocks(self) -> Iterator[bytes]:
        """The results CSV: one line per data row in file order, then one per
        member deactivated by absence (EDI-P10).

        PostgreSQL writes the lines (`portal.csvio.csv_sql_cell`, the same
        CSV as `csv_lines`; in Python they cost 9 s per million rows), and
        they are read through a server-side cursor (the caller's
        transaction), `RESULT_FETCH` lines per block, so the worker never
        holds more than a block.
        """
        yield next(csv_lines(RESULT_COLUMNS, ())).encode()
        messages = (
            "CASE WHEN cardinality(s.codes) = 0 THEN '' ELSE array_to_string(ARRAY("
            "SELECT coalesce(%s::jsonb ->> c, c) "
            "FROM unnest(s.codes) WITH ORDINALITY u(c, o) ORDER BY o), ' ') END"
        )
        line = csv_sql_line(
            [
                csv_sql_own_cell("s.line"),
                csv_sql_cell("coalesce(m.employee_id, s.emp)"),
                csv_sql_cell("coalesce(m.email, btrim(coalesce(s.email, '')))"),
                # created, updated, unchanged or error
                csv_sql_own_cell(
                    "CASE WHEN s.is_new THEN 'created' "
                    "WHEN s.action = 'update' THEN 'unchanged' ELSE s.action END"
                ),
                csv_sql_own_cell(
                    "CASE WHEN m.has_seat THEN 'active' "
                    "WHEN NOT m.has_seat THEN 'inactive' END"
                ),
                csv_sql_own_cell("array_to_string(s.codes, ';')"),  # our codes
                csv_sql_own_cell(messages),  # our messages
            ]
        )
        yield from self._stream(
            f"""SELECT {line} FROM {self.table} s
                LEFT JOIN portal_member m ON m.id = s.member_id
                ORDER BY s.line""",
            [json.dumps(MESSAGES)],
        )
        if self.edi_file.mode == EdiMode.FULL:
            gone = csv_sql_line(
                [
                    csv_sql_own_cell("''"),
                    csv_sql_cell("employee_id"),
                    csv_sql_cell("email"),
                    csv_sql_own_cell("'deactivated'"),
                    csv_sql_own_cell("'inactive'"),
                    csv_sql_own_cell("''"),
                    csv_sql_own_cell("''"),
                ]
            )
            yield from self._stream(
                f"SELECT {gone} FROM {self.table}_gone ORDER BY id", []
            )

    def _stream(self, statement: str, params: list[Any]) -> Iterator[bytes]:
        """The text lines `statement` selects, `RESULT_FETCH` to a block."""
        raw = connection.connection
        if raw is None or raw.autocommit:  # pragma: no cover - a caller's bug
            raise RuntimeError("A server-side cursor needs the apply transaction.")
        with raw.cursor(name=f"{self.table}_read") as cursor:
            cursor.execute(statement, params)  # type: ignore[arg-type]
            while batch := cursor.fetchmany(RESULT_FETCH):
                yield "".join(row[0] for row in batch).encode()

    def write_results(self) -> str:
        """Encrypt the results CSV into the tenant's media; returns its name."""
        name = f"{self.edi_file.pk}.results"
        keyring_file_store(
            purpose=KEY_PURPOSE,
            file_id=name,
            src=chunks_reader(self.results_blocks()),
            path=media_dir() / name,
        )
        return name


def _columns(alias: str, names: tuple[str, ...]) -> str:
    return ", ".join(f"{alias}.{name}" for name in names)


def _stored_email(column: str) -> str:
    """An email as the member services store it: trimmed, domain lower-cased
    (`portal.services.members`). Rows that reach the apply have one `@`."""
    return (
        f"split_part(btrim({column}), '@', 1) || '@' || "
        f"lower(split_part(btrim({column}), '@', 2))"
    )


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _copy_block(batch: Batch, width: int) -> str:
    """`batch` (rows of `width` values) as a block of COPY's text format:
    the line number, the values and the problem code, tab-separated.

    Written in C (`map`) and checked per block: a block with exactly the
    expected tabs and line ends, no CR and no backslash but those of the
    `\\N` (no problem) that end lines needs no escaping, which is nearly
    every block; otherwise it is written again, escaped.
    """
    tab = "\t"
    codes = ["\\N"] * len(batch.lines)
    for index, problem in batch.problems.items():
        codes[index] = problem.code
    text = "".join(
        map("{}\t{}\t{}\n".format, batch.lines, map(tab.join, batch.values), codes)
    )
    rows = len(batch.lines)
    if (
        text.count("\t") == rows * (width + 1)
        and text.count("\n") == rows
        and "\r" not in text
        and text.count("\\") == text.count("\t\\N\n")
    ):
        return text
    return "".join(
        f"{line}\t{tab.join(map(_copy_text, cells))}\t{code}\n"
        for line, cells, code in zip(batch.lines, batch.values, codes, strict=True)
    )


def _copy_text(value: str) -> str:
    """A value in COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


# ---------------------------------------------------------------- the job


@audits("edi.file.rejected", "edi.file.held", "edi.file.validated", "edi.file.applied")
def edi_import_run(*, job: Job) -> None:
    """Run (or rerun) the import of the job's file; see the module docstring."""
    edi_file = EdiFile.objects.filter(pk=job.params.get("file_id")).first()
    if edi_file is None or edi_file.is_final:
        job_succeed(job=job, result={"skipped": True}, message="Nothing to do.")
        return
    approved = bool(job.params.get("approved"))
    if edi_file.status in (EdiStatus.HELD, EdiStatus.VALIDATED) and not approved:
        job_succeed(job=job, result={"skipped": True}, message="Waiting for approval.")
        return
    EdiFile.objects.filter(pk=edi_file.pk).update(status=EdiStatus.VALIDATING)
    edi_file.status = EdiStatus.VALIDATING
    settings_row = edi_settings_get()
    run = Run(edi_file=edi_file, job=job)
    run.progress("parsing", 0, force=True)
    run.tune()
    try:
        try:
            # A transaction: a file rejected half-way through the COPY
            # leaves no table and no aborted connection behind.
            with transaction.atomic():
                run.stage()
            run.validate(settings_row.invalid_rows_percent)
        except FileRejected as rejected:
            _finish(
                edi_file,
                job,
                status=EdiStatus.REJECTED,
                action="edi.file.rejected",
                errors=[p.as_dict() for p in rejected.problems],
                counts={"rows": run.rows},
            )
            return
        run.progress("resolving", 45, force=True)
        # One transaction under the tenant's apply lock from here: the
        # preview, the hold check and the apply see the same members, so
        # the numbers an approval is checked against are the ones applied.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    [f"edi-apply:{current_schema()}"],
                )
            run.resolve()
            impact = run.impact()
            preview = {"counts": impact, "samples": run.samples()}
            if run.unknown_columns:
                preview["unknown_columns"] = run.unknown_columns
            reasons = run.hold_reasons(
                impact, settings_row.deactivation_threshold_percent
            )
            if edi_file.dry_run:
                # The preview says what approval would override: applying
                # a validated file is an admin's approval (EDI-P8).
                _finish(
                    edi_file,
                    job,
                    status=EdiStatus.VALIDATED,
                    action="edi.file.validated",
                    preview=preview | ({"hold_reasons": reasons} if reasons else {}),
                    counts={"rows": run.rows},
                )
                return
            # An approval covers the numbers the admin saw; if they grew
            # since, the file waits again.
            if reasons and (not approved or _grew(edi_file.preview, impact)):
                _finish(
                    edi_file,
                    job,
                    status=EdiStatus.HELD,
                    action="edi.file.held",
                    preview=preview | {"hold_reasons": reasons},
                    counts={"rows": run.rows},
                )
                return
            run.progress("applying", 60, force=True)
            EdiFile.objects.filter(pk=edi_file.pk).update(status=EdiStatus.APPLYING)
            counts = run.apply()
            edi_file.results_name = run.write_results()
            _finish(
                edi_file,
                job,
                status=EdiStatus.COMPLETED,
                action="edi.file.applied",
                preview=preview,
                counts=counts,
            )
            _supersede_older_held(edi_file)
            crash_point("before_commit")
        crash_point("after_commit_before_ack")
    finally:
        run.close()
        run.drop()
        run.untune()


def _grew(preview: dict[str, Any], impact: dict[str, int]) -> bool:
    before = preview.get("counts", {}) if preview else {}
    return impact["deactivate"] > before.get("deactivate", 0) or impact[
        "revoke"
    ] > before.get("revoke", 0)


def _finish(
    edi_file: EdiFile,
    job: Job,
    *,
    status: str,
    action: str,
    errors: list[dict[str, Any]] | None = None,
    preview: dict[str, Any] | None = None,
    counts: dict[str, int] | None = None,
) -> None:
    with transaction.atomic():
        edi_file.status = status
        if errors is not None:
            edi_file.errors = errors
        if preview is not None:
            edi_file.preview = preview
        if counts is not None:
            edi_file.counts = counts
        if status not in (EdiStatus.HELD, EdiStatus.VALIDATED):
            edi_file.finished_at = timezone.now()
        edi_file.save()
        edi_file_notify(edi_file=edi_file)
        audit_event_record(
            action=action,
            target=edi_file,
            changes={"status": status, "counts": counts or {}, "errors": errors or []},
        )
        job_succeed(job=job, result={"status": status, "counts": counts or {}})


@audit_exempt("part of an applied file, which audits")
def _supersede_older_held(edi_file: EdiFile) -> None:
    EdiFile.objects.filter(
        status__in=(EdiStatus.HELD, EdiStatus.VALIDATED),
        received_at__lt=edi_file.received_at,
        dry_run=False,
    ).update(status=EdiStatus.SUPERSEDED, finished_at=timezone.now())
