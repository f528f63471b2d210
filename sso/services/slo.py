"""Single logout both ways (SSO-F7).

SP-initiated: the local session has already ended (the logout view ends it
first, always); if the IdP has an SLO URL we send a signed LogoutRequest and
check its signed reply. IdP-initiated: a signed LogoutRequest ends that
NameID's sessions (narrowed by SessionIndex) through `SsoSession`, since a
cross-site POST carries no cookie, and a signed LogoutResponse answers.

Redirect binding: the signature is checked over the raw query string
(`validate_signature_from_qs`), because Entra ID and ADFS percent-encode in
lower case. POST binding: the pre-check, then `validate_sign` with the
configured certificates. A missing signature is always refused.
"""

from __future__ import annotations

import base64
import secrets
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from portal.models import MemberSession
from portal.services.audit import audit_event_record
from portal.services.registry import audit_exempt, audits
from sso.errors import SamlError
from sso.models import Binding, PendingRequest, ReplayEntry, SsoSession
from sso.services.acs import PENDING_TTL, TOKEN, _hash, _request_data
from sso.services.config import SamlContext, saml_context
from sso.services.limits import acs_rate_check, acs_rejection_count
from sso.services.xmlcheck import (
    ALLOWED_SIGNATURE_METHODS,
    LOGOUT_REQUEST,
    LOGOUT_RESPONSE,
    MAX_MESSAGE_BYTES,
    NS_DS,
    b64decode_strict,
    logout_precheck,
)


@dataclass(frozen=True)
class SloRedirect:
    url: str
    post_fields: dict[str, str] | None = None


@audits("sso.logout.started")
def saml_logout_start(*, sso_session: SsoSession | None) -> SloRedirect | None:
    """After the local sign-out: a signed LogoutRequest to the IdP, if it has SLO."""
    if sso_session is None:
        return None
    context = saml_context()
    idp = context.idp
    if idp is None or not idp.slo_url:
        return None
    token = secrets.token_urlsafe(32)
    auth = OneLogin_Saml2_Auth(
        _request_data(context, "/accounts/logout/"), context.settings
    )
    kwargs: dict[str, Any] = {
        "name_id": sso_session.name_id,
        "session_index": sso_session.session_index or None,
        "nq": sso_session.name_qualifier or None,
        "name_id_format": sso_session.name_id_format or None,
        "spnq": sso_session.sp_name_qualifier or None,
    }
    if idp.slo_binding == Binding.POST:
        request = OneLogin_Saml2_Logout_Request(context.settings, **kwargs)
        xml = OneLogin_Saml2_Utils.add_sign(
            request.get_xml(),
            context.settings.get_sp_key(),
            context.settings.get_sp_cert(),
            sign_algorithm=C.RSA_SHA256,
            digest_algorithm=C.SHA256,
        )
        request_id = request.id
        raw = xml if isinstance(xml, bytes) else xml.encode()
        result = SloRedirect(
            url=idp.slo_url,
            post_fields={
                "SAMLRequest": base64.b64encode(raw).decode(),
                "RelayState": token,
            },
        )
    else:
        url = auth.logout(return_to=token, **kwargs)
        request_id = auth.get_last_request_id()
        result = SloRedirect(url=url)
    now = timezone.now()
    PendingRequest.objects.create(
        token_hash=_hash(token),
        kind=PendingRequest.Kind.LOGOUT,
        request_id=request_id,
        created_at=now,
        expires_at=now + PENDING_TTL,
    )
    audit_event_record(
        action="sso.logout.started",
        target=sso_session.member,
        changes={"idp": idp.entity_id[:200], "request_id": request_id},
    )
    return result


def _inflate(value: str, *, deflated: bool) -> bytes:
    raw = b64decode_strict(value)
    if not deflated:
        return raw
    inflater = zlib.decompressobj(-15)
    try:
        data = inflater.decompress(raw, MAX_MESSAGE_BYTES + 1)
    except zlib.error:
        raise SamlError(
            "malformed", detail="The message is not DEFLATE-compressed."
        ) from None
    if len(data) > MAX_MESSAGE_BYTES or inflater.unconsumed_tail:
        raise SamlError("too_large")
    return data


