"""pg_trgm for member search, and the platform audit log made append-only.

pg_trgm lives in public, which is on every tenant's search path, so tenant
schemas can use its operator classes. It is a contrib module: the embedded
development server (pgserver) does not ship it, so it is created only where
available and the member search falls back to a scan there.
"""

from django.db import migrations

APPEND_ONLY = """
CREATE OR REPLACE FUNCTION tenants_platformaudit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the platform audit log is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER tenants_platformaudit_no_change
    BEFORE UPDATE OR DELETE ON tenants_platformauditevent
    FOR EACH ROW EXECUTE FUNCTION tenants_platformaudit_append_only();
CREATE TRIGGER tenants_platformaudit_no_truncate
    BEFORE TRUNCATE ON tenants_platformauditevent
    FOR EACH STATEMENT EXECUTE FUNCTION tenants_platformaudit_append_only();
"""

TRGM = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    END IF;
END
$$;
"""

DROP = """
DROP TRIGGER IF EXISTS tenants_platformaudit_no_change ON tenants_platformauditevent;
DROP TRIGGER IF EXISTS tenants_platformaudit_no_truncate ON tenants_platformauditevent;
DROP FUNCTION IF EXISTS tenants_platformaudit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [
        migrations.RunSQL(TRGM, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(APPEND_ONLY, reverse_sql=DROP),
    ]
