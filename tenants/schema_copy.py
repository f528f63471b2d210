"""Fast tenant schemas: replay the template's DDL instead of migrating.

TEN-4. Migrating a new schema costs over a second, mostly rendering the
migration state in Python. django-tenants' PL/pgSQL `clone_schema` scans the
whole catalog, so it slows down with every tenant (6 s per schema at 250
tenants, measured by bench/tenants.py). Here the template schema is read from
the catalog once per process into a `Snapshot`: its tables, constraints,
indexes, functions and triggers as DDL without schema names, and the rows it
holds (migration records, content types, permissions). A new schema is then
`CREATE SCHEMA`, the DDL run under the new schema's search path, and the rows
inserted. Each statement touches the catalog through its indexes, so the
cost stays flat as tenants are added.

The snapshot is keyed by the migrations the code knows; the template is kept
current by `migrate_portal` (and checked by provisioning), so a snapshot never
describes an older schema than the code expects. Names are kept exactly, so
later migrations that drop a constraint or an index by name work on every
schema.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from django.db import connection, transaction
from django_tenants.utils import schema_context

# Tables whose rows the template holds and every tenant starts with.
SEEDED_TABLES = ("django_content_type", "auth_permission", "django_migrations")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    statements: tuple[str, ...]
    rows: dict[str, tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]]
    identity_columns: tuple[tuple[str, str], ...]


_lock = threading.Lock()
_cache: dict[tuple[str, frozenset[tuple[str, str]]], Snapshot] = {}


def snapshot_get(template: str, migrations: frozenset[tuple[str, str]]) -> Snapshot:
    """The template's snapshot for this set of known migrations (cached)."""
    key = (template, migrations)
    with _lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = _snapshot_read(template)
        return _cache[key]


def snapshot_forget() -> None:
    with _lock:
        _cache.clear()


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _fetch(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


_TABLES = """
SELECT c.oid, c.relname FROM pg_class c
WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind = 'r'
ORDER BY c.relname
"""
_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_CONSTRAINTS = """
SELECT c.relname, con.conname, pg_get_constraintdef(con.oid), con.contype
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE con.connamespace = to_regnamespace(%s)
  AND con.contype IN ('p', 'u', 'c', 'x', 'f')
ORDER BY con.contype = 'f', c.relname, con.conname
"""
_INDEXES = """
SELECT pg_get_indexdef(x.indexrelid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE i.relnamespace = to_regnamespace(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
ORDER BY i.relname
"""
_FUNCTIONS = """
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
WHERE p.pronamespace = to_regnamespace(%s) ORDER BY p.proname
"""
_TRIGGERS = """
SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = to_regnamespace(%s) AND NOT t.tgisinternal
ORDER BY t.tgname
"""


def _snapshot_read(template: str) -> Snapshot:
    statements: list[str] = []
    identity: list[tuple[str, str]] = []
    # Only the template on the search path: definitions then name its own
    # objects without a schema, and anything outside it (public) with one.
    with (
        schema_context(template),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT set_config('search_path', %s, true)", [_q(template)])
        for name, definition in _fetch(_FUNCTIONS, [template]):
            prefix = f"FUNCTION {_q(template)}.{name}("
            plain = f"FUNCTION {template}.{name}("
            definition = definition.replace(prefix, f"FUNCTION {name}(", 1).replace(
                plain, f"FUNCTION {name}(", 1
            )
            statements.append(definition)
        for oid, table in _fetch(_TABLES, [template]):
            columns = []
            for column, kind, not_null, default, ident, generated in _fetch(
                _COLUMNS, [oid]
            ):
                parts = [_q(column), kind]
                if ident:
                    identity.append((table, column))
                    mode = "ALWAYS" if ident == "a" else "BY DEFAULT"
                    parts.append(f"GENERATED {mode} AS IDENTITY")
                elif generated == "s":
                    parts.append(f"GENERATED ALWAYS AS ({default}) STORED")
                elif default is not None:
                    parts.append(f"DEFAULT {default}")
                if not_null:
                    parts.append("NOT NULL")
                columns.append(" ".join(parts))
            statements.append(f"CREATE TABLE {_q(table)} ({', '.join(columns)})")
        for table, name, definition, _kind in _fetch(_CONSTRAINTS, [template]):
            statements.append(
                f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} {definition}"
            )
        # Index and trigger definitions always name the table's schema.
        qualified = (f" ON {_q(template)}.", f" ON {template}.")
        for (definition,) in _fetch(_INDEXES, [template]) + _fetch(
            _TRIGGERS, [template]
        ):
            for prefix in qualified:
                definition = definition.replace(prefix, " ON ", 1)
            statements.append(definition)
        rows: dict[str, tuple[tuple[str, ...], tuple[tuple[Any, ...], ...]]] = {}
        for table in SEEDED_TABLES:
            cursor.execute(f"SELECT * FROM {_q(table)} ORDER BY 1")  # noqa: S608
            names = tuple(col.name for col in cursor.description or ())
            rows[table] = (names, tuple(cursor.fetchall()))
    for statement in statements:
        if f"{template}." in statement:
            raise RuntimeError(
                f"Template DDL still names its schema, cannot replay: {statement[:200]}"
            )
    return Snapshot(
        statements=tuple(statements), rows=rows, identity_columns=tuple(identity)
    )


def schema_create_from_snapshot(schema: str, snapshot: Snapshot) -> None:
    """Create `schema` from `snapshot` in one transaction (all or nothing)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {_q(schema)}")
        # Local to this transaction: the connection's own path is restored.
        cursor.execute(
            "SELECT set_config('search_path', %s, true)", [f"{_q(schema)}, public"]
        )
        for statement in snapshot.statements:
            cursor.execute(statement)
        for table, (names, values) in snapshot.rows.items():
            if not values:
                continue
            columns = ", ".join(_q(name) for name in names)
            marks = ", ".join(["%s"] * len(names))
            cursor.executemany(
                f"INSERT INTO {_q(table)} ({columns}) VALUES ({marks})",  # noqa: S608
                list(values),
            )
        for table, column in snapshot.identity_columns:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, %s), "  # noqa: S608
                f"COALESCE(max({_q(column)}), 0) + 1, false) FROM {_q(table)}",
                [_q(table), column],
            )
