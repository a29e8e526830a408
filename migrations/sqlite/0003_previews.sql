-- Previews: the sanitized body is computed once per message and kept;
-- a server key signs the short-lived links a browser follows.

ALTER TABLE messages ADD COLUMN preview_html TEXT;
ALTER TABLE messages ADD COLUMN preview_remote_blocked BIGINT;

CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
