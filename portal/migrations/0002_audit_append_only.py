"""The tenant audit log is append-only (PORTAL-12).

The function and triggers are created in the tenant's own schema (the first
on the search path); the log goes only with its schema.
"""

from django.db import migrations

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION portal_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER portal_audit_no_change
    BEFORE UPDATE OR DELETE ON portal_auditevent
    FOR EACH ROW EXECUTE FUNCTION portal_audit_append_only();
CREATE TRIGGER portal_audit_no_truncate
    BEFORE TRUNCATE ON portal_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION portal_audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS portal_audit_no_change ON portal_auditevent;
DROP TRIGGER IF EXISTS portal_audit_no_truncate ON portal_auditevent;
DROP FUNCTION IF EXISTS portal_audit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_initial"), ("tenants", "0002_extensions_and_audit_trigger")]

    operations = [migrations.RunSQL(APPEND_ONLY, reverse_sql=DROP)]
