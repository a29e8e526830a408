-- Raw sources written ahead of their batch's transaction.
--
-- On PostgreSQL a mailbox's batch commits on one connection: the raw
-- sources (most of its bytes) were written inside that transaction, one
-- batch after the other, while the database's other CPU waited. An IMAP
-- mailbox's worker now writes a batch's sources here first, in transactions
-- of their own, while the previous batch commits; the batch's messages then
-- point at them (`messages.source_id`, `raw` NULL). Messages stored before,
-- and mail written without staging (SQLite, Maildir, a resolved quarantine
-- entry, sent replies, a staging that failed), keep their source in
-- `messages.raw` as before. (LZ4 for TOAST, migration 16, does not matter
-- here: the sources are stored EXTERNAL, packed by ingestion.)
--
-- A source whose batch never committed (the worker died between the two
-- transactions, or the mail went to the quarantine) is referenced by no
-- message; the retention job deletes those after a day. The foreign key
-- makes a referenced source impossible to delete.
CREATE TABLE message_sources (
    id TEXT PRIMARY KEY,
    raw BYTEA NOT NULL,
    raw_encoding TEXT CHECK (raw_encoding IN ('lz4')),
    created_at BIGINT NOT NULL
);
-- As messages.raw: stored out of line, not compressed by PostgreSQL (the
-- sources are packed with LZ4 by ingestion where that pays).
ALTER TABLE message_sources ALTER COLUMN raw SET STORAGE EXTERNAL;
CREATE INDEX message_sources_created_at ON message_sources (created_at);
ALTER TABLE messages ADD COLUMN source_id TEXT REFERENCES message_sources (id);
-- A message holds its source or points at it. (NOT VALID: the rows already
-- there all hold theirs; new and updated rows are checked.)
ALTER TABLE messages ALTER COLUMN raw DROP NOT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_source_kept
    CHECK (raw IS NOT NULL OR source_id IS NOT NULL) NOT VALID;
CREATE INDEX messages_source_id ON messages (source_id) WHERE source_id IS NOT NULL;
