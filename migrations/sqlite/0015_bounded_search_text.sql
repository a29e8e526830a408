-- PostgreSQL's migration 15 bounds the search text its btree index carries
-- (an entry holds at most 2704 bytes). SQLite's search index (FTS5, migration
-- 9) has no such bound. The version is kept in step with PostgreSQL's so both
-- report the same schema version.
SELECT 1;