def _redirect_signature_check(
    context: SamlContext, params: dict[str, str], query_string: str, saml_type: str
) -> None:
    if not params.get("Signature") or not params.get("SigAlg"):
        raise SamlError("signature_missing")
    if params["SigAlg"] not in ALLOWED_SIGNATURE_METHODS:
        raise SamlError(
            "forbidden_algorithm",
            expected="RSA-SHA256/384/512",
            received=params["SigAlg"][:200],
        )
    data = _request_data(context, "/sso/saml/sls/", get=params)
    data["query_string"] = query_string
    data["validate_signature_from_qs"] = True
    auth = OneLogin_Saml2_Auth(data, context.settings)
    valid = (
        auth.validate_request_signature(params)
        if saml_type == "SAMLRequest"
        else auth.validate_response_signature(params)
    )
    if not valid:
        raise SamlError("signature_invalid")


def _post_signature_check(context: SamlContext, xml: bytes, root: Any) -> None:
    """The enveloped signature of the LogoutRequest/LogoutResponse itself.

    `validate_sign` looks for `/samlp:Response/ds:Signature` unless told
    otherwise, so the XPath names the logout message's own Signature.
    """
    if root.find(f"{{{NS_DS}}}Signature") is None:
        raise SamlError("signature_missing")
    local = root.tag.rsplit("}", 1)[-1]
    idp = context.idp
    certs = [c.pem for c in idp.certificates.all()] if idp else []
    if not certs or not OneLogin_Saml2_Utils.validate_sign(
        xml,
        multicerts=certs,
        xpath=f"/samlp:{local}/ds:Signature",
        raise_exceptions=False,
    ):
        raise SamlError("signature_invalid")


@dataclass(frozen=True)
class SlsOutcome:
    """What the SLS endpoint answers."""

    redirect: SloRedirect | None
    message: str
    ended_sessions: int = 0


@audits("sso.logout.idp_initiated", "sso.logout.completed", "sso.logout.failed")
def saml_sls(
    *,
    binding: str,
    params: dict[str, str],
    query_string: str,
    ip: str | None,
    oversize: bool = False,
) -> SlsOutcome:
    """Handle an IdP's LogoutRequest or its LogoutResponse to ours.

    `oversize`: the view found the body over 256 KiB and read no further;
    it is refused after the rate check, so it counts like any other.
    """
    context: SamlContext | None = None
    saml_type = "SAMLRequest" if "SAMLRequest" in params else "SAMLResponse"
    try:
        context = saml_context()
        if context.idp is None:
            raise SamlError("sso_not_configured")
        acs_rate_check(ip=ip, endpoint="sls")
        if oversize:
            raise SamlError("too_large", expected=f"≤ {MAX_MESSAGE_BYTES} bytes")
        value = params.get(saml_type) or ""
        if not value:
            raise SamlError("malformed", detail="No SAMLRequest or SAMLResponse.")
        redirect = binding == Binding.REDIRECT
        xml = _inflate(value, deflated=redirect)
        expect = LOGOUT_REQUEST if saml_type == "SAMLRequest" else LOGOUT_RESPONSE
        checked = logout_precheck(xml, expect=expect)
        if redirect:
            _redirect_signature_check(context, params, query_string, saml_type)
        else:
            _post_signature_check(context, xml, checked.root)
        if checked.root.get("Destination") != context.sls_url:
            raise SamlError(
                "destination_mismatch",
                expected=context.sls_url,
                received=checked.root.get("Destination"),
            )
        encoded = value if redirect else base64.b64encode(xml).decode()
        request_data = _request_data(context, "/sso/saml/sls/", get=params)
        if saml_type == "SAMLRequest":
            return _idp_logout_request(
                context, encoded, request_data, params, checked.message_id
            )
        return _logout_response(context, encoded, request_data, params)
    except SamlError as error:
        acs_rejection_count(ip=ip, endpoint="sls")
        event = audit_event_record(
            action="sso.logout.failed",
            target_label="SAML logout",
            changes=error.as_changes(),
        )
        error.details["event_id"] = event.pk
        raise


