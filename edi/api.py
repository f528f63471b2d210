"""EDI over HTTPS: `/api/v1/edi/files/` (DESIGN.md, edi.md EDI-C2).

HR systems send a CSV with `Authorization: Bearer edi_…`; tenant admins
may read the same endpoints with their session. A token acts as no member:
its scopes decide (`edi:write` to upload, `edi:read` to read), and the
audit log names the token. The body is streamed into the spool by
`edi.serializers` (size refused before reading, chunked bodies cut at the
limit), then handed to `edi_file_receive` like every other channel's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import StreamingHttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request
from rest_framework.response import Response

from edi.models import EdiFile, EdiMode, EdiSource, EdiToken
from edi.selectors import InvalidCursor, edi_file_get, edi_file_page
from edi.serializers import (
    MULTIPART_TYPE,
    EdiFileSerializer,
    file_detail_path,
    upload_media_type,
    upload_receive_body,
)
from edi.services.receive import edi_file_receive
from edi.services.tokens import TOKEN_PREFIX, TokenRefused, edi_token_authenticate
from portal import context
from portal.api import ACCEPTED, PortalSessionAuthentication, TenantApiView
from portal.errors import ApplicationError, Conflict

READ_SCOPE = "edi:read"
WRITE_SCOPE = "edi:write"
MAX_IDEMPOTENCY_KEY_LENGTH = 200
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


# --------------------------------------------------------------------------
# Authentication


class BearerRefused(TokenRefused, exceptions.AuthenticationFailed):
    """A refused token, as DRF expects it from an authenticator.

    The portal's exception handler renders it as the `ApplicationError` it
    also is (`invalid_token`, `token_expired`, `token_revoked`).
    """


class EdiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer edi_…`: an EDI token of this tenant.

    Registered in `portal.api.TOKEN_AUTHENTICATION_CLASSES` by
    `EdiConfig.ready()`. Elsewhere it claims only credentials that start
    with `edi_`; the EDI endpoints claim every bearer credential, so that a
    wrong one is refused (and audited) rather than ignored.
    """

    def __init__(self, *, any_bearer: bool = False) -> None:
        self.any_bearer = any_bearer

    def authenticate(self, request: Request) -> tuple[AnonymousUser, EdiToken] | None:
        scheme, _, credential = get_authorization_header(request).partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        try:
            text = credential.strip().decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if not self.any_bearer and not text.startswith(TOKEN_PREFIX):
            return None
        try:
            token = edi_token_authenticate(text)
        except TokenRefused as exc:
            raise BearerRefused(exc.message, code=exc.code) from None
        # The token acts as no member, even beside a session cookie.
        request._request.member = None  # type: ignore[attr-defined]
        ctx = context.current()
        context.set_for_request(
            dataclasses.replace(
                ctx,
                actor_type="edi_token",
                actor_id=str(token.pk),
                actor_label=token.name,
                source="api",
            )
        )
        return AnonymousUser(), token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="edi"'


class EdiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    """Describes the EDI bearer token in the OpenAPI document."""

    target_class = "edi.api.EdiTokenAuthentication"
    name = "ediToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "edi_…"}


class EdiApiView(TenantApiView):
    """Base of the EDI endpoints: an EDI token or an admin's session.

    A token passes when it holds the method's scope (`scope_map`), else 403
    `insufficient_scope`; a session passes on the member's capability, as
    everywhere. Methods in `token_only` accept no session: the session's
    CSRF check would parse a multipart body before the size check could
    refuse it, and the browser has its own upload page.
    """

    scope_map: dict[str, str] = {}
    token_only: frozenset[str] = frozenset()

    def get_authenticators(self) -> list[Any]:
        token = EdiTokenAuthentication(any_bearer=True)
        request = getattr(self, "request", None)
        if request is not None and request.method in self.token_only:
            return [token]
        return [token, PortalSessionAuthentication()]

    def check_permissions(self, request: Request) -> None:
        token = request.auth if isinstance(request.auth, EdiToken) else None
        if token is None:
            if request.method in self.token_only:
                raise exceptions.NotAuthenticated(
                    "This operation needs an EDI token: Authorization: Bearer edi_…"
                )
            super().check_permissions(request)
            return
        scope = self._scope(request)
        if scope is None or scope not in token.scopes:
            raise ApplicationError(
                f"This token does not have the scope {scope}."
                if scope
                else "Tokens cannot do this.",
                code="insufficient_scope",
                status=403,
                details={"required_scope": scope} if scope else {},
            )

    def _scope(self, request: Request) -> str | None:
        method = "GET" if request.method == "HEAD" else str(request.method)
        return self.scope_map.get(method)

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if response.status_code == 401:
            challenge = 'Bearer realm="edi"'
            if isinstance(exc, TokenRefused):
                challenge += ', error="invalid_token"'
            response["WWW-Authenticate"] = challenge
        elif (
            response.status_code == 403
            and isinstance(exc, ApplicationError)
            and exc.code == "insufficient_scope"
        ):
            scope = self._scope(self.request) or ""
            response["WWW-Authenticate"] = (
                f'Bearer realm="edi", error="insufficient_scope", scope="{scope}"'
            )
        return response


# --------------------------------------------------------------------------
# Endpoints


