-- My Sessions search served by an index restricted to the agent's own rows:
-- one GIN index over (agent_id, the searched text) with trigrams, so that
-- `agent_id = $1 AND text LIKE '%needle%'` reads only the posting lists of
-- that agent and of the needle's trigrams, whatever the size of the table.
--
-- pg_trgm (trigrams) and btree_gin (the agent_id column in a GIN index) ship
-- with PostgreSQL's contrib package and are "trusted" extensions: the owner of
-- the database (or anyone with CREATE on it) may create them, no superuser
-- needed. Where they cannot be created (no contrib package, no privilege) the
-- migration still succeeds without the index, PostgreSQL says why in a
-- WARNING, switchboard logs a warning at startup, and search scans each
-- agent's own rows instead (correct, slower). Creating the extensions and the
-- index by hand later (the statements below) turns the index on.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE EXTENSION IF NOT EXISTS btree_gin;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'switchboard: cannot create the extensions pg_trgm and btree_gin (%); My Sessions search will scan each agent''s rows instead of using an index', SQLERRM;
END;
$$;

-- The searched text: subject, customer name, customer address and tags (their
-- JSON text), lower-cased, one per line. Store::my_sessions repeats this
-- expression exactly (SEARCH_TEXT_PG in src/store/sessions.rs).
-- fastupdate off: no pending list that every search would have to read.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')
       AND EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
        CREATE INDEX user_sessions_search ON user_sessions USING gin (
            agent_id,
            (lower(coalesce(subject, '') || E'\n' || coalesce(customer_name, '') || E'\n'
                || coalesce(customer_address, '') || E'\n' || tags)) gin_trgm_ops
        ) WITH (fastupdate = off);
    END IF;
END;
$$;
