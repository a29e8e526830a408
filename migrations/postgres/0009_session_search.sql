-- My Sessions search served by an index restricted to the agent's own rows.
--
-- search_text is what a search looks in: subject, customer name, customer
-- address and tags (their JSON text), lower-cased, one per line. It is a
-- generated column, so every insert and update keeps it right, whoever writes.
-- The agent's index carries it (and the other filters of My Sessions) in its
-- entries: `agent_id = $1 AND search_text LIKE '%…%' ORDER BY created_at DESC,
-- id DESC LIMIT n` is an index-only scan of that agent's entries, newest
-- first, that stops once it has n matches; only those n rows are read from
-- the table. It never reads another agent's entries and needs no extension.
ALTER TABLE user_sessions ADD COLUMN search_text TEXT GENERATED ALWAYS AS (
    lower(coalesce(subject, '') || E'\n' || coalesce(customer_name, '') || E'\n'
        || coalesce(customer_address, '') || E'\n' || tags)
) STORED;

CREATE INDEX user_sessions_agent_search ON user_sessions (agent_id, created_at DESC, id DESC)
    INCLUDE (state, modality, search_text);
