-- PostgreSQL's migration 14 drops the triggers that notified inside
-- transactions (writers announce after the commit now). SQLite never had
-- them: one process, woken in memory. The version is kept in step with
-- PostgreSQL's so both report the same schema version.
SELECT 1;
