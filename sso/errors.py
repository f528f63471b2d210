"""SAML failure reasons: one code, one HTTP status, one admin-facing fix.

Every rejection raises `SamlError(code, expected=…, received=…)`. The
message an admin reads (on the audit event and in test mode) says what the
portal expected, what the IdP sent, and what to change in the IdP (SSO-F16).
The person signing in sees only the code and an event reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portal.errors import ApplicationError


@dataclass(frozen=True)
class Reason:
    status: int
    summary: str
    fix: str


REASONS: dict[str, Reason] = {
    "sso_not_configured": Reason(
        404,
        "Single sign-on is not set up for this portal.",
        "An owner or admin connects the identity provider on the SSO page.",
    ),
    "too_large": Reason(
        413,
        "The SAML message is larger than 256 KiB.",
        "Send fewer attributes or groups in the assertion (Entra ID: emit only "
        "the groups assigned to the application).",
    ),
    "rate_limited": Reason(
        429,
        "Too many sign-in attempts from this address. Wait a minute.",
        "Nothing to change in the IdP; the limit resets within a minute.",
    ),
    "malformed": Reason(
        400,
        "The SAML message is not valid base64-encoded XML.",
        "Make sure the IdP posts the SAMLResponse with the HTTP-POST binding.",
    ),
    "dtd_forbidden": Reason(
        400,
        "The SAML message contains a DOCTYPE, which is never allowed.",
        "SAML messages never need a DOCTYPE; contact the IdP vendor.",
    ),
    "forbidden_algorithm": Reason(
        400,
        "The message uses a signature, digest, transform or encryption "
        "algorithm this portal does not accept.",
        "Sign with RSA-SHA256 and a SHA-256 digest (exclusive C14N); encrypt, "
        "if at all, with AES-GCM and RSA-OAEP.",
    ),
    "bad_structure": Reason(
        400,
        "The SAML Response does not have the structure this portal accepts "
        "(exactly one assertion, one reference per signature).",
        "Send one assertion per Response, signed with one reference to it.",
    ),
    "signature_missing": Reason(
        403,
        "The assertion is not signed.",
        "Turn on assertion signing in the IdP (Okta: 'Assertion Signature: "
        "Signed'; Entra ID: signing option 'Sign SAML assertion' or 'Sign SAML "
        "response and assertion').",
    ),
    "signature_invalid": Reason(
        403,
        "The signature does not verify with any configured IdP certificate.",
        "Upload the IdP's current signing certificate (or fresh metadata) on "
        "the SSO page, and sign with RSA-SHA256.",
    ),
    "issuer_mismatch": Reason(
        403,
        "The Issuer is not the configured IdP entity ID.",
        "Set the IdP entity ID on the SSO page to the IdP's Issuer (from its "
        "metadata).",
    ),
    "audience_mismatch": Reason(
        403,
        "The assertion's Audience does not name this portal.",
        "Set the application's Identifier (Entity ID / Audience URI) to this "
        "portal's entity ID.",
    ),
    "destination_mismatch": Reason(
        403,
        "The Response's Destination or the assertion's Recipient is not this "
        "portal's ACS URL.",
        "Set the application's Reply URL / ACS URL / Single sign-on URL to "
        "this portal's ACS URL exactly.",
    ),
    "expired": Reason(
        403,
        "The assertion has expired.",
        "Check the IdP server's clock (NTP) and retry the sign-in.",
    ),
    "not_yet_valid": Reason(
        403,
        "The assertion is not valid yet.",
        "Check the IdP server's clock (NTP).",
    ),
    "request_unknown": Reason(
        403,
        "The Response answers a sign-in request this portal does not know or "
        "that expired (10 minutes).",
        "Start the sign-in again from the portal.",
    ),
    "unsolicited_response": Reason(
        403,
        "An IdP-initiated Response claims to answer a request (InResponseTo).",
        "IdP-initiated Responses must not carry InResponseTo; start from the "
        "portal, or fix the IdP.",
    ),
    "idp_initiated_disabled": Reason(
        403,
        "Sign-in started at the IdP is switched off for this portal.",
        "Start at the portal's sign-in page, or an admin allows IdP-initiated "
        "sign-in on the SSO page.",
    ),
    "replayed": Reason(
        403,
        "This Response was already used.",
        "Start a new sign-in; a Response can be used once.",
    ),
    "state_mismatch": Reason(
        403,
        "The sign-in did not finish in the browser that started it.",
        "Start the sign-in again in one browser window.",
    ),
    "encryption_required": Reason(
        403,
        "The portal requires encrypted assertions and this one was not.",
        "Turn on assertion encryption in the IdP with this portal's encryption "
        "certificate (AES-GCM, RSA-OAEP), or switch encryption off here.",
    ),
    "decryption_failed": Reason(
        403,
        "The encrypted assertion could not be decrypted with this portal's key.",
        "Load this portal's current SP metadata (encryption certificate) into the IdP.",
    ),
    "idp_status": Reason(
        403,
        "The IdP answered with an error status instead of an assertion.",
        "Check the IdP's sign-in logs: the user may not be assigned to the "
        "application.",
    ),
    "identity_unresolved": Reason(
        403,
        "The NameID is transient and no immutable ID attribute is configured.",
        "Send a persistent or email NameID, or configure an immutable ID "
        "attribute (Entra ID: objectidentifier).",
    ),
    "attribute_missing": Reason(
        403,
        "The assertion lacks the email attribute.",
        "Add the email claim to the application's attribute statements, or "
        "correct the attribute name on the SSO page.",
    ),
    "email_domain_not_allowed": Reason(
        403,
        "The person's email domain is not on this portal's SSO domain list.",
        "Add the domain on the SSO page, or correct the email the IdP sends.",
    ),
    "user_unknown": Reason(
        403,
        "No member matches this person, and just-in-time provisioning is off.",
        "Add the person as a member (or via EDI), or turn on just-in-time "
        "provisioning.",
    ),
    "identity_conflict": Reason(
        403,
        "The member is already linked to a different IdP identity.",
        "If the person's IdP account changed, an admin resets the SSO link on "
        "the member's page.",
    ),
    "member_deactivated": Reason(
        403,
        "The member is deactivated.",
        "An admin reactivates the member first; SSO never reactivates.",
    ),
    "groups_overage": Reason(
        403,
        "Entra ID sent a groups overage claim instead of the groups.",
        "In the Entra ID application, emit only 'Groups assigned to the application'.",
    ),
    "no_matching_group": Reason(
        403,
        "None of the person's groups maps to a portal role, and a match is required.",
        "Assign the person to a mapped group, or add a mapping on the SSO page.",
    ),
}


class SamlError(ApplicationError):
    """A SAML failure with its reason code, expected and received values."""

    def __init__(
        self,
        code: str,
        *,
        expected: Any = None,
        received: Any = None,
        detail: str = "",
    ) -> None:
        reason = REASONS[code]
        self.reason = reason
        self.expected = expected
        self.received = received
        self.detail = detail
        super().__init__(reason.summary, code=code, status=reason.status)

    def admin_message(self) -> str:
        """The full explanation: what was expected, what arrived, the fix."""
        parts = [self.reason.summary]
        if self.detail:
            parts.append(self.detail)
        if self.expected is not None:
            parts.append(f"Expected: {self.expected}.")
        if self.received is not None:
            parts.append(f"Received: {self.received}.")
        parts.append(f"Fix: {self.reason.fix}")
        return " ".join(parts)

    def as_changes(self) -> dict[str, Any]:
        return {
            "reason": self.code,
            "expected": _short(self.expected),
            "received": _short(self.received),
            "message": self.admin_message()[:1000],
        }


def _short(value: Any) -> Any:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:300]
