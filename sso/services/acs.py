"""SP-initiated start, the ACS and the finish step (specs/sso.md §3).

ACS order: tenant from the host (the middleware) → SSO configured → rate
and size limits → pre-check → claim the RelayState token →
python3-saml's validation → exact addressing → replay entries → a 303 to
`/sso/saml/finish/?t=`. The finish GET (same-site, so it carries the Lax
session cookie) checks the browser binding, then links, provisions and maps
roles in one transaction. Every outcome writes one audit event; refusals
are committed after the rollback and never carry message or attribute
values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.db import connection, transaction
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import (
    OneLogin_Saml2_Error,
)
from onelogin.saml2.errors import (
    OneLogin_Saml2_ValidationError as V,
)
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from portal import crypto
from portal.models import AuditEvent, Member
from portal.roles import Role
from portal.services.audit import audit_event_record
from portal.services.keyring import keyring_decrypt, keyring_encrypt
from portal.services.registry import audit_exempt, audits
from sso.errors import SamlError
from sso.models import (
    Binding,
    FinishTicket,
    IdentityProvider,
    PendingRequest,
    ReplayEntry,
    SsoSession,
    TestRun,
)
from sso.services.config import SamlContext, fingerprint_display, saml_context
from sso.services.identity import (
    VerifiedIdentity,
    profile_from_identity,
    role_for_groups,
    sso_member_resolve,
)
from sso.services.limits import acs_rate_check, acs_rejection_count
from sso.services.xmlcheck import (
    MAX_MESSAGE_BYTES,
    NS_DS,
    NS_SAML,
    b64decode_strict,
    decrypted_precheck,
    response_precheck,
    xml_parse_hardened,
)

PENDING_TTL = timedelta(minutes=10)
FINISH_TTL = timedelta(seconds=60)
TEST_TTL = timedelta(minutes=15)
MAX_SESSION = timedelta(hours=12)
TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
KEY_PURPOSE = "sso"

_ERROR_CODES: dict[int, str] = {
    V.INVALID_SIGNATURE: "signature_invalid",
    V.NO_SIGNATURE_FOUND: "signature_missing",
    V.NO_SIGNED_ASSERTION: "signature_missing",
    V.NO_SIGNED_MESSAGE: "signature_missing",
    V.DEPRECATED_SIGNATURE_METHOD: "forbidden_algorithm",
    V.DEPRECATED_DIGEST_METHOD: "forbidden_algorithm",
    V.WRONG_INRESPONSETO: "request_unknown",
    V.NO_ENCRYPTED_ASSERTION: "encryption_required",
    V.ASSERTION_TOO_EARLY: "not_yet_valid",
    V.ASSERTION_EXPIRED: "expired",
    V.SESSION_EXPIRED: "expired",
    V.RESPONSE_EXPIRED: "expired",
    V.WRONG_DESTINATION: "destination_mismatch",
    V.EMPTY_DESTINATION: "destination_mismatch",
    V.WRONG_SUBJECTCONFIRMATION: "destination_mismatch",
    V.WRONG_AUDIENCE: "audience_mismatch",
    V.WRONG_ISSUER: "issuer_mismatch",
    V.ISSUER_MULTIPLE_IN_RESPONSE: "issuer_mismatch",
    V.ISSUER_NOT_FOUND_IN_ASSERTION: "issuer_mismatch",
    V.STATUS_CODE_IS_NOT_SUCCESS: "idp_status",
    V.MISSING_STATUS: "idp_status",
    V.MISSING_STATUS_CODE: "idp_status",
    V.KEYINFO_NOT_FOUND_IN_ENCRYPTED_DATA: "decryption_failed",
    V.CHILDREN_NODE_NOT_FOUND_IN_KEYINFO: "decryption_failed",
    V.UNSUPPORTED_RETRIEVAL_METHOD: "decryption_failed",
}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _request_data(
    context: SamlContext, path: str, get: dict[str, str] | None = None
) -> dict[str, Any]:
    parts = urlsplit(context.origin)
    return {
        "https": "on" if parts.scheme == "https" else "off",
        "http_host": parts.netloc,
        "script_name": "",
        "path_info": path,
        "get_data": get or {},
        "post_data": {},
    }


@audit_exempt("pure: validates a path")
def safe_landing(value: str | None, *, context: SamlContext) -> str:
    """A relative path on this tenant, else the default landing path (SSO-S13)."""
    landing = (context.idp.landing_path if context.idp else "/") or "/"
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return landing
    host = urlsplit(context.origin).netloc
    if any(ch in value for ch in "\t\r\n\\") or not url_has_allowed_host_and_scheme(
        value, allowed_hosts={host}, require_https=context.origin.startswith("https")
    ):
        return landing
    return value[:2048]


# --- SP-initiated start -------------------------------------------------------


@dataclass(frozen=True)
class LoginStart:
    """Where to send the browser: a Redirect URL or an auto-posting form."""

    url: str
    post_fields: dict[str, str] | None = None


@audit_exempt("creates a pending request; the outcome is audited at the ACS")
def saml_login_start(
    *,
    next_path: str | None,
    session_nonce: str,
    test_member_id: int | None = None,
) -> LoginStart:
    """Build a signed AuthnRequest and remember it under a one-time token.

    No `RequestedAuthnContext` (SSO-F5): python3-saml's default makes Entra
    ID and ADFS refuse MFA and Windows sign-ins (AADSTS75011).
    """
    context = saml_context()
    idp = context.idp
    if idp is None:
        raise SamlError("sso_not_configured")
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    auth = OneLogin_Saml2_Auth(
        _request_data(context, "/sso/saml/login/"), context.settings
    )
    if idp.sso_binding == Binding.POST:
        request = OneLogin_Saml2_Authn_Request(context.settings, set_nameid_policy=True)
        xml = request.get_xml()
        if idp.sign_authn_requests:
            xml = OneLogin_Saml2_Utils.add_sign(
                xml,
                context.settings.get_sp_key(),
                context.settings.get_sp_cert(),
                sign_algorithm=C.RSA_SHA256,
                digest_algorithm=C.SHA256,
            )
        request_id = request.get_id()
        start = LoginStart(
            url=idp.sso_url,
            post_fields={
                "SAMLRequest": base64.b64encode(
                    xml if isinstance(xml, bytes) else xml.encode()
                ).decode(),
                "RelayState": token,
            },
        )
    else:
        url = auth.login(return_to=token, set_nameid_policy=True)
        request_id = auth.get_last_request_id()
        start = LoginStart(url=url)
    PendingRequest.objects.create(
        token_hash=_hash(token),
        kind=PendingRequest.Kind.TEST if test_member_id else PendingRequest.Kind.LOGIN,
        request_id=request_id,
        next_path=safe_landing(next_path, context=context),
        session_nonce=session_nonce,
        member_id=test_member_id,
        created_at=now,
        expires_at=now + PENDING_TTL,
    )
    return start


def _claim_pending(token: str) -> PendingRequest | None:
    """Spend a RelayState token (committed at once, even if the login fails)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {PendingRequest._meta.db_table} "  # noqa: S608 - fixed name
            "WHERE token_hash = %s AND expires_at > %s AND kind IN ('login', 'test') "
            "RETURNING kind, request_id, next_path, session_nonce, member_id",
            [_hash(token), timezone.now()],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return PendingRequest(
        kind=row[0],
        request_id=row[1],
        next_path=row[2],
        session_nonce=row[3],
        member_id=row[4],
    )


