"""Who is acting, from where: carried through a request, command or task.

The audit log reads the current context so services need not pass request
details around. Middleware sets it for web requests; commands, tasks and the
SFTP server set it with `actor_context()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator


@dataclasses.dataclass(frozen=True)
class ActorContext:
    actor_type: str = "system"
    actor_id: str = ""
    actor_label: str = ""
    ip: str | None = None
    user_agent: str = ""
    request_id: str = ""
    source: str = "cli"


_current: contextvars.ContextVar[ActorContext] = contextvars.ContextVar(
    "portal_actor_context",
    default=ActorContext(),  # noqa: B039
)


def current() -> ActorContext:
    return _current.get()


@contextlib.contextmanager
def actor_context(**values: str | None) -> Iterator[ActorContext]:
    """Set fields of the acting context for the duration of the block."""
    ctx = dataclasses.replace(_current.get(), **values)  # type: ignore[arg-type]
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_for_request(ctx: ActorContext) -> contextvars.Token[ActorContext]:
    return _current.set(ctx)


def reset(token: contextvars.Token[ActorContext]) -> None:
    _current.reset(token)
