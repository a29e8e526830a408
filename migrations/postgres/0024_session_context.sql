-- An agent whose part in a live task is over (transferred on to a colleague
-- in the same service) sees the task's context as it was when their
-- part ended, not what later holders add while the task stays in the same
-- service: a record of their own session, written when it ends (with data
-- only when the service keeps context, as for a service's part). Written only
-- for a part the agent took (answered) and only while the task goes on in
-- the session's service: a part that ends with the task, or with the task's
-- move to another service, is the service's record (migration 0011), which
-- has no session. Offers declined or missed show nothing.
ALTER TABLE context_records ADD COLUMN session_id TEXT;
CREATE INDEX context_records_session ON context_records (session_id) WHERE session_id IS NOT NULL;

CREATE FUNCTION switchboard_session_context_record() RETURNS trigger AS $$
DECLARE
    days BIGINT;
BEGIN
    days := switchboard_keep_context_days(NEW.service_id);
    INSERT INTO context_records (task_id, service_id, ended_at, reason, keep_days, customer_kind,
        customer_ref, customer_name, customer_address, subject, customer_details, params, language, reached,
        session_id)
    SELECT t.id, t.service_id, COALESCE(NEW.ended_at, NEW.updated_at), 'session_over', days, t.customer_kind,
        t.customer_ref, t.customer_name, t.customer_address, t.subject,
        CASE WHEN days > 0 THEN t.customer_details END,
        CASE WHEN days > 0 THEN t.params END,
        CASE WHEN days > 0 THEN t.language END,
        CASE WHEN days > 0 THEN t.reached END,
        NEW.id
    FROM tasks t
    WHERE t.id = NEW.task_id AND t.service_id = NEW.service_id
      AND t.state NOT IN ('concluded', 'cancelled', 'wrap_up');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER user_sessions_context
    AFTER UPDATE OF state, result ON user_sessions
    FOR EACH ROW
    WHEN (NEW.answered_at IS NOT NULL
          AND (NEW.state = 'concluded' OR NEW.result IS NOT DISTINCT FROM 'transferred')
          AND NOT (OLD.state = 'concluded' OR OLD.result IS NOT DISTINCT FROM 'transferred'))
    EXECUTE FUNCTION switchboard_session_context_record();
