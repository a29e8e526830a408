-- Raw sources in a file of their own (`<database>.sources`, beside the
-- database; see src/store/source.rs). Ingestion (IMAP and Maildir) writes
-- a batch's sources there first, with a writer of its own, and its messages
-- name them here (`raw` is then empty). `source_id` cannot serve: its
-- foreign key points into this file. Messages stored before, and mail
-- written without staging (a resolved quarantine entry, sent replies, a
-- staging that failed, a database in memory), keep their source in `raw`.
-- A number (the file's row): ordered by the index, so the highest one
-- named is found at once when the file is opened.
ALTER TABLE messages ADD COLUMN raw_file_id INTEGER;
CREATE INDEX messages_raw_file_id ON messages (raw_file_id) WHERE raw_file_id IS NOT NULL;
-- The random name of the sources file that belongs to this database: a
-- file of another name (lost and made anew, replaced, another database's)
-- is refused while messages name sources in it.
CREATE TABLE sources_file (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    pair TEXT NOT NULL
);
