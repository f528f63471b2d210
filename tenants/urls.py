"""The public URLconf: the platform console on the base domain."""

from django.urls import include, path

from tenants import views

console = [
    path("", views.tenant_list_view, name="tenant-list"),
    path("accounts/login/", views.console_login_view, name="login"),
    path("accounts/logout/", views.console_logout_view, name="logout"),
    path("tenants/<int:tenant_id>/", views.tenant_detail_view, name="tenant-detail"),
    path(
        "tenants/<int:tenant_id>/<slug:action>/",
        views.tenant_action_view,
        name="tenant-action",
    ),
    path("audit/", views.platform_audit_view, name="audit"),
]

urlpatterns = [path("", include((console, "console")))]

handler404 = "portal.views.not_found_view"
