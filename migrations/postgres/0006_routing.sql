-- Routing: presence and capacity of agents, offers with a durable deadline,
-- RONA, broadcast, priorities across services, and a log of task changes.

-- Agents: when their client was last seen (event stream or presence call),
-- since when their presence holds, and until when they are paused after a RONA.
ALTER TABLE agents ADD COLUMN last_seen_at BIGINT;
ALTER TABLE agents ADD COLUMN presence_changed_at BIGINT;
ALTER TABLE agents ADD COLUMN rona_until BIGINT;

-- When each agent last got or finished a task of each modality: "longest idle".
CREATE TABLE agent_activity (
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    modality TEXT NOT NULL CHECK (modality IN ('email', 'im', 'call')),
    last_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, modality)
);

-- Tasks: whether routing offers it (else it waits for a pickup or an outcome),
-- its own priority (the `priority` column is the service's plus this), the
-- time it (re)entered its queue, and how many offers timed out.
ALTER TABLE tasks ADD COLUMN routed BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE tasks ADD COLUMN task_priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN queued_at BIGINT;
ALTER TABLE tasks ADD COLUMN ronas BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN customer_left_at BIGINT;
-- The queue a router reads: most urgent first, then the oldest.
CREATE INDEX tasks_routable ON tasks (service_id, modality, priority DESC, arrived_at, id)
    WHERE state = 'queued' AND routed;

-- Offers: a user session in state 'offered' with its deadline, stored with it
-- so that a restarted (or another) worker fires every overdue RONA.
ALTER TABLE user_sessions ADD COLUMN expires_at BIGINT;
-- Why a session ended without its agent: taken (a broadcast peer accepted),
-- presence (the agent went away), cancelled, timeout, declined, transfer.
ALTER TABLE user_sessions ADD COLUMN end_reason TEXT;
ALTER TABLE user_sessions DROP CONSTRAINT IF EXISTS user_sessions_result_check;
ALTER TABLE user_sessions ADD CONSTRAINT user_sessions_result_check
    CHECK (result IN ('accepted', 'declined', 'rona', 'cancelled', 'transferred', 'withdrawn'));
CREATE INDEX user_sessions_offers ON user_sessions (expires_at) WHERE state = 'offered';
-- Load per agent and modality: offered and connected sessions.
CREATE INDEX user_sessions_load ON user_sessions (agent_id, modality) WHERE state IN ('offered', 'connected');

-- Every change of a task or session, in the transaction that made it:
-- what integrations (outbound webhooks) and telephony read.
CREATE TABLE task_changes (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    session_id TEXT,
    agent_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX task_changes_task ON task_changes (task_id, id);
CREATE INDEX task_changes_created ON task_changes (created_at);

-- Every worker's router is woken when work may be assigned: a task queued, an
-- offer made or ended, a session freeing capacity.
CREATE FUNCTION switchboard_routing_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('switchboard_routing', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_routing_notify
    AFTER INSERT OR UPDATE OF state, service_id, routed ON tasks
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.routed)
    EXECUTE FUNCTION switchboard_routing_notify();

CREATE TRIGGER user_sessions_routing_notify
    AFTER INSERT OR UPDATE OF state ON user_sessions
    FOR EACH ROW
    EXECUTE FUNCTION switchboard_routing_notify();
