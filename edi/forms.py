"""Forms of the `/edi/` pages: they check input's shape; services the rules."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms

from edi.models import AutoProvisionRule, EdiMode, EdiToken
from edi.services.admin import INVALID_ROWS_RANGE, RETENTION_RANGE, THRESHOLD_RANGE

TOKEN_LIFETIMES = [
    ("30", "30 days"),
    ("90", "90 days"),
    ("180", "180 days"),
    ("365", "1 year"),
    ("730", "2 years"),
]
SCOPE_LABELS = {
    "edi:write": "edi:write: upload files",
    "edi:read": "edi:read: read files and results",
}


class UploadForm(forms.Form):
    """The non-file fields of an upload; the file streams to the spool."""

    mode = forms.ChoiceField(
        choices=EdiMode.choices,
        label="Mode",
        help_text="Full deactivates members missing from the file; delta "
        "changes only the rows it lists.",
    )
    dry_run = forms.BooleanField(
        required=False,
        initial=True,
        label="Preview first (nothing changes until you apply)",
    )


class SettingsForm(forms.Form):
    default_mode = forms.ChoiceField(
        choices=EdiMode.choices,
        label="Default mode",
        help_text="For SFTP files whose name starts with neither full nor delta, "
        "and HTTPS uploads without mode=.",
    )
    deactivation_threshold_percent = forms.IntegerField(
        min_value=THRESHOLD_RANGE[0],
        max_value=THRESHOLD_RANGE[1],
        label="Hold a file that deactivates or revokes more than (%)",
        help_text="Of active members or seats. 0 holds every deactivation; "
        "100 never holds.",
    )
    invalid_rows_percent = forms.IntegerField(
        min_value=INVALID_ROWS_RANGE[0],
        max_value=INVALID_ROWS_RANGE[1],
        label="Reject a file with more invalid rows than (%)",
    )
    retention_days = forms.IntegerField(
        min_value=RETENTION_RANGE[0],
        max_value=RETENTION_RANGE[1],
        label="Keep raw files and results for (days)",
        help_text="Then they are deleted; the file's row, SHA-256 and counts stay.",
    )


class _Ids(forms.Form):
    """Several forms share the settings page: each gets its own ids."""

    id_prefix = "id"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"{self.id_prefix}_%s")
        super().__init__(*args, **kwargs)


class RuleForm(_Ids):
    id_prefix = "rule"

    field = forms.ChoiceField(choices=AutoProvisionRule.Field.choices, label="Rule")
    value = forms.CharField(
        max_length=200, label="Department or group name", strip=True
    )


class SftpKeyForm(_Ids):
    id_prefix = "key"

    name = forms.CharField(
        max_length=100,
        required=False,
        label="Key name (optional)",
        help_text="Defaults to the key's comment.",
    )
    public_key = forms.CharField(
        label="OpenSSH public key",
        max_length=16 * 1024,
        widget=forms.Textarea(attrs={"rows": 3}),
        strip=True,
        help_text="One line from the .pub file, e.g. ssh-ed25519 AAAA… hr@example. "
        "Ed25519, ECDSA or RSA of at least 2,048 bits.",
    )


class TokenForm(_Ids):
    id_prefix = "token"

    name = forms.CharField(max_length=100, label="Token name", strip=True)
    scopes = forms.MultipleChoiceField(
        choices=[(scope, SCOPE_LABELS[scope]) for scope in EdiToken.SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=list(EdiToken.SCOPES),
        label="Scopes",
        error_messages={"required": "Tick at least one scope."},
    )
    lifetime_days = forms.TypedChoiceField(
        choices=TOKEN_LIFETIMES, coerce=int, initial="365", label="Expires after"
    )

    def lifetime(self) -> timedelta:
        return timedelta(days=int(self.cleaned_data["lifetime_days"]))


class IdForm(forms.Form):
    """A row to remove or revoke."""

    id = forms.IntegerField(min_value=1)
