-- Drafts and the outbox: replies written by agents, sent once.

CREATE TABLE drafts (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    service_id TEXT NOT NULL REFERENCES services (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    reply_to_message TEXT REFERENCES messages (id),
    kind TEXT NOT NULL CHECK (kind IN ('reply', 'reply_all', 'forward', 'new')),
    state TEXT NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'queued', 'sending', 'sent', 'failed')),
    version BIGINT NOT NULL DEFAULT 1,
    from_address TEXT NOT NULL,
    from_name TEXT,
    to_addrs TEXT NOT NULL DEFAULT '[]',
    cc_addrs TEXT NOT NULL DEFAULT '[]',
    bcc_addrs TEXT NOT NULL DEFAULT '[]',
    subject TEXT NOT NULL DEFAULT '',
    body_text TEXT NOT NULL DEFAULT '',
    body_html TEXT NOT NULL DEFAULT '',
    in_reply_to TEXT,
    refs TEXT NOT NULL DEFAULT '[]',
    -- Fixed when queued; every retry reuses it.
    message_id TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    claimed_by TEXT,
    claim_expires_at BIGINT,
    last_error TEXT,
    smtp_response TEXT,
    queued_at BIGINT,
    sent_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX drafts_task ON drafts (task_id, created_at);
CREATE INDEX drafts_outbox ON drafts (state, next_attempt_at);
CREATE UNIQUE INDEX drafts_message_id ON drafts (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE draft_attachments (
    id TEXT PRIMARY KEY,
    draft_id TEXT NOT NULL REFERENCES drafts (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_id TEXT,
    bytes BYTEA NOT NULL
);
CREATE INDEX draft_attachments_draft ON draft_attachments (draft_id, position);

-- A sent draft is final.
CREATE FUNCTION drafts_sent_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'draft % is sent and cannot be changed', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER drafts_sent_immutable
    BEFORE UPDATE OR DELETE ON drafts
    FOR EACH ROW WHEN (OLD.state = 'sent')
    EXECUTE FUNCTION drafts_sent_immutable();

-- Per-service overrides of the reply templates (validated when saved).
ALTER TABLE services ADD COLUMN reply_templates TEXT NOT NULL DEFAULT '{}';