# --- the ACS ---------------------------------------------------------------------


@dataclass
class AcsFacts:
    """What the audit event may say about a message (never its content)."""

    response_id: str = ""
    assertion_id: str = ""
    in_response_to: str = ""
    idp_entity_id: str = ""
    name_id: str = ""
    kind: str = ""
    decoded: bytes = b""


@dataclass(frozen=True)
class AcsOutcome:
    redirect_to: str
    event_id: int | None = None


def _keyinfo_fingerprint(root: etree._Element | None) -> str | None:
    if root is None:
        return None
    node = root.find(f".//{{{NS_DS}}}X509Certificate")
    if node is None or not node.text:
        return None
    try:
        der = base64.b64decode("".join(node.text.split()))
    except ValueError:
        return None
    return hashlib.sha256(der).hexdigest()


def _validation_error(
    exc: Exception,
    *,
    response: OneLogin_Saml2_Response,
    context: SamlContext,
    root: etree._Element | None,
) -> SamlError:
    code = _ERROR_CODES.get(getattr(exc, "code", -1), "bad_structure")
    if not isinstance(exc, V):
        code = "signature_invalid" if "sign" in str(exc).lower() else "bad_structure"
    idp = context.idp
    if code == "destination_mismatch" and _scd_expired(response):
        code = "expired"
    if code == "signature_invalid":
        configured = [c.fingerprint for c in idp.certificates.all()] if idp else []
        received = _keyinfo_fingerprint(root)
        return SamlError(
            code,
            expected="a signature by "
            + ", ".join(fingerprint_display(f) for f in configured),
            received=(
                "a signature whose embedded (unverified) certificate is "
                f"{fingerprint_display(received)}, which is not configured"
                if received
                else "a signature that verifies with no configured certificate"
            ),
        )
    if code == "issuer_mismatch":
        return SamlError(
            code, expected=idp.entity_id if idp else None, received=_issuer(root)
        )
    if code == "audience_mismatch":
        return SamlError(
            code, expected=context.entity_id, received=_safe(response.get_audiences)
        )
    if code == "destination_mismatch":
        return SamlError(
            code, expected=context.acs_url, received=_destinations(response)
        )
    if code in {"expired", "not_yet_valid"}:
        return SamlError(
            code,
            expected=f"server time {timezone.now().isoformat(timespec='seconds')} "
            f"within {C.ALLOWED_CLOCK_DRIFT} s",
            received=_conditions_window(response),
        )
    return SamlError(code, detail=str(exc)[:200] if code == "bad_structure" else "")


