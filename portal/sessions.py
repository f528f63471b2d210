"""Database sessions that write a sign-in once (SESSION_ENGINE).

Django's database store spends three statements and two commits on every
sign-in: `create()` checks that a random key is unused, inserts the row
at once, and the response then updates the same row with the signed-in
data. This store differs in two ways only:

* `create()` picks a key and defers the INSERT to the next `save()`
  instead of first checking that the key is unused: the key is 32
  characters from 36 (165 bits), and the INSERT refuses a taken one.
* `save()` does nothing when nothing changed since the last save, so a
  view may save inside its own transaction (one commit for the sign-in and
  the session) and the session middleware's save afterwards costs nothing.
  The first write is one `INSERT ... ON CONFLICT DO NOTHING`, so it needs
  no savepoint inside the caller's transaction, and a taken key (which the
  INSERT reports) draws a new one as Django would.

Everything else (reads, expiry, `cycle_key`, `flush`, the table) is
Django's `django.contrib.sessions.backends.db`.
"""

from __future__ import annotations

from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.db import connection
from django.utils.crypto import get_random_string


class SessionStore(DbSessionStore):
    def __init__(self, session_key: str | None = None) -> None:
        self._dirty = False
        self._insert_pending = False
        super().__init__(session_key)

    # Django marks every change by setting `modified`; remember it until
    # the next save.
    @property
    def modified(self) -> bool:
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = value
        if value:
            self._dirty = True

    def create(self) -> None:
        # A new key has no row to load: keep the data in hand (Django's
        # create() gets the same effect from its immediate save).
        self._get_session(no_load=True)  # type: ignore[attr-defined]
        self._session_key = get_random_string(32, VALID_KEY_CHARS)
        self._insert_pending = True
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            self.create()
        if self._insert_pending:
            while not self._insert():
                self._session_key = get_random_string(32, VALID_KEY_CHARS)
            self._insert_pending = False
        elif must_create or self._dirty:
            super().save(must_create=must_create)
        self._dirty = False

    def _insert(self) -> bool:
        """INSERT the new row; False if the key is taken (no savepoint needed)."""
        data = self._get_session(no_load=True)  # type: ignore[attr-defined]
        row = self.create_model_instance(data)
        table = connection.ops.quote_name(self.model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (session_key, session_data, expire_date) "  # noqa: S608 - the model's table
                "VALUES (%s, %s, %s) ON CONFLICT (session_key) DO NOTHING",
                [row.session_key, row.session_data, row.expire_date],
            )
            return cursor.rowcount == 1

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None and self._insert_pending:
            # Never written: nothing to delete, and the key is dropped.
            self._insert_pending = False
            self._session_key = None
            return
        super().delete(session_key)
