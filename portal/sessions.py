"""Database sessions that write a sign-in once (SESSION_ENGINE).

Django's database store spends three statements and two commits on every
sign-in: `create()` checks that a random key is unused, inserts the row
at once, and the response then updates the same row with the signed-in
data. This store differs in two ways only:

* `create()` picks a key and defers the INSERT to the next `save()`. The
  key is 32 characters from 36 (165 bits): a collision is not a practical
  event, and the INSERT would still refuse one, after which a new key is
  drawn exactly as Django does.
* `save()` does nothing when nothing changed since the last save, so a
  view may save inside its own transaction (one commit for the sign-in and
  the session) and the session middleware's save afterwards costs nothing.

Everything else (reads, expiry, `cycle_key`, `flush`, the table) is
Django's `django.contrib.sessions.backends.db`.
"""

from __future__ import annotations

from django.contrib.sessions.backends.base import VALID_KEY_CHARS, CreateError
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
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
        self._get_session(no_load=True)
        self._session_key = get_random_string(32, VALID_KEY_CHARS)
        self._insert_pending = True
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            self.create()
        if self._insert_pending or must_create:
            while True:
                try:
                    super().save(must_create=True)
                except CreateError:
                    if must_create and not self._insert_pending:
                        raise
                    self._session_key = get_random_string(32, VALID_KEY_CHARS)
                    continue
                break
            self._insert_pending = False
        elif self._dirty:
            super().save()
        self._dirty = False

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None and self._insert_pending:
            # Never written: nothing to delete, and the key is dropped.
            self._insert_pending = False
            self._session_key = None
            return
        super().delete(session_key)