def _safe(getter: Any) -> Any:
    try:
        return getter()
    except Exception:  # noqa: BLE001 - display only
        return None


def _issuer(root: etree._Element | None) -> str | None:
    if root is None:
        return None
    node = root.find(f"{{{NS_SAML}}}Issuer")
    return node.text if node is not None else None


def _destinations(response: OneLogin_Saml2_Response) -> str:
    destination = response.document.get("Destination")
    recipients = [
        node.get("Recipient")
        for node in _safe(
            lambda: response._query_assertion(  # noqa: SLF001
                "/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"
            )
        )
        or []
    ]
    return f"Destination {destination!r}, Recipient {recipients!r}"


def _conditions_window(response: OneLogin_Saml2_Response) -> str:
    nodes = _safe(lambda: response._query_assertion("/saml:Conditions")) or []  # noqa: SLF001
    if not nodes:
        return "no Conditions"
    first = nodes[0]
    return (
        f"NotBefore {first.get('NotBefore')}, NotOnOrAfter {first.get('NotOnOrAfter')}"
    )


def _scd_expired(response: OneLogin_Saml2_Response) -> bool:
    nodes = (
        _safe(
            lambda: response._query_assertion(  # noqa: SLF001
                "/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"
            )
        )
        or []
    )
    now = OneLogin_Saml2_Utils.now()
    for node in nodes:
        value = node.get("NotOnOrAfter")
        if value and OneLogin_Saml2_Utils.parse_SAML_to_time(value) <= now:
            return True
    return False


def _addressing_check(response: OneLogin_Saml2_Response, context: SamlContext) -> None:
    """Exact Destination, Recipient, Audience (SSO-S11; 1.16.0 is lax here)."""
    if response.document.get("Destination") != context.acs_url:
        raise SamlError(
            "destination_mismatch",
            expected=context.acs_url,
            received=_destinations(response),
        )
    confirmations = response._query_assertion("/saml:Subject/saml:SubjectConfirmation")  # noqa: SLF001
    bearers = [n for n in confirmations if n.get("Method") == C.CM_BEARER]
    if not bearers:
        raise SamlError("destination_mismatch", detail="No bearer SubjectConfirmation.")
    for node in bearers:
        data = node.find(f"{{{NS_SAML}}}SubjectConfirmationData")
        if data is None or data.get("Recipient") != context.acs_url:
            raise SamlError(
                "destination_mismatch",
                expected=context.acs_url,
                received=_destinations(response),
            )
    audiences = response.get_audiences()
    # Every AudienceRestriction must name this SP (SAML core 2.5.1.4);
    # python3-saml only looks at the union of their Audiences.
    restrictions = response._query_assertion(  # noqa: SLF001
        "/saml:Conditions/saml:AudienceRestriction"
    )
    if not restrictions or any(
        context.entity_id
        not in [a.text for a in node.findall(f"{{{NS_SAML}}}Audience")]
        for node in restrictions
    ):
        raise SamlError(
            "audience_mismatch", expected=context.entity_id, received=audiences
        )


