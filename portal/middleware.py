"""Request plumbing: request id and actor context, health, CSP, member."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

from portal import context
from portal.db import current_schema

Handler = Callable[[HttpRequest], HttpResponse]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9-]{8,64}$")


def client_ip(request: HttpRequest) -> str | None:
    """The client's IP; X-Forwarded-For only from configured proxies."""
    remote = request.META.get("REMOTE_ADDR") or None
    trusted = settings.PORTAL_TRUSTED_PROXIES
    if remote and trusted and remote in trusted:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        while hops and hops[-1] in trusted:
            hops.pop()
        if hops:
            remote = hops[-1]
    try:
        return str(ipaddress.ip_address(remote)) if remote else None
    except ValueError:
        return None


class HealthCheckMiddleware:
    """`/healthz` and `/readyz` answer on every host, before anything else."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return HttpResponse("ok", content_type="text/plain")
        if request.path == "/readyz":
            from portal.health import readiness

            problems = readiness()
            if problems:
                return HttpResponse(
                    "not ready: " + ", ".join(problems),
                    status=503,
                    content_type="text/plain",
                )
            return HttpResponse("ok", content_type="text/plain")
        return self.get_response(request)


class RequestContextMiddleware:
    """Give each request an id (returned as X-Request-ID) and an audit context."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else str(uuid.uuid4())
        request.request_id = request_id  # type: ignore[attr-defined]
        is_api = request.path.startswith("/api/")
        token = context.set_for_request(
            context.ActorContext(
                actor_type="anonymous",
                ip=client_ip(request),
                user_agent=request.META.get("HTTP_USER_AGENT", "")[:400],
                request_id=request_id,
                source="api"
                if is_api
                else ("viewer" if request.path.startswith("/p/") else "web"),
            )
        )
        try:
            response = self.get_response(request)
        finally:
            context.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ContentSecurityPolicyMiddleware:
    """PORTAL-28: a strict CSP on HTML; views may widen it per response."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response and response.get(
            "Content-Type", ""
        ).startswith("text/html"):
            response["Content-Security-Policy"] = settings.PORTAL_CSP
        return response


class MemberMiddleware:
    """Attach `request.member` on tenant hosts; sign out deactivated people.

    A session whose member was deactivated (or whose user belongs to no
    member) is ended on its next request (PORTAL-09).
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.member = None  # type: ignore[attr-defined]
        user = getattr(request, "user", None)
        if current_schema() != "public" and user is not None and user.is_authenticated:
            from portal.models import MemberStatus
            from portal.selectors.members import member_for_user

            member = member_for_user(user=user)
            if member is None or member.status == MemberStatus.DEACTIVATED:
                logout(request)
            else:
                request.member = member  # type: ignore[attr-defined]
                ctx = context.current()
                context.set_for_request(
                    context.ActorContext(
                        actor_type="member",
                        actor_id=str(member.pk),
                        actor_label=member.email,
                        ip=ctx.ip,
                        user_agent=ctx.user_agent,
                        request_id=ctx.request_id,
                        source=ctx.source,
                    )
                )
        elif (
            current_schema() == "public" and user is not None and user.is_authenticated
        ):
            ctx = context.current()
            context.set_for_request(
                context.ActorContext(
                    actor_type="operator",
                    actor_id=str(user.pk),
                    actor_label=str(user.get_username()),
                    ip=ctx.ip,
                    user_agent=ctx.user_agent,
                    request_id=ctx.request_id,
                    source=ctx.source,
                )
            )
        return self.get_response(request)


class ApplicationErrorMiddleware:
    """Render a service's NotFound / PermissionDenied on pages as 404 / 403."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        from django.shortcuts import render

        from portal.errors import ApplicationError

        if not isinstance(exception, ApplicationError):
            return None
        template = {404: "404.html", 403: "403.html"}.get(exception.status, "400.html")
        return render(
            request, template, {"message": exception.message}, status=exception.status
        )
