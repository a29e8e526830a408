-- PostgreSQL's migration 16 moves TOAST compression to LZ4. SQLite does not
-- compress what it stores: nothing to do here. The migration keeps the two
-- backends' schema versions in step.
SELECT 1;
