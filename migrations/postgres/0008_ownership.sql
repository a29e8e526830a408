-- Ownership of long-lived sources that must have one owner at a time
-- (mailboxes, chat channels' sync loops, the outbox, the retention job).
-- The owner holds the session-level advisory lock (OWNERSHIP_LOCK_CLASS,
-- lock_id) on a connection of its own: the lock ends with that connection,
-- so a dead worker's sources are free at once. Each acquisition bumps the
-- epoch; the owner's commits check it (the fencing token), so an owner
-- that lost its lock commits nothing once another took over.
CREATE TABLE ownership (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    lock_id INTEGER GENERATED ALWAYS AS IDENTITY UNIQUE,
    epoch BIGINT NOT NULL DEFAULT 0,
    -- The worker that took it last (for people; the lock is the truth).
    owner TEXT,
    acquired_at BIGINT,
    PRIMARY KEY (kind, id)
);

-- Mail the database refused to store (its reason kept in `detail`).
ALTER TABLE quarantine DROP CONSTRAINT quarantine_reason_check;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_reason_check
    CHECK (reason IN ('too_large', 'unparseable', 'timeout', 'unstorable'));
