"""Marks on service functions: which audit actions each one writes.

PORTAL-11 asks that every public service function either records audit
events (and says which) or is exempt with a reason; a test walks the service
modules and checks every function carries one of these marks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


def audits(*actions: str) -> Callable[[F], F]:
    def mark(func: F) -> F:
        func.__audit_actions__ = actions  # type: ignore[attr-defined]
        return func

    return mark


def audit_exempt(reason: str) -> Callable[[F], F]:
    def mark(func: F) -> F:
        func.__audit_exempt__ = reason  # type: ignore[attr-defined]
        return func

    return mark
