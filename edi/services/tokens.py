"""EDI HTTPS bearer tokens: issue, revoke, authenticate (edi.md EDI-C2).

A token is `edi_` followed by 43 URL-safe base64 characters (256 random
bits). It is shown once; the database keeps only its SHA-256 (hex) and its
first characters for lists. Tokens live in the tenant's schema and are
looked up only there, so another tenant's token is simply unknown here:
it gets `invalid_token`, the same answer, and the same work, as a wrong
one (§7). Every refusal is audited.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import NoReturn

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from edi.models import EdiToken
from portal.errors import ApplicationError
from portal.models import Member
from portal.services.audit import audit_event_record
from portal.services.registry import audits

TOKEN_PREFIX = "edi_"  # noqa: S105 (a marker, not a secret)
TOKEN_BYTES = 32  # 256 bits
# "edi_" and four characters: enough to tell tokens apart in a list,
# nothing an attacker can use (4 of 43 random characters).
DISPLAY_PREFIX_LENGTH = len(TOKEN_PREFIX) + 4
DEFAULT_LIFETIME = timedelta(days=365)
MAX_LIFETIME = timedelta(days=5 * 365)
# last_used_at is a hint for admins, not a log: one write a minute at most.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# The longest credential worth hashing; anything longer is not a token.
MAX_CREDENTIAL_LENGTH = 200
MAX_NAME_LENGTH = 100  # EdiToken.name


class TokenRefused(ApplicationError):
    """A bearer token that does not authenticate (401).

    `code` is `invalid_token` (unknown, malformed, or another tenant's),
    `token_expired` or `token_revoked`.
    """

    status = 401
    code = "invalid_token"


_MESSAGES = {
    "invalid_token": "The token is not valid.",
    "token_expired": "The token has expired.",
    "token_revoked": "The token has been revoked.",
}


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


@audits("edi.token.issued")
@transaction.atomic
def edi_token_issue(
    *,
    name: str,
    scopes: Sequence[str] = EdiToken.SCOPES,
    expires_in: timedelta = DEFAULT_LIFETIME,
    actor: Member | None,
) -> tuple[EdiToken, str]:
    """Create a token in the current tenant's schema; return it and its text.

    The plaintext is returned once and never stored: only its SHA-256 and
    display prefix are. Raises `ApplicationError` (400) for a blank or
    over-long name, unknown or no scopes, or a lifetime outside
    (0, 5 years]. Writes one `edi.token.issued` audit event.
    """
    name = name.strip()
    if not name:
        raise ApplicationError(
            "Give the token a name.", details={"name": ["This field is required."]}
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ApplicationError(
            "The token's name is too long.",
            details={"name": ["At most 100 characters."]},
        )
    wanted = list(dict.fromkeys(scopes))  # unique, in the given order
    unknown = [scope for scope in wanted if scope not in EdiToken.SCOPES]
    if unknown or not wanted:
        raise ApplicationError(
            "Scopes must be edi:write and/or edi:read.",
            code="invalid_scope",
            details={"scopes": [f"Unknown scope {s!r}." for s in unknown]},
        )
    if not timedelta(0) < expires_in <= MAX_LIFETIME:
        raise ApplicationError(
            "A token lasts between a second and five years.",
            code="invalid_expiry",
        )
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = EdiToken(
        name=name,
        token_hash=_digest(plaintext),
        prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
        scopes=wanted,
        expires_at=timezone.now() + expires_in,
        created_by=actor,
    )
    token.full_clean()
    token.save()
    audit_event_record(
        action="edi.token.issued",
        target=token,
        actor=actor,
        changes={
            "name": token.name,
            "prefix": token.prefix,
            "scopes": wanted,
            "expires_at": token.expires_at.isoformat(),
        },
    )
    return token, plaintext


@audits("edi.token.revoked")
@transaction.atomic
def edi_token_revoke(*, token: EdiToken, actor: Member | None) -> EdiToken:
    """Revoke `token` at once: its next request gets 401 `token_revoked`.

    Runs in the current tenant's schema. Idempotent: revoking a revoked
    token changes nothing and records nothing. Writes one
    `edi.token.revoked` audit event.
    """
    token = EdiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_event_record(
        action="edi.token.revoked",
        target=token,
        actor=actor,
        changes={"name": token.name, "prefix": token.prefix},
    )
    return token


@audits("edi.token.refused")
def edi_token_authenticate(plaintext: str) -> EdiToken:
    """The current tenant's live token whose text is `plaintext`.

    Looks the token up by its SHA-256 in the current schema only. Raises
    `TokenRefused` (401) with `invalid_token` (unknown, malformed or
    another tenant's: indistinguishable), `token_revoked` or
    `token_expired`, after recording an `edi.token.refused` audit event
    (committed on its own: the request that carried the token fails).
    On success, stamps `last_used_at`, at most once a minute, with one
    UPDATE that no other request waits on.
    """
    # Hash every credential, well-formed or not, so that a malformed one
    # costs the same lookup as a wrong one.
    credential = plaintext[:MAX_CREDENTIAL_LENGTH]
    token = EdiToken.objects.filter(token_hash=_digest(credential)).first()
    if token is None or not plaintext.startswith(TOKEN_PREFIX):
        _refuse("invalid_token", token=None, presented=plaintext)
    now = timezone.now()
    if token.revoked_at is not None:
        _refuse("token_revoked", token=token, presented=plaintext)
    if token.expires_at <= now:
        _refuse("token_expired", token=token, presented=plaintext)
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        EdiToken.objects.filter(
            Q(last_used_at__isnull=True)
            | Q(last_used_at__lt=now - LAST_USED_RESOLUTION),
            pk=token.pk,
        ).update(last_used_at=now)
        token.last_used_at = now
    return token


def _refuse(code: str, *, token: EdiToken | None, presented: str) -> NoReturn:
    # Only the display-length prefix of what was presented is kept, and
    # only when it looks like an EDI token: never a whole secret.
    head = presented[:DISPLAY_PREFIX_LENGTH]
    shown = (
        head
        if head.startswith(TOKEN_PREFIX) and head.isascii() and head.isprintable()
        else ""
    )
    audit_event_record(
        action="edi.token.refused",
        target=token,
        changes={"reason": code, "prefix": shown},
    )
    raise TokenRefused(_MESSAGES[code], code=code)
