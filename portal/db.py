"""Database plumbing shared by every app."""

from __future__ import annotations

from typing import Any


def pool_reset(conn: Any) -> None:
    """Reset a pooled connection before it is handed to the next borrower.

    TEN-11: without this, raw driver calls saw the previous borrower's
    search_path.
    """
    conn.execute("RESET search_path")
