"""Forms check the shape of input; services apply the rules."""

from __future__ import annotations

from django import forms

from portal.roles import Role

BULK_ACTIONS = [
    ("grant_seat", "Grant seat"),
    ("revoke_seat", "Revoke seat"),
    ("deactivate", "Deactivate"),
    ("reactivate", "Reactivate"),
    ("change_role", "Change role"),
    ("add_group", "Add to group"),
    ("remove_group", "Remove from group"),
]


class LoginForm(forms.Form):
    username = forms.CharField(label="Email", max_length=254)
    password = forms.CharField(
        label="Password", widget=forms.PasswordInput, strip=False
    )


class MemberCreateForm(forms.Form):
    email = forms.EmailField(max_length=254)
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)
    grant_seat = forms.BooleanField(required=False, label="Grant a seat now")


class MemberEditForm(forms.Form):
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    employee_id = forms.CharField(max_length=128, required=False)
    job_title = forms.CharField(max_length=200, required=False)
    department = forms.CharField(max_length=200, required=False)
    location = forms.CharField(max_length=200, required=False)
    managed_by_edi = forms.BooleanField(
        required=False, label="Managed by employee data files"
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class BulkForm(forms.Form):
    action = forms.ChoiceField(choices=BULK_ACTIONS)
    ids = forms.CharField(required=False)
    scope = forms.ChoiceField(
        choices=[("selected", "Ticked rows"), ("all", "All matching")],
        initial="selected",
    )
    role = forms.ChoiceField(choices=Role.choices, required=False)
    group = forms.CharField(max_length=200, required=False)
    confirm = forms.CharField(max_length=100, required=False)
    idempotency_key = forms.CharField(max_length=64, required=False)

    def clean_ids(self) -> list[int]:
        raw = self.cleaned_data.get("ids") or ""
        values = [part for part in raw.replace(",", " ").split() if part]
        try:
            return sorted({int(part) for part in values})
        except ValueError:
            raise forms.ValidationError("Bad selection.") from None
