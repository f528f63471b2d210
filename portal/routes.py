"""Routes of the portal core, included by portal.urls as namespace `portal`."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from portal import api, views
from portal.permissions import capability_required

app_name = "portal"

api_v1 = [
    path("me/", api.MeApi.as_view(), name="me"),
    path("jobs/<uuid:job_id>/", api.JobDetailApi.as_view(), name="job-detail-api"),
    path("members/", api.MemberListApi.as_view(), name="member-list-api"),
    path(
        "members/<int:member_id>/",
        api.MemberDetailApi.as_view(),
        name="member-detail-api",
    ),
    path("audit/exports/", api.AuditExportApi.as_view(), name="audit-export-api"),
]

urlpatterns = [
    path("", views.dashboard_view, name="dashboard"),
    path("accounts/login/", views.login_view, name="login"),
    path("accounts/logout/", views.logout_view, name="logout"),
    path("members/", views.member_list_view, name="member-list"),
    path("members/new/", views.member_create_view, name="member-create"),
    path("members/export.csv", views.member_export_view, name="member-export"),
    path("members/bulk/", views.member_bulk_view, name="member-bulk"),
    path("members/<int:member_id>/", views.member_detail_view, name="member-detail"),
    path(
        "members/<int:member_id>/<slug:action>/",
        views.member_action_view,
        name="member-action",
    ),
    path("audit/", views.audit_list_view, name="audit-list"),
    path("audit/export/", views.audit_export_view, name="audit-export"),
    path("jobs/<uuid:job_id>/", views.job_detail_view, name="job-detail"),
    path("jobs/<uuid:job_id>/download/", views.job_download_view, name="job-download"),
    path("api/v1/", include((api_v1, "api"))),
    path(
        "api/schema/",
        capability_required("api.me")(SpectacularAPIView.as_view()),
        name="api-schema",
    ),
    path(
        "api/docs/",
        capability_required("api.me")(
            SpectacularSwaggerSplitView.as_view(url_name="portal:api-schema")
        ),
        name="api-docs",
    ),
]
