-- Instant messaging: chat channels (webhook, Matrix, JetStream), chats and
-- their transcripts, the events they were built from (each sender's event id
-- has one effect), and the agents' chat identities for the handoff.

ALTER TABLE agents ADD COLUMN matrix_user_id TEXT;

-- A configured chat channel with its health. `cursor` is where a pulled
-- source (Matrix /sync) stands, committed with what it produced.
CREATE TABLE chat_channels (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id),
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'matrix', 'jetstream')),
    description TEXT NOT NULL,
    cursor TEXT,
    status TEXT NOT NULL DEFAULT 'waiting',
    worker TEXT,
    last_event_at BIGINT,
    synced_at BIGINT,
    last_error TEXT,
    last_error_at BIGINT,
    events_total BIGINT NOT NULL DEFAULT 0,
    duplicates_total BIGINT NOT NULL DEFAULT 0,
    errors_total BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

-- One conversation on a channel (a web chat, a Matrix room). `task_id` is its
-- latest IM task; `member_agent` the agent last invited into it (Matrix
-- handoff), reconciled with the task's holder.
CREATE TABLE chats (
    id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL REFERENCES chat_channels (id),
    external_id TEXT NOT NULL,
    service_id TEXT NOT NULL REFERENCES services (id),
    task_id TEXT REFERENCES tasks (id),
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'left', 'ended')),
    customer_user_id TEXT,
    customer_name TEXT,
    customer_email TEXT,
    customer_phone TEXT,
    language TEXT,
    member_agent TEXT,
    member_user TEXT,
    messages_total BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    left_at BIGINT,
    ended_at BIGINT
);
CREATE UNIQUE INDEX chats_external ON chats (channel_id, external_id);
CREATE INDEX chats_task ON chats (task_id);

-- The transcript, as received. `external_id` is the message's id at the
-- source (Matrix event id, the webhook event id): stored once.
CREATE TABLE chat_messages (
    id TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL REFERENCES chats (id),
    task_id TEXT REFERENCES tasks (id),
    external_id TEXT,
    sender TEXT NOT NULL CHECK (sender IN ('customer', 'bot', 'agent')),
    sender_id TEXT,
    sender_name TEXT,
    text TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    -- An agent's message relayed into the chat by Switchboard (channels with
    -- relay on): pending until the chat system took it, then sent or failed.
    delivery TEXT CHECK (delivery IN ('pending', 'sent', 'failed')),
    delivery_attempts BIGINT NOT NULL DEFAULT 0,
    delivery_next_at BIGINT,
    delivery_error TEXT
);
CREATE UNIQUE INDEX chat_messages_external ON chat_messages (chat_id, external_id);
CREATE INDEX chat_messages_relay ON chat_messages (delivery_next_at) WHERE delivery = 'pending';
CREATE INDEX chat_messages_task ON chat_messages (task_id, sent_at, seq);

-- Events taken from webhook and JetStream deliveries, with the answer given:
-- a repeated delivery (same channel and id) is answered the same, changing nothing.
CREATE TABLE chat_events (
    channel_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, event_id)
);
CREATE INDEX chat_events_received ON chat_events (received_at);
CREATE INDEX chat_events_channel ON chat_events (channel_id, received_at);
