-- Texts and bytes kept out of line (TOAST) are compressed with LZ4, not pglz.
--
-- pglz costs about 30 ms of the backend's CPU per MB written; a mailbox's
-- backlog stores each mail's text and HTML bodies, and the preview and the
-- drafts read them back on every click. LZ4 writes and reads several times
-- faster for a little less compression. The setting is per column and holds
-- for values written from now on; values already stored keep pglz (both read
-- back the same). Every text, bytes and JSON column of Switchboard's tables
-- takes it: the tables of its schema that its role owns, not those of an
-- extension or of another application sharing the schema. (A column stored
-- EXTERNAL, like messages.raw, is not compressed at all: the setting has no
-- effect there. Generated columns are left alone. Columns added by later
-- migrations have the server's default unless they say otherwise.) Each
-- table is locked for a moment: the setting is metadata, nothing is
-- rewritten.
--
-- PostgreSQL 14 brought per-column compression; a server built without LZ4
-- refuses it. On either, nothing changes and the migration still succeeds.
DO $$
DECLARE
    c record;
BEGIN
    IF current_setting('server_version_num')::integer < 140000 THEN
        RAISE NOTICE 'PostgreSQL before 14: TOAST compression stays pglz';
        RETURN;
    END IF;
    FOR c IN
        SELECT cl.oid::regclass AS tbl, a.attname AS col
        FROM pg_attribute a
        JOIN pg_class cl ON cl.oid = a.attrelid
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE cl.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
          AND cl.relkind IN ('r', 'p')
          AND pg_has_role(cl.relowner, 'USAGE')
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend d
              WHERE d.classid = 'pg_class'::regclass AND d.objid = cl.oid AND d.deptype = 'e')
          AND a.attnum > 0
          AND NOT a.attisdropped
          AND a.attgenerated = ''
          AND t.typstorage <> 'p'
        ORDER BY 1, 2
    LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION lz4', c.tbl, c.col);
    END LOOP;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this PostgreSQL has no LZ4: TOAST compression stays pglz';
END
$$;