def _idp_logout_request(
    context: SamlContext,
    encoded: str,
    request_data: dict[str, Any],
    params: dict[str, str],
    message_id: str,
) -> SlsOutcome:
    request = OneLogin_Saml2_Logout_Request(context.settings, encoded)
    try:
        request.is_valid(request_data, raise_exceptions=True)
    except Exception as exc:  # noqa: BLE001
        code = "issuer_mismatch" if "issuer" in str(exc).lower() else "expired"
        raise SamlError(code, detail=str(exc)[:200]) from None
    xml = request.get_xml()
    name_id = OneLogin_Saml2_Logout_Request.get_nameid(xml) or ""
    indexes = OneLogin_Saml2_Logout_Request.get_session_indexes(xml)
    idp = context.idp
    assert idp is not None  # noqa: S101 - checked by the caller
    now = timezone.now()
    with transaction.atomic():
        try:
            with transaction.atomic():
                ReplayEntry.objects.create(
                    message_id=f"l:{message_id}"[:256],
                    expires_at=now + timedelta(days=1),
                )
        except Exception:  # noqa: BLE001 - unique violation
            raise SamlError("replayed") from None
        rows = SsoSession.objects.filter(idp_entity_id=idp.entity_id, name_id=name_id)
        if indexes:
            rows = rows.filter(session_index__in=indexes)
        keys = list(rows.values_list("session_key", flat=True))
        members = set(rows.values_list("member_id", flat=True))
        Session.objects.filter(session_key__in=keys).delete()
        MemberSession.objects.filter(session_key__in=keys).delete()
        rows.delete()
        audit_event_record(
            action="sso.logout.idp_initiated",
            target_label="SAML logout",
            changes={
                "idp": idp.entity_id[:200],
                "name_id": name_id[:200],
                "sessions_ended": len(keys),
                "members": sorted(members),
            },
        )
    builder = OneLogin_Saml2_Logout_Response(context.settings)
    builder.build(request.id)
    target = idp.slo_url or idp.sso_url
    if idp.slo_binding == Binding.POST:
        signed = OneLogin_Saml2_Utils.add_sign(
            builder.get_xml(),
            context.settings.get_sp_key(),
            context.settings.get_sp_cert(),
            sign_algorithm=C.RSA_SHA256,
            digest_algorithm=C.SHA256,
        )
        raw = signed if isinstance(signed, bytes) else signed.encode()
        fields = {"SAMLResponse": base64.b64encode(raw).decode()}
        if params.get("RelayState"):
            fields["RelayState"] = params["RelayState"]
        redirect = SloRedirect(url=target, post_fields=fields)
    else:
        parameters: dict[str, str] = {"SAMLResponse": builder.get_response()}
        if params.get("RelayState"):
            parameters["RelayState"] = params["RelayState"]
        auth = OneLogin_Saml2_Auth(request_data, context.settings)
        auth.add_response_signature(parameters, C.RSA_SHA256)
        redirect = SloRedirect(url=auth.redirect_to(target, parameters))
    return SlsOutcome(redirect=redirect, message="signed out", ended_sessions=len(keys))


def _logout_response(
    context: SamlContext,
    encoded: str,
    request_data: dict[str, Any],
    params: dict[str, str],
) -> SlsOutcome:
    token = params.get("RelayState") or ""
    pending = None
    if TOKEN.match(token):
        pending = PendingRequest.objects.filter(
            token_hash=_hash(token),
            kind=PendingRequest.Kind.LOGOUT,
            expires_at__gt=timezone.now(),
        ).first()
    if pending is None:
        raise SamlError("request_unknown", detail="No sign-out request matches.")
    deleted, _ = PendingRequest.objects.filter(pk=pending.pk).delete()
    if not deleted:
        raise SamlError("replayed")
    response = OneLogin_Saml2_Logout_Response(context.settings, encoded)
    try:
        response.is_valid(
            request_data, request_id=pending.request_id, raise_exceptions=True
        )
    except Exception as exc:  # noqa: BLE001
        raise SamlError("request_unknown", detail=str(exc)[:200]) from None
    if response.get_in_response_to() != pending.request_id:
        raise SamlError(
            "request_unknown",
            expected=pending.request_id,
            received=response.get_in_response_to(),
        )
    success = response.get_status() == C.STATUS_SUCCESS
    audit_event_record(
        action="sso.logout.completed",
        target_label="SAML logout",
        changes={"request_id": pending.request_id, "idp_status": response.get_status()},
    )
    message = (
        "You are signed out here and at your identity provider."
        if success
        else "You are signed out here, but your identity provider could not end "
        "its session. Close the browser to be sure."
    )
    return SlsOutcome(redirect=None, message=message)


@audit_exempt("read: the IdP session behind a Django session")
def sso_session_for(*, session_key: str | None) -> SsoSession | None:
    if not session_key:
        return None
    return (
        SsoSession.objects.filter(session_key=session_key)
        .select_related("member")
        .first()
    )


@audit_exempt("removes the index row of a session that ended")
def sso_session_forget(*, session_key: str) -> None:
    SsoSession.objects.filter(session_key=session_key).delete()
