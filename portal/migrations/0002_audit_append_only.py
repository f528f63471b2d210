"""The tenant audit log is append-only (PORTAL-12); trigram search index.

The function and triggers are created in the tenant's own schema (the first
on the search path); the log goes only with its schema. The trigram index
is created only where pg_trgm is installed (not on the embedded dev server).
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

TRGM_INDEX = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX IF NOT EXISTS portal_member_search_trgm
            ON portal_member USING gin (search_text gin_trgm_ops);
    END IF;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("portal", "0001_initial"), ("tenants", "0002_extensions_and_audit_trigger")]

    operations = [
        migrations.RunSQL(APPEND_ONLY, reverse_sql=DROP),
        migrations.RunSQL(
            TRGM_INDEX, reverse_sql="DROP INDEX IF EXISTS portal_member_search_trgm"
        ),
    ]