def _in_response_to_check(
    response: OneLogin_Saml2_Response, pending: PendingRequest | None
) -> None:
    """The verified Response and its bearer confirmations answer our request.

    SP-initiated: the Response's InResponseTo and that of every bearer
    SubjectConfirmationData (SAML profiles 4.1.4.2: MUST match the request)
    equal the pending request's ID; the confirmation sits in the signed
    Assertion, whereas the Response may be unsigned. IdP-initiated: no
    InResponseTo anywhere (SSO-S12). python3-saml compares the confirmation's
    value only with the Response's, and only when both are present.
    """
    expected = pending.request_id if pending else None
    response_value = response.get_in_response_to()
    confirmations: list[tuple[bool, str | None]] = [
        (
            node.get("Method") == C.CM_BEARER,
            data.get("InResponseTo"),
        )
        for node in response._query_assertion(  # noqa: SLF001
            "/saml:Subject/saml:SubjectConfirmation"
        )
        for data in node.findall(f"{{{NS_SAML}}}SubjectConfirmationData")
    ]
    values = [response_value, *(value for _, value in confirmations)]
    received = ", ".join(str(v) for v in values)[:300]
    if pending is None:
        if any(v is not None for v in values):
            raise SamlError(
                "unsolicited_response",
                expected="no InResponseTo",
                received=", ".join(v for v in values if v is not None)[:300],
            )
        return
    if response_value != expected or any(
        value != expected
        for bearer, value in confirmations
        if bearer or value is not None
    ):
        raise SamlError(
            "request_unknown",
            expected=f"InResponseTo {expected}",
            received=f"InResponseTo {received}",
        )


def _response_for(context: SamlContext, b64: str) -> OneLogin_Saml2_Response:
    """Build python3-saml's Response, trying retired SP keys for decryption."""
    last: Exception | None = None
    for settings in context.decrypt_settings:
        try:
            return OneLogin_Saml2_Response(settings, b64)
        except (OneLogin_Saml2_Error, V, Exception) as exc:  # noqa: BLE001
            last = exc
    raise SamlError("decryption_failed", detail=str(last)[:120] if last else "")


def _replay_record(
    response: OneLogin_Saml2_Response,
    ids: list[str],
    *,
    ticket: tuple[str, bytes] | None = None,
) -> None:
    """Spend the message's IDs and, with `ticket`, issue the finish ticket.

    One autocommit statement (its own transaction, no BEGIN, savepoint or
    COMMIT round trips): the IDs go in with ON CONFLICT DO NOTHING, and the
    ticket `(token_hash, sealed payload)` is inserted only if every ID was
    new. A conflict, including a concurrent POST of the same Response that
    committed first, raises `replayed` and issues no ticket. IDs of a
    refused message that did not conflict stay recorded, which changes
    nothing: that message can never be accepted anyway.
    """
    drift = timedelta(seconds=C.ALLOWED_CLOCK_DRIFT)
    not_on_or_after = response.get_assertion_not_on_or_after()
    now = timezone.now()
    until = now + timedelta(hours=1)
    if not_on_or_after:
        until = datetime.fromtimestamp(not_on_or_after, tz=now.tzinfo) + drift
    until = min(max(until, now + drift), now + timedelta(days=1))
    message_ids = sorted({i[:256] for i in ids if i})
    spend = (
        f"WITH spent AS (INSERT INTO {ReplayEntry._meta.db_table} "  # noqa: S608 - fixed name
        "(message_id, expires_at) SELECT unnest(%s::varchar[]), %s "
        "ON CONFLICT (message_id) DO NOTHING RETURNING 1) "
    )
    with connection.cursor() as cursor:
        if ticket is None:
            cursor.execute(
                spend + "SELECT count(*) FROM spent",  # noqa: S608 - fixed text
                [message_ids, until],
            )
            spent = cursor.fetchone()[0]
        else:
            cursor.execute(
                spend + f"INSERT INTO {FinishTicket._meta.db_table} "  # noqa: S608 - fixed name
                "(token_hash, payload, created_at, expires_at) "
                "SELECT %s, %s, %s, %s WHERE (SELECT count(*) FROM spent) = %s",
                [message_ids, until, *ticket, now, now + FINISH_TTL, len(message_ids)],
            )
            spent = len(message_ids) if cursor.rowcount == 1 else -1
    if spent != len(message_ids):
        raise SamlError("replayed")


def _seen(response_id: str) -> bool:
    """Was this Response ID accepted before (a rejection reason only)?"""
    return (
        bool(response_id)
        and ReplayEntry.objects.filter(message_id=f"r:{response_id}"[:256]).exists()
    )


def _identity(
    response: OneLogin_Saml2_Response, context: SamlContext
) -> VerifiedIdentity:
    expires = response.get_session_not_on_or_after()
    attributes = {
        str(name): [str(v) for v in values if v is not None]
        for name, values in (response.get_attributes() or {}).items()
    }
    return VerifiedIdentity(
        idp_entity_id=context.idp.entity_id if context.idp else "",
        name_id=response.get_nameid() or "",
        name_id_format=response.get_nameid_format() or "",
        name_qualifier=response.get_nameid_nq() or "",
        sp_name_qualifier=response.get_nameid_spnq() or "",
        session_index=response.get_session_index() or "",
        session_expires_at=(
            datetime.fromtimestamp(expires, tz=timezone.now().tzinfo).isoformat()
            if expires
            else ""
        ),
        attributes=attributes,
    )


