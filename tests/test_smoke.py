from django_tenants.utils import tenant_context

from portal.models import Member


def test_tenant_has_owner(tenant):
    with tenant_context(tenant):
        assert Member.objects.filter(role="owner").count() == 1


def test_dashboard_for_owner(tenant_client):
    response = tenant_client.get("/")
    assert response.status_code == 200
    assert b"Dashboard" in response.content
