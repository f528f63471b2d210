"""Login throttling and the per-member session index (PORTAL-09, PORTAL-29)."""

from __future__ import annotations

from django.db import models


class LoginFailure(models.Model):
    username = models.CharField(max_length=254)
    ip = models.GenericIPAddressField(null=True, blank=True)
    occurred_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["username", "-occurred_at"], name="portal_loginfail_user"
            ),
            models.Index(fields=["ip", "-occurred_at"], name="portal_loginfail_ip"),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.occurred_at}"


class MemberSession(models.Model):
    member = models.ForeignKey(
        "portal.Member", on_delete=models.CASCADE, related_name="sessions"
    )
    session_key = models.CharField(max_length=40, unique=True)
    auth_method = models.CharField(max_length=10, default="password")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.member_id}:{self.session_key[:6]}"