def _seal(payload: dict[str, Any], aad: str) -> bytes:
    return keyring_encrypt(
        purpose=KEY_PURPOSE, plaintext=json.dumps(payload).encode(), aad=aad.encode()
    )


def _open(blob: bytes | memoryview, aad: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        keyring_decrypt(purpose=KEY_PURPOSE, blob=bytes(blob), aad=aad.encode())
    )
    return data


def _ticket_key(token: str) -> crypto.SecretBytes:
    """The finish ticket's own key, derived from the token the browser holds.

    The row is found by SHA-256(token); the key is a different hash of it,
    so the database alone cannot open a ticket, and sealing one needs no
    keyring lookup on the sign-in path.
    """
    return crypto.SecretBytes(
        hashlib.sha256(b"portal-sso-finish-ticket\0" + token.encode()).digest()
    )


def _ticket_seal(payload: dict[str, Any], token: str) -> bytes:
    return crypto.encrypt_field(
        _ticket_key(token), 0, json.dumps(payload).encode(), aad=_hash(token).encode()
    )


def _ticket_open(blob: bytes | memoryview, token: str) -> dict[str, Any] | None:
    try:
        plain = crypto.decrypt_field(
            _ticket_key(token), bytes(blob), aad=_hash(token).encode()
        )
    except crypto.DecryptionError:
        return None
    data: dict[str, Any] = json.loads(plain)
    return data


def _fail_event(
    error: SamlError, facts: AcsFacts, *, action: str = "sso.login.failed"
) -> AuditEvent:
    changes = error.as_changes()
    changes.update(
        {
            "idp": facts.idp_entity_id[:200] or None,
            "name_id": facts.name_id[:200] or None,
            "response_id": facts.response_id[:100] or None,
            "assertion_id": facts.assertion_id[:100] or None,
            "in_response_to": facts.in_response_to[:100] or None,
            "flow": facts.kind or None,
        }
    )
    return audit_event_record(
        action=action, target_label="SAML sign-in", changes=changes
    )


@audits("sso.login.failed", "sso.test.passed", "sso.test.failed")
def saml_acs(
    *,
    saml_response: str,
    relay_state: str,
    ip: str | None,
    oversize: bool = False,
) -> AcsOutcome:
    """Validate an IdP's POST; on success hand a finish ticket to the browser.

    `oversize`: the view found the body over 256 KiB and read no further;
    the refusal (`too_large`) is decided after the configuration and rate
    checks, so that it counts as a request and a rejection like any other.
    Raises `SamlError` (with `details["event_id"]`) on every refusal, after
    its audit event is committed. A test-connection run never raises after
    its token is claimed: it redirects to its report instead.
    """
    facts = AcsFacts()
    pending: PendingRequest | None = None
    context: SamlContext | None = None
    try:
        context = saml_context()
        idp = context.idp
        if idp is None:
            raise SamlError("sso_not_configured")
        facts.idp_entity_id = idp.entity_id
        acs_rate_check(ip=ip)
        if oversize:
            raise SamlError("too_large", expected=f"≤ {MAX_MESSAGE_BYTES} bytes")
        decoded = b64decode_strict(saml_response)
        facts.decoded = decoded
        checked = response_precheck(decoded)
        facts.response_id = checked.message_id
        facts.in_response_to = checked.in_response_to or ""
        if relay_state and TOKEN.match(relay_state):
            pending = _claim_pending(relay_state)
            if pending is None and _seen(checked.message_id):
                raise SamlError("replayed")
            if pending is None:
                raise SamlError(
                    "request_unknown",
                    detail="The RelayState token is unknown, used or expired.",
                )
            facts.kind = pending.kind
            if checked.in_response_to != pending.request_id:
                raise SamlError(
                    "request_unknown",
                    expected=f"InResponseTo {pending.request_id}",
                    received=f"InResponseTo {checked.in_response_to}",
                )
        else:
            facts.kind = "idp"
            if not idp.allow_idp_initiated:
                raise SamlError("idp_initiated_disabled")
            if checked.in_response_to:
                raise SamlError(
                    "unsolicited_response",
                    expected="no InResponseTo",
                    received=checked.in_response_to,
                )
        if not checked.success:
            raise SamlError("idp_status", received=_status_of(checked.root))
        response = _response_for(context, saml_response)
        if response.encrypted:
            decrypted_precheck(response.decrypted_document)
        request_data = _request_data(context, "/sso/saml/acs/")
        try:
            response.is_valid(
                request_data,
                request_id=pending.request_id if pending else None,
                raise_exceptions=True,
            )
        except Exception as exc:  # noqa: BLE001 - every library error becomes a reason
            raise _validation_error(
                exc, response=response, context=context, root=checked.root
            ) from None
        _addressing_check(response, context)
        _in_response_to_check(response, pending)
        facts.assertion_id = response.get_assertion_id() or ""
        identity = _identity(response, context)
        facts.name_id = identity.name_id
        replay_ids = [f"r:{checked.message_id}", f"a:{facts.assertion_id}"]
        if pending and pending.kind == PendingRequest.Kind.TEST:
            _replay_record(response, replay_ids)
            return _test_report(
                context=context,
                pending=pending,
                identity=identity,
                error=None,
                facts=facts,
                verifying=_verifying_fingerprint(response, context),
            )
        token = secrets.token_urlsafe(32)
        payload = {
            "flow": "sp" if pending else "idp",
            "nonce": pending.session_nonce if pending else "",
            "next": pending.next_path
            if pending
            else safe_landing(relay_state, context=context),
            "identity": identity.as_dict(),
            "response_id": checked.message_id,
            "assertion_id": facts.assertion_id,
        }
        _replay_record(
            response, replay_ids, ticket=(_hash(token), _ticket_seal(payload, token))
        )
        return AcsOutcome(redirect_to=f"/sso/saml/finish/?t={token}")
    except SamlError as error:
        if error.code != "rate_limited":
            acs_rejection_count(ip=ip)
        if pending is not None and pending.kind == PendingRequest.Kind.TEST and context:
            return _test_report(
                context=context,
                pending=pending,
                identity=None,
                error=error,
                facts=facts,
                verifying=None,
            )
        event = _fail_event(error, facts)
        error.details["event_id"] = event.pk
        raise


