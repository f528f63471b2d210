"""The `/edi/` pages, mounted by portal.urls under namespace `edi`."""

from django.urls import path

from edi import views

app_name = "edi"

urlpatterns = [
    path("", views.file_list_view, name="file-list"),
    path("upload/", views.file_upload_view, name="file-upload"),
    path("files/<uuid:file_id>/", views.file_detail_view, name="file-detail"),
    path("files/<uuid:file_id>/status/", views.file_status_view, name="file-status"),
    path("files/<uuid:file_id>/apply/", views.file_apply_view, name="file-apply"),
    path("files/<uuid:file_id>/cancel/", views.file_cancel_view, name="file-cancel"),
    path(
        "files/<uuid:file_id>/apply-anyway/",
        views.file_apply_anyway_view,
        name="file-apply-anyway",
    ),
    path(
        "files/<uuid:file_id>/results.csv",
        views.file_results_view,
        name="file-results",
    ),
    path("files/<uuid:file_id>/raw.csv", views.file_raw_view, name="file-raw"),
    path("settings/", views.settings_view, name="settings"),
    path(
        "settings/<slug:action>/",
        views.settings_action_view,
        name="settings-action",
    ),
]
