-- SQLite keeps staged raw sources in a file of its own (its migration 22).
-- PostgreSQL stages them in `message_sources` (migration 17): nothing to do.
SELECT 1;
