"""The tenant URLconf (every tenant host). The console's is tenants.urls.

Each app mounts its routes here under its own namespace.
"""

from django.urls import include, path

urlpatterns = [
    path("", include("portal.routes", namespace="portal")),
    path("sso/", include("sso.urls", namespace="sso")),
    path("api/v1/edi/", include("edi.urls", namespace="edi_api")),
    path("edi/", include("edi.web_urls", namespace="edi")),
]

handler404 = "portal.views.not_found_view"
