"""Routes of the SSO app, mounted at `/sso/` under namespace `sso`."""

from django.urls import path

from sso import views

app_name = "sso"

urlpatterns = [
    path("", views.settings_view, name="settings"),
    path("test/", views.test_start_view, name="test-start"),
    path("test/<uuid:run_id>/", views.test_result_view, name="test-result"),
    path("links/<int:member_id>/reset/", views.link_reset_view, name="link-reset"),
    path("saml/metadata/", views.metadata_view, name="metadata"),
    path("saml/login/", views.login_start_view, name="login"),
    path("saml/acs/", views.acs_view, name="acs"),
    path("saml/finish/", views.finish_view, name="finish"),
    path("saml/sls/", views.sls_view, name="sls"),
    path("<slug:action>/", views.settings_action_view, name="settings-action"),
]