def _status_of(root: etree._Element) -> str:
    node = root.find(".//{urn:oasis:names:tc:SAML:2.0:protocol}StatusCode")
    return node.get("Value", "none") if node is not None else "none"


def _verifying_fingerprint(
    response: OneLogin_Saml2_Response, context: SamlContext
) -> str | None:
    """Which configured certificate verified the signatures (test mode only)."""
    idp = context.idp
    if idp is None:
        return None
    document = response.decrypted_document if response.encrypted else response.document
    for cert in idp.certificates.all():
        for doc, xpath in (
            (document, OneLogin_Saml2_Utils.ASSERTION_SIGNATURE_XPATH),
            (response.document, OneLogin_Saml2_Utils.RESPONSE_SIGNATURE_XPATH),
        ):
            try:
                if OneLogin_Saml2_Utils.validate_sign(
                    doc, cert.pem, xpath=xpath, raise_exceptions=False
                ):
                    return cert.fingerprint
            except Exception:  # noqa: BLE001, S112 - display only
                continue
    return None


def _test_report(
    *,
    context: SamlContext,
    pending: PendingRequest,
    identity: VerifiedIdentity | None,
    error: SamlError | None,
    facts: AcsFacts,
    verifying: str | None,
) -> AcsOutcome:
    """Store what a test connection saw and send the admin to it (SSO-F14)."""
    idp = context.idp
    report: dict[str, Any] = {
        "decoded": _pretty(facts.decoded),
        "response_id": facts.response_id,
        "in_response_to": facts.in_response_to,
        "checks": [],
    }
    if error is not None:
        report.update(
            {
                "reason": error.code,
                "summary": error.reason.summary
                + (f" {error.detail}" if error.detail else ""),
                "message": error.admin_message(),
                "expected": error.expected
                if isinstance(error.expected, str)
                else repr(error.expected),
                "received": error.received
                if isinstance(error.received, str)
                else repr(error.received),
                "fix": error.reason.fix,
            }
        )
    if identity is not None and idp is not None:
        report.update(
            {
                "name_id": identity.name_id,
                "name_id_format": identity.name_id_format,
                "session_index": identity.session_index,
                "attributes": identity.attributes,
                "verifying_certificate": fingerprint_display(verifying)
                if verifying
                else None,
            }
        )
        try:
            profile = profile_from_identity(idp=idp, identity=identity)
            role = role_for_groups(
                idp=idp, mappings=context.mappings, groups=profile.groups
            )
            report["mapping"] = {
                "email": profile.email,
                "first_name": profile.first_name,
                "last_name": profile.last_name,
                "groups": list(profile.groups),
                "role": role or "unchanged",
                "role_label": Role(role).label if role else "unchanged",
                "member": _would_match(idp, profile.email),
            }
        except SamlError as mapping_error:
            error = mapping_error
            report.update(
                {
                    "reason": mapping_error.code,
                    "summary": mapping_error.reason.summary,
                    "message": mapping_error.admin_message(),
                    "fix": mapping_error.reason.fix,
                }
            )
    passed = error is None
    report["checks"] = _checklist(
        error, encrypted=b"EncryptedAssertion" in facts.decoded
    )
    now = timezone.now()
    with transaction.atomic():
        run = TestRun(
            member_id=pending.member_id or 0,
            passed=passed,
            reason=error.code if error else "",
            report=b"",
            created_at=now,
            expires_at=now + TEST_TTL,
        )
        run.report = _seal(report, str(run.id))
        run.save()
        if passed:
            IdentityProvider.objects.update(last_test_passed_at=now)
        audit_event_record(
            action="sso.test.passed" if passed else "sso.test.failed",
            target_label="SSO test connection",
            changes={
                "reason": error.code if error else None,
                "idp": facts.idp_entity_id[:200],
                "response_id": facts.response_id[:100] or None,
            },
        )
    return AcsOutcome(redirect_to=f"/sso/test/{run.id}/")


