"""Database plumbing shared by every app."""

from __future__ import annotations


def current_schema() -> str:
    """The schema the default connection is on (django-tenants sets it)."""
    from django.db import connection

    return str(getattr(connection, "schema_name", "public"))


def use_public_schema() -> None:
    """Point the default connection at the public schema."""
    from django.db import connection

    connection.set_schema_to_public()  # type: ignore[attr-defined]
