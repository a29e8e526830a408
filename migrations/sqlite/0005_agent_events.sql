-- Events for agents (Server-Sent Events on /api/v1/me/events): a new message
-- on a task they hold, a reply sent or failed. Kept for a while so that a
-- client that reconnects with Last-Event-ID misses nothing.

-- Each agent's events are numbered 1, 2, 3, … by this counter. A writer
-- bumps it inside its own transaction, so the row lock orders writers and a
-- reader that has seen number n never sees n - 1 appear later.
CREATE TABLE agent_event_counters (
    agent_id TEXT PRIMARY KEY REFERENCES agents (id),
    last_seq BIGINT NOT NULL
);

CREATE TABLE agent_events (
    agent_id TEXT NOT NULL REFERENCES agents (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    task_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX agent_events_created ON agent_events (created_at);
