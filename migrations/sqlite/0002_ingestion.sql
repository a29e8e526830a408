-- Mailbox ingestion: mailboxes with their cursor and lease, email conversations,
-- messages (raw source kept), and the quarantine.

CREATE TABLE mailboxes (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id),
    kind TEXT NOT NULL CHECK (kind IN ('imap', 'maildir')),
    description TEXT NOT NULL,
    -- The sync cursor, committed with the tasks it produced.
    uid_validity BIGINT,
    last_uid BIGINT NOT NULL DEFAULT 0,
    -- Highest UID whose after-ingest action (flag or move) is done.
    flagged_uid BIGINT NOT NULL DEFAULT 0,
    -- The worker syncing it, until when.
    lease_owner TEXT,
    lease_expires_at BIGINT,
    status TEXT NOT NULL DEFAULT 'waiting',
    push BOOLEAN NOT NULL DEFAULT 0,
    last_sync_at BIGINT,
    synced_at BIGINT,
    last_error TEXT,
    last_error_at BIGINT,
    backlog BIGINT NOT NULL DEFAULT 0,
    ingested_total BIGINT NOT NULL DEFAULT 0,
    duplicates_total BIGINT NOT NULL DEFAULT 0,
    errors_total BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id),
    subject TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

ALTER TABLE tasks ADD COLUMN conversation_id TEXT REFERENCES conversations (id);
CREATE INDEX tasks_conversation ON tasks (conversation_id, arrived_at);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL REFERENCES services (id),
    conversation_id TEXT REFERENCES conversations (id),
    task_id TEXT REFERENCES tasks (id),
    mailbox_id TEXT REFERENCES mailboxes (id),
    direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    kind TEXT NOT NULL CHECK (kind IN ('normal', 'auto_reply', 'bulk', 'bounce')),
    -- What ingestion did with it: queued (new task), appended (joined an open task),
    -- reopened (new task in a known conversation), attached, dropped, recorded.
    disposition TEXT NOT NULL,
    message_id TEXT,
    content_hash TEXT NOT NULL,
    in_reply_to TEXT,
    refs TEXT NOT NULL DEFAULT '[]',
    subject TEXT,
    from_address TEXT,
    from_name TEXT,
    recipients TEXT NOT NULL DEFAULT '{}',
    sent_at BIGINT,
    received_at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    text_body TEXT,
    html_body TEXT,
    attachments TEXT NOT NULL DEFAULT '[]',
    classification TEXT NOT NULL DEFAULT '{}',
    delivery_status TEXT,
    raw BLOB NOT NULL
);
-- One task or conversation entry per distinct mail per service, whatever the
-- mailbox, the UIDVALIDITY or the number of deliveries.
CREATE UNIQUE INDEX messages_dedup ON messages (service_id, content_hash) WHERE direction = 'inbound';
CREATE INDEX messages_message_id ON messages (service_id, message_id);
CREATE INDEX messages_task ON messages (task_id, received_at);
CREATE INDEX messages_conversation ON messages (conversation_id, received_at);

CREATE TABLE quarantine (
    id TEXT PRIMARY KEY,
    mailbox_id TEXT NOT NULL REFERENCES mailboxes (id),
    service_id TEXT NOT NULL REFERENCES services (id),
    uid_validity BIGINT,
    uid BIGINT,
    source_ref TEXT,
    reason TEXT NOT NULL CHECK (reason IN ('too_large', 'unparseable', 'timeout')),
    detail TEXT NOT NULL,
    size BIGINT NOT NULL,
    raw BLOB,
    state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'ingested', 'dismissed')),
    message_ref TEXT,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE UNIQUE INDEX quarantine_uid ON quarantine (mailbox_id, uid_validity, uid) WHERE uid IS NOT NULL;
CREATE INDEX quarantine_held ON quarantine (state, created_at);
