"""Database plumbing shared by every app."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from django.db.models import Model


def current_schema() -> str:
    """The schema the default connection is on (django-tenants sets it)."""
    from django.db import connection

    return str(getattr(connection, "schema_name", "public"))


def use_public_schema() -> None:
    """Point the default connection at the public schema."""
    from django.db import connection

    connection.set_schema_to_public()  # type: ignore[attr-defined]


_M = TypeVar("_M", bound="Model")


@dataclass(frozen=True)
class _SelectList:
    sql: str
    attnames: tuple[str, ...]
    converters: tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]


@functools.cache
def _select_list(model: type[Model]) -> _SelectList:
    from django.db import connection

    table = model._meta.db_table
    fields = model._meta.concrete_fields
    quote = connection.ops.quote_name
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(table)
        found = tuple(
            connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        )
        if found:
            converters.append((index, found, col))
    return _SelectList(
        sql=", ".join(f"{quote(table)}.{quote(str(f.column))}" for f in fields),
        attnames=tuple(f.attname for f in fields),
        converters=tuple(converters),
    )


def row_first(
    model: type[_M],
    where: str = "",
    params: Sequence[Any] = (),
    *,
    order_by: str = "",
    for_update: bool = False,
) -> _M | None:
    """The first row of `model` matching `where`, without the query compiler.

    For the few reads on every request (the tenant's IdP row, the active
    key): Django's compiler costs about 1 ms of CPU per query on a small
    server, this about 0.2 ms. `where` and `order_by` are fixed SQL written
    by the caller against the model's table (never user input; values go
    in `params`). Field converters run as the ORM's would; the instance is
    built by `Model.from_db`, so saving it later works as usual.
    `for_update` locks the row (inside a transaction).
    """
    from django.db import connection

    select = _select_list(model)
    table = connection.ops.quote_name(model._meta.db_table)
    sql = f"SELECT {select.sql} FROM {table}"  # noqa: S608 - names from the model
    if where:
        sql += f" WHERE {where}"
    if order_by:
        sql += f" ORDER BY {order_by}"
    sql += " LIMIT 1"
    if for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, converters, col in select.converters:
        for convert in converters:
            values[index] = convert(values[index], col, connection)
    return model.from_db(connection.alias, select.attnames, values)
