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
ALTER TABLE tasks ADD COLUMN routed BOOLEAN NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN task_priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN queued_at BIGINT;
ALTER TABLE tasks ADD COLUMN ronas BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN customer_left_at BIGINT;
-- The queue a router reads: most urgent first, then the oldest.
CREATE INDEX tasks_routable ON tasks (service_id, modality, priority DESC, arrived_at, id)
    WHERE state = 'queued' AND routed;

-- user_sessions gains an offer deadline, an end reason and the result
-- 'withdrawn'; SQLite cannot change a CHECK constraint, so the table is
-- rebuilt (nothing refers to it) with its indexes and triggers.
CREATE TABLE user_sessions_new (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    service_id TEXT NOT NULL REFERENCES services (id),
    modality TEXT NOT NULL CHECK (modality IN ('email', 'im', 'call')),
    state TEXT NOT NULL CHECK (state IN ('offered', 'connected', 'wrap_up', 'concluded')),
    result TEXT CHECK (result IN ('accepted', 'declined', 'rona', 'cancelled', 'transferred', 'withdrawn')),
    created_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT,
    saved_at BIGINT,
    subject TEXT,
    customer_name TEXT,
    customer_address TEXT,
    codes_primary TEXT NOT NULL DEFAULT '[]',
    codes_secondary TEXT NOT NULL DEFAULT '[]',
    tags TEXT NOT NULL DEFAULT '[]',
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    end_reason TEXT
);
INSERT INTO user_sessions_new (id, task_id, agent_id, service_id, modality, state, result,
    created_at, answered_at, ended_at, saved_at, subject, customer_name, customer_address,
    codes_primary, codes_secondary, tags, updated_at)
SELECT id, task_id, agent_id, service_id, modality, state, result,
    created_at, answered_at, ended_at, saved_at, subject, customer_name, customer_address,
    codes_primary, codes_secondary, tags, updated_at
FROM user_sessions;
DROP TABLE user_sessions;
ALTER TABLE user_sessions_new RENAME TO user_sessions;

CREATE INDEX user_sessions_agent ON user_sessions (agent_id, created_at DESC, id DESC);
CREATE INDEX user_sessions_task ON user_sessions (task_id);
CREATE UNIQUE INDEX user_sessions_open ON user_sessions (task_id, agent_id)
    WHERE state IN ('offered', 'connected');
CREATE INDEX user_sessions_offers ON user_sessions (expires_at) WHERE state = 'offered';
CREATE INDEX user_sessions_load ON user_sessions (agent_id, modality) WHERE state IN ('offered', 'connected');

CREATE TRIGGER user_sessions_immutable_update
    BEFORE UPDATE ON user_sessions
    FOR EACH ROW WHEN OLD.state = 'concluded'
BEGIN
    SELECT RAISE(ABORT, 'user session is concluded and cannot be changed');
END;

CREATE TRIGGER user_sessions_immutable_delete
    BEFORE DELETE ON user_sessions
    FOR EACH ROW WHEN OLD.state = 'concluded'
BEGIN
    SELECT RAISE(ABORT, 'user session is concluded and cannot be changed');
END;

-- Every change of a task or session, in the transaction that made it:
-- what integrations (outbound webhooks) and telephony read.
CREATE TABLE task_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    session_id TEXT,
    agent_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX task_changes_task ON task_changes (task_id, id);
CREATE INDEX task_changes_created ON task_changes (created_at);
