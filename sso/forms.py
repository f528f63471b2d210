"""Forms of the `/sso/` pages: they check shape; services apply the rules."""

from __future__ import annotations

from django import forms

from portal.roles import Role
from sso.models import GroupMatch, NameIdFormat, Preset

MAPPABLE_ROLES = [
    (value, label) for value, label in Role.choices if value != Role.OWNER
]


class MetadataUploadForm(forms.Form):
    metadata = forms.FileField(label="IdP metadata XML file")


class MetadataUrlForm(forms.Form):
    url = forms.URLField(
        label="IdP metadata URL", max_length=2048, assume_scheme="https"
    )


class ManualIdpForm(forms.Form):
    entity_id = forms.CharField(label="IdP entity ID (Issuer)", max_length=1024)
    sso_url = forms.URLField(
        label="Single sign-on URL", max_length=2048, assume_scheme="https"
    )
    slo_url = forms.URLField(
        label="Single logout URL (optional)",
        max_length=2048,
        required=False,
        assume_scheme="https",
    )
    certificate = forms.CharField(
        label="Signing certificate (PEM)", widget=forms.Textarea(attrs={"rows": 6})
    )
    certificate_2 = forms.CharField(
        label="Second signing certificate (optional, during a rollover)",
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
    )


class PoliciesForm(forms.Form):
    allow_idp_initiated = forms.BooleanField(
        required=False, label="Allow sign-in started from the IdP's app dashboard"
    )
    landing_path = forms.CharField(
        max_length=500, initial="/", label="Landing page after IdP-initiated sign-in"
    )
    jit_enabled = forms.BooleanField(
        required=False, label="Create members on first sign-in (just-in-time)"
    )
    allowed_email_domains = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Email domains of your people (one per line)",
    )
    name_id_format = forms.ChoiceField(
        choices=NameIdFormat.choices, label="NameID format to ask for"
    )
    sign_authn_requests = forms.BooleanField(
        required=False, label="Sign authentication requests"
    )
    want_assertions_encrypted = forms.BooleanField(
        required=False, label="Require encrypted assertions (AES-GCM, RSA-OAEP)"
    )
    signed_response_suffices = forms.BooleanField(
        required=False, label="Accept a signed Response without a signed assertion"
    )


class EnforceForm(forms.Form):
    enforce_sso = forms.BooleanField(
        required=False, label="Require SSO for everyone but owners"
    )


class AttributesForm(forms.Form):
    preset = forms.ChoiceField(choices=Preset.choices, label="Identity provider type")
    email_attribute = forms.CharField(max_length=255, required=False, label="Email")
    first_name_attribute = forms.CharField(
        max_length=255, required=False, label="First name"
    )
    last_name_attribute = forms.CharField(
        max_length=255, required=False, label="Last name"
    )
    groups_attribute = forms.CharField(max_length=255, required=False, label="Groups")
    immutable_id_attribute = forms.CharField(
        max_length=255, required=False, label="Immutable ID (optional)"
    )
    employee_id_attribute = forms.CharField(
        max_length=255, required=False, label="Employee ID (optional)"
    )


class RoleMappingForm(forms.Form):
    role_mapping_enabled = forms.BooleanField(
        required=False,
        label="Set each person's role from their groups at every sign-in",
    )
    group_match = forms.ChoiceField(
        choices=GroupMatch.choices, label="Match group names"
    )
    group_required = forms.BooleanField(
        required=False, label="Refuse sign-in when no group matches"
    )
    default_role = forms.ChoiceField(
        choices=MAPPABLE_ROLES, label="Role when no group matches"
    )
    mappings = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        label="Group = role, one per line (e.g. “Sales Admins = admin”)",
    )

    def clean_mappings(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        roles = {value for value, _ in MAPPABLE_ROLES}
        for number, line in enumerate(self.cleaned_data["mappings"].splitlines(), 1):
            if not line.strip():
                continue
            group, sep, role = line.rpartition("=")
            role = role.strip().lower().replace(" ", "_").replace("-", "_")
            if not sep or not group.strip() or role not in roles:
                raise forms.ValidationError(
                    f"Line {number}: write “group = role”, the role one of "
                    + ", ".join(sorted(roles))
                    + "."
                )
            rows.append((group.strip(), role))
        return rows
