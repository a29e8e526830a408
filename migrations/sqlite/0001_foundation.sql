-- Foundation: directory (services, agents, codes, contacts), tasks and user sessions.
-- Times are milliseconds since the Unix epoch (BIGINT) on both backends.

CREATE TABLE services (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email_addresses TEXT NOT NULL DEFAULT '[]',
    settings TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    token_hash TEXT UNIQUE,
    admin BOOLEAN NOT NULL DEFAULT 0,
    presence TEXT NOT NULL DEFAULT 'available'
        CHECK (presence IN ('available', 'busy', 'away', 'offline')),
    capacity TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX agents_email ON agents (lower(email));

CREATE TABLE agent_services (
    agent_id TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    PRIMARY KEY (agent_id, service_id)
);
CREATE INDEX agent_services_service ON agent_services (service_id);

CREATE TABLE service_codes (
    service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    code TEXT NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('primary', 'secondary', 'any')),
    active BOOLEAN NOT NULL DEFAULT 1,
    PRIMARY KEY (service_id, code)
);

CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    company TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX contacts_email ON contacts (email);
CREATE INDEX contacts_phone ON contacts (phone);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id),
    modality TEXT NOT NULL CHECK (modality IN ('email', 'im', 'call')),
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'offered', 'connected', 'wrap_up', 'concluded', 'cancelled')),
    priority BIGINT NOT NULL DEFAULT 0,
    arrived_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    ended_at BIGINT,
    customer_kind TEXT NOT NULL CHECK (customer_kind IN ('internal', 'external', 'anonymous')),
    customer_ref TEXT,
    customer_name TEXT,
    customer_address TEXT,
    subject TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    external_id TEXT
);
CREATE INDEX tasks_queue ON tasks (service_id, state, priority DESC, arrived_at);
CREATE INDEX tasks_listing ON tasks (arrived_at DESC, id DESC);
CREATE UNIQUE INDEX tasks_external_id ON tasks (external_id) WHERE external_id IS NOT NULL;

CREATE TABLE user_sessions (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    service_id TEXT NOT NULL REFERENCES services (id),
    modality TEXT NOT NULL CHECK (modality IN ('email', 'im', 'call')),
    state TEXT NOT NULL CHECK (state IN ('offered', 'connected', 'wrap_up', 'concluded')),
    result TEXT CHECK (result IN ('accepted', 'declined', 'rona', 'cancelled', 'transferred')),
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
    updated_at BIGINT NOT NULL
);
CREATE INDEX user_sessions_agent ON user_sessions (agent_id, created_at DESC, id DESC);
CREATE INDEX user_sessions_task ON user_sessions (task_id);
-- At most one open involvement of an agent in a task.
CREATE UNIQUE INDEX user_sessions_open ON user_sessions (task_id, agent_id)
    WHERE state IN ('offered', 'connected');

-- Saved is final: a concluded session (its result and wrap-up) can never change
-- or disappear, whoever writes to the database.
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