STEPS = (
    ("Message decoded and well-formed", {"malformed", "too_large"}),
    (
        "No DTD, allowed structure and algorithms",
        {"dtd_forbidden", "bad_structure", "forbidden_algorithm"},
    ),
    (
        "Answers the request this test sent",
        {"request_unknown", "unsolicited_response", "replayed"},
    ),
    ("IdP reported success", {"idp_status"}),
    ("Decrypted (when encrypted)", {"decryption_failed", "encryption_required"}),
    (
        "Signature verified with a configured certificate",
        {"signature_missing", "signature_invalid"},
    ),
    ("Issuer is the configured IdP", {"issuer_mismatch"}),
    (
        "Addressed to this portal (Destination, Recipient, Audience)",
        {"destination_mismatch", "audience_mismatch"},
    ),
    ("Within its validity period", {"expired", "not_yet_valid"}),
    (
        "Attributes and groups map to a person and role",
        {
            "attribute_missing",
            "identity_unresolved",
            "groups_overage",
            "no_matching_group",
            "email_domain_not_allowed",
        },
    ),
)


def _checklist(error: SamlError | None, *, encrypted: bool) -> list[dict[str, str]]:
    result: list[dict[str, str]] = []
    failed = False
    for label, codes in STEPS:
        if failed:
            state = "not run"
        elif "decryption_failed" in codes and not encrypted and error is None:
            state = "not needed"
        elif error is not None and error.code in codes:
            state, failed = "failed", True
        else:
            state = "passed"
        result.append({"label": label, "state": state})
    return result


def _would_match(idp: IdentityProvider, email: str) -> str:
    member = Member.objects.filter(email__iexact=email).first()
    if member is not None:
        return f"existing member {member.email} ({member.get_status_display()})"
    domain = email.rsplit("@", 1)[-1].lower()
    if not idp.jit_enabled:
        return "no member yet, and just-in-time provisioning is off: sign-in refused"
    if domain not in (idp.allowed_email_domains or []):
        return f"no member yet, and {domain} is not on the SSO domain list: refused"
    return "a new member would be created at the first sign-in"


def _pretty(decoded: bytes) -> str:
    """The decoded Response for the test report, through the one hardened parser."""
    if not decoded:
        return ""
    try:
        root = xml_parse_hardened(decoded)
    except SamlError:
        return decoded[:20_000].decode("utf-8", "replace")
    return etree.tostring(root, pretty_print=True).decode()[:200_000]


@audit_exempt("read")
def test_run_get(
    *, run_id: str, member: Member
) -> tuple[TestRun, dict[str, Any]] | None:
    """A test report, only for the admin who started it, for 15 minutes."""
    run = TestRun.objects.filter(
        pk=run_id, member_id=member.pk, expires_at__gt=timezone.now()
    ).first()
    if run is None:
        return None
    return run, _open(run.report, str(run.id))


# --- the finish step ----------------------------------------------------------


@dataclass(frozen=True)
class FinishTicketData:
    flow: str
    nonce: str
    next_path: str
    identity: VerifiedIdentity
    response_id: str
    assertion_id: str


@audit_exempt("read: is the ticket an IdP-initiated one")
def finish_ticket_flow(*, token: str) -> str | None:
    row = FinishTicket.objects.filter(
        token_hash=_hash(token), expires_at__gt=timezone.now()
    ).first()
    data = _ticket_open(row.payload, token) if row is not None else None
    return str(data.get("flow")) if data is not None else None


