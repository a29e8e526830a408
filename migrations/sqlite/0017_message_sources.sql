-- Raw sources written ahead of their batch's transaction (PostgreSQL's
-- migration 17 says why). SQLite has one writer per file, so ingestion keeps
-- writing sources in `messages.raw` inside the batch; the table and the
-- column exist so that both backends read sources with the same statements
-- (`messages.raw` stays NOT NULL here).
CREATE TABLE message_sources (
    id TEXT PRIMARY KEY,
    raw BLOB NOT NULL,
    raw_encoding TEXT CHECK (raw_encoding IN ('lz4')),
    created_at INTEGER NOT NULL
);
CREATE INDEX message_sources_created_at ON message_sources (created_at);
ALTER TABLE messages ADD COLUMN source_id TEXT REFERENCES message_sources (id);
CREATE INDEX messages_source_id ON messages (source_id) WHERE source_id IS NOT NULL;
