"""Readiness: the database and the broker answer (`/readyz`)."""

from __future__ import annotations

import logging

from django.db import connection

logger = logging.getLogger(__name__)


def readiness() -> list[str]:
    """Return the names of the dependencies that do not answer."""
    problems: list[str] = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        logger.exception("Database not ready")
        problems.append("database")
    try:
        from portal.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        logger.exception("Broker not ready")
        problems.append("broker")
    return problems