def _claim_ticket(token: str) -> FinishTicketData | None:
    if not token or not TOKEN.match(token):
        return None
    digest = _hash(token)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {FinishTicket._meta.db_table} "  # noqa: S608 - fixed name
            "WHERE token_hash = %s AND expires_at > %s RETURNING payload",
            [digest, timezone.now()],
        )
        row = cursor.fetchone()
    data = _ticket_open(row[0], token) if row is not None else None
    if data is None:
        return None
    return FinishTicketData(
        flow=data["flow"],
        nonce=data["nonce"],
        next_path=data["next"],
        identity=VerifiedIdentity(**data["identity"]),
        response_id=data["response_id"],
        assertion_id=data["assertion_id"],
    )


@dataclass(frozen=True)
class FinishResult:
    member: Member
    user: Any
    identity: VerifiedIdentity
    next_path: str
    session_expires_at: datetime


@audits("sso.login.succeeded", "sso.login.failed")
def saml_finish(
    *, token: str, session_nonce: str | None, signed_in: Member | None
) -> FinishResult:
    """Claim the ticket, check the browser binding, link and provision.

    The caller then calls `login()` (which rotates the session key) and
    `sso_session_record()`. Raises `SamlError` with `details["event_id"]`.
    """
    facts = AcsFacts(kind="finish")
    try:
        ticket = _claim_ticket(token)
        if ticket is None:
            raise SamlError(
                "state_mismatch",
                detail="The sign-in ticket is unknown, used or older than 60 seconds.",
            )
        facts.kind = ticket.flow
        facts.response_id = ticket.response_id
        facts.assertion_id = ticket.assertion_id
        facts.idp_entity_id = ticket.identity.idp_entity_id
        facts.name_id = ticket.identity.name_id
        if ticket.flow == "sp" and (
            not session_nonce or not secrets.compare_digest(ticket.nonce, session_nonce)
        ):
            raise SamlError(
                "state_mismatch",
                detail="The sign-in was started in another browser session.",
            )
        context = saml_context()
        idp = context.idp
        if idp is None:
            raise SamlError("sso_not_configured")
        if idp.entity_id != ticket.identity.idp_entity_id:
            raise SamlError(
                "issuer_mismatch",
                expected=idp.entity_id,
                received=ticket.identity.idp_entity_id,
            )
        with transaction.atomic():
            member, user, created = sso_member_resolve(
                idp=idp,
                mappings=context.mappings,
                identity=ticket.identity,
                signed_in=signed_in,
            )
            audit_event_record(
                action="sso.login.succeeded",
                target=member,
                actor=member,
                changes={
                    "idp": idp.entity_id[:200],
                    "name_id": ticket.identity.name_id[:200],
                    "response_id": ticket.response_id[:100],
                    "assertion_id": ticket.assertion_id[:100],
                    "flow": ticket.flow,
                    "created": created,
                },
            )
    except SamlError as error:
        event = _fail_event(error, facts)
        error.details["event_id"] = event.pk
        raise
    now = timezone.now()
    expires = now + MAX_SESSION
    if ticket.identity.session_expires_at:
        expires = min(
            expires, datetime.fromisoformat(ticket.identity.session_expires_at)
        )
    return FinishResult(
        member=member,
        user=user,
        identity=ticket.identity,
        next_path=ticket.next_path,
        session_expires_at=expires,
    )


@audit_exempt("session index row; the sign-in is audited")
def sso_session_record(
    *,
    session_key: str,
    member: Member,
    identity: VerifiedIdentity,
    expires_at: datetime,
) -> SsoSession:
    """Remember the IdP session behind a Django session (for SLO, SSO-F7)."""
    # Usually a new key, but login() keeps the session of a person signing
    # in again as themselves: then the IdP session details are replaced.
    # One upsert statement, no savepoint.
    row = SsoSession(
        session_key=session_key,
        member=member,
        idp_entity_id=identity.idp_entity_id[:1024],
        name_id=identity.name_id[:1024],
        name_id_format=identity.name_id_format[:256],
        name_qualifier=identity.name_qualifier[:1024],
        sp_name_qualifier=identity.sp_name_qualifier[:1024],
        session_index=identity.session_index[:256],
        expires_at=expires_at,
    )
    SsoSession.objects.bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["session_key"],
        update_fields=[
            "member",
            "idp_entity_id",
            "name_id",
            "name_id_format",
            "name_qualifier",
            "sp_name_qualifier",
            "session_index",
            "expires_at",
        ],
    )
    return row
