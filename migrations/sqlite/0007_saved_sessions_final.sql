-- Saved is final, against SQLite's REPLACE conflict resolution too.
--
-- `REPLACE`, `INSERT OR REPLACE` and `UPDATE OR REPLACE` delete the row they
-- conflict with without firing its delete triggers (unless the connection
-- turned `recursive_triggers` on), so the triggers of 0001 alone let a
-- concluded session be rewritten. An insert, or an update of another row,
-- that would land on a concluded session's id or rowid is refused here,
-- before conflict resolution runs, whatever the connection's pragmas.

CREATE TRIGGER user_sessions_immutable_insert
    BEFORE INSERT ON user_sessions
    FOR EACH ROW WHEN
        EXISTS (SELECT 1 FROM user_sessions WHERE id = NEW.id AND state = 'concluded')
        OR EXISTS (SELECT 1 FROM user_sessions WHERE rowid = NEW.rowid AND state = 'concluded')
BEGIN
    SELECT RAISE(ABORT, 'user session is concluded and cannot be changed');
END;

CREATE TRIGGER user_sessions_immutable_overwrite
    BEFORE UPDATE ON user_sessions
    FOR EACH ROW WHEN OLD.state <> 'concluded' AND (
        EXISTS (SELECT 1 FROM user_sessions WHERE id = NEW.id AND state = 'concluded')
        OR EXISTS (SELECT 1 FROM user_sessions WHERE rowid = NEW.rowid AND state = 'concluded'))
BEGIN
    SELECT RAISE(ABORT, 'user session is concluded and cannot be changed');
END;
