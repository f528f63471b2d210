"""Console forms: shape only; the services apply the rules."""

from __future__ import annotations

from django import forms


class TenantCreateForm(forms.Form):
    slug = forms.CharField(
        max_length=40, help_text="Lowercase letters, digits, hyphens."
    )
    name = forms.CharField(max_length=200)
    owner_email = forms.EmailField()
    domain = forms.CharField(
        max_length=253, required=False, help_text="Optional extra host."
    )
    seat_limit = forms.IntegerField(min_value=0, required=False)


class SeatLimitForm(forms.Form):
    seat_limit = forms.IntegerField(min_value=0, required=False)


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=500)


class RetireForm(forms.Form):
    reason = forms.CharField(max_length=500)
    confirm_slug = forms.CharField(max_length=40, label="Type the tenant's slug")
