"""The API base view and the one error format (STYLE.md "APIs").

Every tenant API class subclasses `TenantApiView`: authentication (session
now, tokens from other apps), the member's capability, refusal on the public
schema, and errors rendered as
`{"error": {"code", "message", "details"}}` by `exception_handler`.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.db import current_schema
from portal.errors import ApplicationError
from portal.permissions import HasCapability

_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "throttled",
}


def _error(code: str, message: str, details: Any, status_code: int) -> Response:
    return Response(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status=status_code,
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return _error(exc.code, exc.message, exc.details, exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    status_code = exc.status_code
    details: Any = {}
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail
        message = "Some fields are invalid."
        code = "invalid"
    else:
        message = str(exc.detail)
        code = _CODES.get(status_code, "error")
    response = _error(code, message, details, status_code)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response["WWW-Authenticate"] = 'Session realm="portal"'
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled) and wait is not None:
        response["Retry-After"] = str(int(wait))
    return response


class PortalSessionAuthentication(SessionAuthentication):
    """Session auth that answers 401 (not 403) to anonymous callers."""

    def authenticate_header(self, request: Request) -> str:
        return 'Session realm="portal"'


class PortalSessionScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    """Describes the session cookie in the OpenAPI document."""

    target_class = "portal.api.PortalSessionAuthentication"
    name = "sessionCookie"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


# Other apps (EDI tokens) add token authentication classes here.
TOKEN_AUTHENTICATION_CLASSES: list[type] = []


class TenantApiView(APIView):
    required_capability: str | None = None
    capability_map: dict[str, str] = {}
    permission_classes = [HasCapability]

    def get_authenticators(self) -> list[Any]:
        classes = [*TOKEN_AUTHENTICATION_CLASSES, PortalSessionAuthentication]
        return [cls() for cls in classes]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if current_schema() == "public":
            raise exceptions.NotFound()
        super().initial(request, *args, **kwargs)

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        if (
            not request.successful_authenticator
            or getattr(request._request, "member", None) is None
        ):
            raise exceptions.NotAuthenticated()
        raise exceptions.PermissionDenied(detail=message, code=code)


ACCEPTED = status.HTTP_202_ACCEPTED


class MeApi(TenantApiView):
    """The signed-in person."""

    required_capability = "api.me"

    @extend_schema_serializer(component_name="Me")
    class OutputSerializer(serializers.Serializer):
        email = serializers.EmailField()
        name = serializers.CharField()
        role = serializers.CharField()
        auth_method = serializers.CharField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request) -> Response:
        member = request._request.member  # type: ignore[attr-defined]
        auth_method = (
            request.session.get("auth_method", "password")
            if hasattr(request, "session")
            else "password"
        )
        return Response(
            self.OutputSerializer(
                {
                    "email": member.email,
                    "name": member.name,
                    "role": member.role,
                    "auth_method": auth_method
                    if auth_method in ("password", "saml")
                    else "password",
                }
            ).data
        )


class JobDetailApi(TenantApiView):
    """A job's status and progress (polled by the progress bar)."""

    required_capability = "jobs.view"

    @extend_schema_serializer(component_name="Job")
    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        kind = serializers.CharField()
        status = serializers.CharField()
        progress_done = serializers.IntegerField()
        progress_total = serializers.IntegerField(allow_null=True)
        percent = serializers.IntegerField(allow_null=True)
        message = serializers.CharField()
        error = serializers.CharField()
        result = serializers.DictField()
        created_at = serializers.DateTimeField()
        finished_at = serializers.DateTimeField(allow_null=True)
        download_url = serializers.SerializerMethodField()

        def get_download_url(self, job: Any) -> str | None:
            if job.status == "succeeded" and "filename" in job.result:
                return f"/jobs/{job.pk}/download/"
            return None

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        from portal.selectors.jobs import job_get

        job = job_get(job_id=str(job_id), viewer=request._request.member)  # type: ignore[attr-defined]
        return Response(self.OutputSerializer(job).data)


class MemberListApi(TenantApiView):
    """Members of this organisation, filtered like /members/, keyset-paged."""

    required_capability = "members.view"

    @extend_schema_serializer(component_name="Member")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        email = serializers.EmailField()
        employee_id = serializers.CharField()
        first_name = serializers.CharField()
        last_name = serializers.CharField()
        status = serializers.CharField()
        has_seat = serializers.BooleanField()
        role = serializers.CharField()
        source = serializers.CharField()  # type: ignore[assignment]
        last_sign_in_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        from portal.selectors.members import MemberFilters, member_list

        filters = MemberFilters.from_query(request.query_params)
        page = member_list(filters=filters, cursor=request.query_params.get("after"))
        return Response(
            {
                "results": self.OutputSerializer(page.items, many=True).data,
                "next": page.next_cursor,
            }
        )


class MemberDetailApi(TenantApiView):
    required_capability = "members.view"

    @extend_schema(responses=MemberListApi.OutputSerializer)
    def get(self, request: Request, member_id: int) -> Response:
        from portal.selectors.members import member_get

        member = member_get(member_id=member_id)
        return Response(MemberListApi.OutputSerializer(member).data)


class AuditExportApi(TenantApiView):
    """Start an audit CSV export job (`Idempotency-Key` honoured)."""

    required_capability = "audit.view"

    @extend_schema_serializer(component_name="AuditExportRequest")
    class InputSerializer(serializers.Serializer):
        since = serializers.DateField(required=False)
        until = serializers.DateField(required=False)
        actor = serializers.CharField(required=False, max_length=200)
        action = serializers.CharField(required=False, max_length=200)
        target = serializers.CharField(required=False, max_length=200)
        source = serializers.CharField(  # type: ignore[assignment]
            required=False, max_length=20
        )
        request_id = serializers.CharField(required=False, max_length=64)

    @extend_schema(
        request=InputSerializer, responses={202: JobDetailApi.OutputSerializer}
    )
    def post(self, request: Request) -> Response:
        from portal.services.audit import audit_export_request

        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        filters = {k: str(v) for k, v in serializer.validated_data.items()}
        job = audit_export_request(
            actor=request._request.member,  # type: ignore[attr-defined]
            filters=filters,
            idempotency_key=request.headers.get("Idempotency-Key", "")[:200],
        )
        return Response(JobDetailApi.OutputSerializer(job).data, status=ACCEPTED)
