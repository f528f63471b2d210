"""EDI over HTTPS, mounted by portal.urls at `/api/v1/edi/` (DESIGN.md)."""

from django.urls import path

from edi import api

app_name = "edi_api"

urlpatterns = [
    path("files/", api.EdiFileCollectionApi.as_view(), name="file-list"),
    # str, not uuid: a malformed id gets the API's JSON 404, not a page.
    path("files/<str:file_id>/", api.EdiFileDetailApi.as_view(), name="file-detail"),
    path(
        "files/<str:file_id>/results.csv",
        api.EdiFileResultsApi.as_view(),
        name="file-results",
    ),
]
