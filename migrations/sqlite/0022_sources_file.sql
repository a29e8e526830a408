-- Raw sources in a file of their own (`<database>.sources.db`, beside the
-- database; see src/store/source.rs). Ingestion from IMAP writes a batch's
-- sources there first, with a writer of its own, and its messages name them
-- here (`raw` is then empty). `source_id` cannot serve: its foreign key
-- points into this file. Messages stored before, and mail written without
-- staging (Maildir, a resolved quarantine entry, sent replies, a staging
-- that failed), keep their source in `raw`.
ALTER TABLE messages ADD COLUMN raw_file_id TEXT;
CREATE INDEX messages_raw_file_id ON messages (raw_file_id) WHERE raw_file_id IS NOT NULL;
