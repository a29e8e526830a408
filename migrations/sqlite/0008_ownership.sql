-- Ownership of long-lived sources that must have one owner at a time
-- (mailboxes, chat channels' sync loops, the outbox, the retention job).
-- On SQLite one process serves a database file (it holds an OS lock on
-- `<database>.lock`) and owns every source; each acquisition still bumps
-- the epoch, which the owner's commits check (the fencing token).
CREATE TABLE ownership (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    lock_id INTEGER,
    epoch BIGINT NOT NULL DEFAULT 0,
    -- The worker that took it last (for people; the lock is the truth).
    owner TEXT,
    acquired_at BIGINT,
    PRIMARY KEY (kind, id)
);

-- Mail the database refused to store (its reason kept in `detail`): the
-- reason's CHECK gains 'unstorable', which SQLite can only do by rebuilding.
CREATE TABLE quarantine_new (
    id TEXT PRIMARY KEY,
    mailbox_id TEXT NOT NULL REFERENCES mailboxes (id),
    service_id TEXT NOT NULL REFERENCES services (id),
    uid_validity BIGINT,
    uid BIGINT,
    source_ref TEXT,
    reason TEXT NOT NULL CHECK (reason IN ('too_large', 'unparseable', 'timeout', 'unstorable')),
    detail TEXT NOT NULL,
    size BIGINT NOT NULL,
    raw BLOB,
    state TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'ingested', 'dismissed')),
    message_ref TEXT,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);
INSERT INTO quarantine_new SELECT id, mailbox_id, service_id, uid_validity, uid, source_ref, reason, detail,
    size, raw, state, message_ref, created_at, resolved_at FROM quarantine;
DROP TABLE quarantine;
ALTER TABLE quarantine_new RENAME TO quarantine;
CREATE UNIQUE INDEX quarantine_uid ON quarantine (mailbox_id, uid_validity, uid) WHERE uid IS NOT NULL;
CREATE INDEX quarantine_held ON quarantine (state, created_at);