class EdiFileCollectionApi(EdiApiView):
    """`/api/v1/edi/files/`: GET lists the files, POST uploads one.

    The two operations share a URL, so they share this class; each has its
    own capability (session) and scope (token), as Sentry's `scope_map`.
    """

    capability_map = {"GET": "edi.view", "POST": "edi.upload"}
    scope_map = {"GET": READ_SCOPE, "POST": WRITE_SCOPE}
    token_only = frozenset({"POST"})

    class ListParams(serializers.Serializer):
        after = serializers.CharField(required=False, max_length=200)
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=PAGE_SIZE
        )

    class UploadParams(serializers.Serializer):
        mode = serializers.ChoiceField(choices=EdiMode.values, required=False)
        dry_run = serializers.BooleanField(required=False, default=False)

    @extend_schema(
        operation_id="edi_files_list",
        parameters=[ListParams],
        responses=inline_serializer(
            "EdiFilePage",
            {
                "results": EdiFileSerializer(many=True),
                "next": serializers.CharField(allow_null=True),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        params = _validated(self.ListParams, request)
        try:
            page = edi_file_page(
                cursor=params.get("after"), page_size=params["limit"], strict=True
            )
        except InvalidCursor:
            raise exceptions.ValidationError({"after": ["Invalid cursor."]}) from None
        return Response(
            {
                "results": EdiFileSerializer(page.items, many=True).data,
                "next": page.next_cursor,
            }
        )

    @extend_schema(
        operation_id="edi_files_upload",
        parameters=[
            UploadParams,
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Replays the original file for 24 hours.",
            ),
        ],
        request={
            "text/csv": OpenApiTypes.BINARY,
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            },
        },
        responses={
            202: EdiFileSerializer,
            400: OpenApiResponse(description="empty_file or a bad parameter"),
            413: OpenApiResponse(description="file_too_large"),
            415: OpenApiResponse(description="unsupported_media_type"),
            422: OpenApiResponse(description="idempotency_conflict"),
        },
    )
    def post(self, request: Request) -> Response:
        token = request.auth
        if not isinstance(token, EdiToken):  # token_only: cannot happen
            raise exceptions.NotAuthenticated()
        params = _validated(self.UploadParams, request)
        key = _idempotency_key(request)
        media_type = upload_media_type(request._request)  # 415
        # Nothing of the body has been read yet; now it streams to the spool.
        spooled, name = upload_receive_body(
            request._request, multipart=media_type == MULTIPART_TYPE
        )
        edi_file = edi_file_receive(
            spooled=spooled,
            source=EdiSource.API,
            original_name=name,
            mode=params.get("mode"),
            dry_run=params["dry_run"],
            token=token,
            idempotency_key=key,
        )
        return Response(
            EdiFileSerializer(edi_file).data,
            status=ACCEPTED,
            headers={"Location": file_detail_path(edi_file)},
        )


class EdiFileDetailApi(EdiApiView):
    """One file: status, counts and the progress of its import job."""

    required_capability = "edi.view"
    scope_map = {"GET": READ_SCOPE}

    @extend_schema_serializer(component_name="EdiFileDetail")
    class OutputSerializer(EdiFileSerializer):
        progress = serializers.SerializerMethodField()

        def get_progress(self, edi_file: EdiFile) -> dict[str, Any] | None:
            job = edi_file.job
            if job is None:
                return None
            return {
                "done": job.progress_done,
                "total": job.progress_total,
                "percent": 100 if edi_file.is_final else job.percent,
                "message": job.message,
            }

    @extend_schema(operation_id="edi_files_retrieve", responses=OutputSerializer)
    def get(self, request: Request, file_id: str) -> Response:
        return Response(self.OutputSerializer(edi_file_get(file_id=file_id)).data)


class EdiFileResultsApi(EdiApiView):
    """The per-row results CSV (EDI-P11): 409 `not_ready` until written."""

    required_capability = "edi.view"
    scope_map = {"GET": READ_SCOPE}

    @extend_schema(
        operation_id="edi_files_results",
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="not_ready"),
        },
    )
    def get(self, request: Request, file_id: str) -> StreamingHttpResponse:
        edi_file = edi_file_get(file_id=file_id)
        if edi_file.purged_at is not None:
            raise ApplicationError(
                "The results were deleted after the retention period.",
                code="purged",
                status=410,
            )
        if not edi_file.results_name:
            raise Conflict(
                "The results are not ready yet.",
                code="not_ready",
                details={"status": edi_file.status},
            )
        # Imported here: the results writer is the pipeline's module.
        from edi.services.results import results_open

        response = StreamingHttpResponse(
            results_open(edi_file), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="edi-{edi_file.pk}-results.csv"'
        )
        response["Cache-Control"] = "no-store"
        return response


# --------------------------------------------------------------------------
# Parameters and paging


def _validated(
    serializer_class: Callable[..., serializers.Serializer], request: Request
) -> dict[str, Any]:
    """Query parameters checked by `serializer_class`; unknown ones are 400.

    A misspelt `dry_run` must not turn a rehearsal into a real import.
    """
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    unknown = set(request.query_params) - set(serializer.fields)
    if unknown:
        raise exceptions.ValidationError(
            {name: ["Unknown parameter."] for name in sorted(unknown)}
        )
    return dict(serializer.validated_data)


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise ApplicationError(
            "Idempotency-Key must be at most 200 printable characters.",
            code="invalid_idempotency_key",
        )
    return key
