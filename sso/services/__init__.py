"""SSO services: the SAML service provider of one tenant (specs/sso.md).

Split by sub-domain: `xmlcheck` (the pre-check), `config` (IdP, policies,
python3-saml settings), `keys` (SP keys), `fetch` (SSRF-safe metadata
fetch), `identity` (linking, JIT, roles), `acs` (login start, ACS, finish),
`slo` (single logout), `limits` (rate limits) and `maintenance` (scheduled
work and the hooks for the portal core). This module re-exports what views,
tasks and commands call, plus the page context and the refusal record.
"""

from __future__ import annotations

from typing import Any

from portal.models import Member
from portal.roles import Role, can
from portal.services.registry import audit_exempt
from sso.errors import REASONS
from sso.models import NameIdFormat, Preset
from sso.services.acs import (
    finish_ticket_flow,
    saml_acs,
    saml_finish,
    saml_login_start,
    sso_session_record,
    test_run_get,
)
from sso.services.config import (
    PRESETS,
    fingerprint_display,
    group_mappings_set,
    idp_certificate_remove,
    idp_configure_from_metadata,
    idp_configure_manual,
    idp_get,
    idp_policies_set,
    idp_test_is_fresh,
    saml_context,
    sp_metadata_xml,
    sp_urls,
)
from sso.services.identity import sso_link_reset
from sso.services.keys import (
    sp_key_activate,
    sp_key_ensure,
    sp_key_list,
    sp_key_prepare_next,
)
from sso.services.maintenance import certificates_expiring, idp_configure_from_url
from sso.services.slo import (
    saml_logout_start,
    saml_sls,
    sso_session_for,
    sso_session_forget,
)

__all__ = [
    "PRESETS",
    "REASONS",
    "certificates_expiring",
    "finish_ticket_flow",
    "fingerprint_display",
    "group_mappings_set",
    "idp_certificate_remove",
    "idp_configure_from_metadata",
    "idp_configure_from_url",
    "idp_configure_manual",
    "idp_get",
    "idp_policies_set",
    "saml_acs",
    "saml_finish",
    "saml_login_start",
    "saml_logout_start",
    "saml_sls",
    "sp_key_activate",
    "sp_key_prepare_next",
    "sp_metadata_xml",
    "sso_link_reset",
    "sso_page_context",
    "sso_session_for",
    "sso_session_forget",
    "sso_session_record",
    "test_run_get",
]


@audit_exempt("read: the canonical origin")
def tenant_origin_url() -> str:
    return saml_context().origin


@audit_exempt("read: the primary domain with its port, as in the ACS URL")
def primary_host() -> str:
    from urllib.parse import urlsplit

    return urlsplit(saml_context().origin).netloc.lower()


@audit_exempt("read: builds the SSO page")
def sso_page_context(*, viewer: Member) -> dict[str, Any]:
    """Everything the `/sso/` page shows; creates the SP key on the first visit."""
    sp_key_ensure()
    context = saml_context()
    idp = context.idp
    urls = sp_urls(context.origin)
    certificates = list(idp.certificates.all()) if idp else []
    mappings = list(idp.group_mappings.all()) if idp else []
    keys = sp_key_list()
    return {
        "idp": idp,
        "urls": urls,
        "metadata_url": f"{context.origin}/sso/saml/metadata/",
        "certificates": [
            {"row": c, "display": fingerprint_display(c.fingerprint)}
            for c in certificates
        ],
        "has_next_key": any(k.state == "next" for k in keys),
        "sp_keys": [
            {"row": k, "display": fingerprint_display(k.fingerprint)} for k in keys
        ],
        "mappings_text": "\n".join(f"{m.group} = {m.role}" for m in mappings),
        "domains_text": "\n".join(idp.allowed_email_domains) if idp else "",
        "can_edit": can(viewer, "sso.edit"),
        "test_fresh": bool(idp and idp_test_is_fresh(idp)),
        "expiring": certificates_expiring(),
        "presets": PRESETS,
        "name_id_choices": NameIdFormat.choices,
        "preset_choices": Preset.choices,
        "role_choices": [(v, label) for v, label in Role.choices if v != Role.OWNER],
        "reasons": REASONS,
    }
